"""Shapes world, part 1: scene sampling and rendering (pure numpy + PIL, deterministic from a numpy Generator).

A scene is 1..5 non-overlapping objects; an object is a shape x colour x size at a pixel position. An object's
*category* is "colour shape" (e.g. "red circle"): a scene holds each category at most once. Some category pairs
co-occur by design (`WorldSpec.partner`): once one member of a pair is drawn, its partner joins with probability
`cooccur_prob`, otherwise the partner is kept out of that scene, so P(both | either) == cooccur_prob exactly.
Category popularity follows a Zipf law over a seed-dependent order, so POPE "popular" negatives exist.
"""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 80, 235), "yellow": (245, 215, 20),
    "purple": (140, 40, 190), "orange": (250, 130, 10), "pink": (250, 120, 200), "cyan": (20, 210, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (125, 125, 125), "black": (25, 25, 30), "white": (238, 238, 238), "beige": (205, 190, 150),
}
# radius as a fraction of the image side, per size; and the minimum gap between objects (fraction of the side)
RADIUS = {"small": 0.085, "large": 0.14}
GAP = 0.03
# the grid layout (`cell` > 0): one object per cell of `cell` pixels, radius as a fraction of the cell
CELL_RADIUS = {"small": 0.3, "large": 0.45}


@dataclasses.dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    x: float  # centre, in pixels
    y: float
    r: float  # circumscribed radius, in pixels

    @property
    def category(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def name(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"

    def region(self, image_size: int) -> str:
        """Coarse location word used in detailed descriptions ("top left", "centre", ...)."""
        def third(v: float, words: tuple[str, str, str]) -> str:
            return words[min(int(3 * v / image_size), 2)]
        vert, horiz = third(self.y, ("top", "middle", "bottom")), third(self.x, ("left", "centre", "right"))
        if vert == "middle":
            return "centre" if horiz == "centre" else horiz
        return vert if horiz == "centre" else f"{vert} {horiz}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"category": self.category, "name": self.name}


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    image_size: int
    sizes: tuple[str, ...] = SIZES  # the sizes objects of this world take (a hallucinated object gets one too)

    @property
    def categories(self) -> set[str]:
        return {o.category for o in self.objects}

    def find(self, category: str) -> Obj | None:
        return next((o for o in self.objects if o.category == category), None)


def binding_swaps(scene: Scene) -> list[str]:
    """Absent categories that pair one present object's colour with another's shape (a blue square beside a red
    square and a blue circle): only binding a colour to its shape tells them absent."""
    return sorted({f"{a.colour} {b.shape}" for a in scene.objects for b in scene.objects} - scene.categories)


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """The world's vocabulary of categories, their popularity and the designed co-occurring pairs."""
    categories: tuple[str, ...]
    weights: np.ndarray  # sampling probability per category (sums to 1)
    partner: dict[str, str]  # symmetric: partner[a] == b and partner[b] == a
    colours: tuple[str, ...]
    shapes: tuple[str, ...]

    def popularity_order(self) -> list[str]:
        return [self.categories[i] for i in np.argsort(-self.weights, kind="stable")]


def category(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def make_spec(colours, shapes, pairs, zipf_exponent: float, rng: np.random.Generator) -> WorldSpec:
    for c in colours:
        if c not in COLOURS:
            raise ValueError(f"shapes world: unknown colour {c!r}; known: {sorted(COLOURS)}")
    if len(colours) < 4 or len(shapes) < 2:
        raise ValueError("shapes world: need at least 4 colours (A-D colour options) and 2 shapes")
    for s in shapes:
        if s not in SHAPES:
            raise ValueError(f"shapes world: unknown shape {s!r}; known: {list(SHAPES)}")
    cats = tuple(category(c, s) for c in colours for s in shapes)
    partner: dict[str, str] = {}
    for a, b in pairs:
        for x in (a, b):
            if x not in cats:
                raise ValueError(f"shapes world: co-occurrence pair member {x!r} is not a category of this world")
            if x in partner:
                raise ValueError(f"shapes world: category {x!r} appears in two co-occurrence pairs")
        if a == b:
            raise ValueError(f"shapes world: co-occurrence pair ({a!r}, {b!r}) pairs a category with itself")
        partner[a], partner[b] = b, a
    rank = rng.permutation(len(cats))
    w = (rank + 1.0) ** (-float(zipf_exponent))
    return WorldSpec(cats, w / w.sum(), partner, tuple(colours), tuple(shapes))


def sample_categories(spec: WorldSpec, n: int, cooccur_prob: float, rng: np.random.Generator) -> list[str]:
    """Draw n distinct categories. A pair member is only drawn when there is room for its partner (never into the
    last free slot); its partner then joins with probability cooccur_prob and is otherwise barred from the scene."""
    chosen: list[str] = []
    barred: set[str] = set()
    while len(chosen) < n:
        room = n - len(chosen)
        ok = np.array([c not in barred and c not in chosen and (room >= 2 or c not in spec.partner)
                       for c in spec.categories])
        p = spec.weights * ok
        c = spec.categories[rng.choice(len(p), p=p / p.sum())]
        chosen.append(c)
        if c in spec.partner:
            mate = spec.partner[c]
            if rng.random() < cooccur_prob:
                chosen.append(mate)
            else:
                barred.add(mate)
    return chosen


def place(sizes: list[str], image_size: int, rng: np.random.Generator, tries: int = 200) -> list[tuple[float, float]]:
    """Random non-overlapping centres for discs of the given sizes (rejection sampling, restarts if stuck)."""
    radii = [RADIUS[s] * image_size for s in sizes]
    gap = GAP * image_size
    for _ in range(50):
        pts: list[tuple[float, float]] = []
        for r in radii:
            for _ in range(tries):
                x, y = rng.uniform(r + 1, image_size - r - 1, size=2)
                if all(math.hypot(x - px, y - py) >= r + pr + gap for (px, py), pr in zip(pts, radii)):
                    pts.append((float(x), float(y)))
                    break
            else:
                break
        if len(pts) == len(radii):
            return pts
    raise RuntimeError(f"shapes world: cannot place {len(sizes)} objects in a {image_size}px image; "
                       "use a larger image_size or fewer max_objects")


def place_in_grid(radii: list[float], image_size: int, cell: int, rng: np.random.Generator,
                  jitter: bool = False) -> list[tuple[float, float]]:
    """Centres in distinct cells of a grid of `cell`-pixel cells, one object per cell (with the vision tower's
    patch equal to the cell, each object is exactly one image token).  With `jitter` an object moves at random
    within its cell as far as it stays inside it (with a pixel to spare): small objects move, large ones
    barely; without, it sits at the cell's centre."""
    g = image_size // cell
    if len(radii) > g * g:
        raise RuntimeError(f"shapes world: cannot place {len(radii)} objects in a {g} x {g} grid; use fewer "
                           "max_objects")
    picks = rng.choice(g * g, size=len(radii), replace=False)
    out = []
    for p, r in zip(picks, radii):
        room = max(0.0, cell / 2 - r - 1.0)
        dx, dy = rng.uniform(-room, room, size=2) if jitter else (0.0, 0.0)
        out.append((float((p % g) * cell + cell / 2 + dx), float((p // g) * cell + cell / 2 + dy)))
    return out


def radius(size: str, image_size: int, cell: int = 0, small_radius: float | None = None) -> float:
    """Circumscribed radius in pixels: a fraction of the cell (grid layout) or of the image side (free layout);
    `small_radius` overrides the fraction of small objects."""
    frac = small_radius if size == "small" and small_radius else (CELL_RADIUS if cell else RADIUS)[size]
    return frac * (cell or image_size)


def sample_scene(spec: WorldSpec, rng: np.random.Generator, *, image_size: int, n_objects: int,
                 cooccur_prob: float, backgrounds: tuple[str, ...], cell: int = 0,
                 small_radius: float | None = None, jitter: bool = False,
                 sizes: tuple[str, ...] = SIZES) -> Scene:
    """A scene of `n_objects` with sizes drawn from `sizes`; placed freely (`cell` 0) or one per cell of a
    `cell`-pixel grid."""
    cats = sample_categories(spec, n_objects, cooccur_prob, rng)
    drawn = [sizes[i] for i in rng.integers(0, len(sizes), size=len(cats))]
    radii = [radius(size, image_size, cell, small_radius) for size in drawn]
    centres = place_in_grid(radii, image_size, cell, rng, jitter) if cell else place(drawn, image_size, rng)
    objs = []
    for cat, size, r, (x, y) in zip(cats, drawn, radii, centres):
        colour, shape = cat.split(" ")
        objs.append(Obj(shape, colour, size, x, y, r))
    order = rng.permutation(len(objs))  # do not leak the pair structure through the object order
    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    return Scene(tuple(objs[i] for i in order), bg, image_size, tuple(sizes))


def shape_polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    def ring(k: int, rad: float, phase: float) -> list[tuple[float, float]]:
        return [(x + rad * math.cos(phase + 2 * math.pi * i / k), y + rad * math.sin(phase + 2 * math.pi * i / k))
                for i in range(k)]
    if shape == "square":
        return ring(4, r, math.pi / 4)
    if shape == "diamond":
        return ring(4, r, -math.pi / 2)
    if shape == "triangle":  # centroid at the centre; stretched a little so it looks as big as the others
        return ring(3, r * 1.1, -math.pi / 2)
    if shape == "hexagon":
        return ring(6, r, 0.0)
    if shape == "star":
        outer, inner = ring(5, r * 1.1, -math.pi / 2), ring(5, r * 0.5, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    raise ValueError(f"shapes world: no polygon for shape {shape!r}")


def render(scene: Scene, texture: str = "gradient") -> Image.Image:
    """Paint the scene. Backgrounds are plain or a gentle diagonal gradient (never an object colour); objects are
    flat-coloured without anti-aliasing, so the pixel at an object's centre is exactly its colour."""
    s = scene.image_size
    base = np.array(BACKGROUNDS[scene.background], np.float32)
    if texture == "gradient":
        ramp = np.add.outer(np.arange(s), np.arange(s)).astype(np.float32) / max(2 * s - 2, 1) - 0.5
        arr = np.clip(base[None, None, :] + 24.0 * ramp[:, :, None], 0, 255).astype(np.uint8)
    elif texture == "plain":
        arr = np.broadcast_to(base.astype(np.uint8), (s, s, 3)).copy()
    else:
        raise ValueError(f"shapes world: unknown background texture {texture!r} (plain|gradient)")
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw(draw, o, COLOURS[o.colour])
    return img


def _draw(draw: ImageDraw.ImageDraw, o: Obj, fill) -> None:
    if o.shape == "circle":
        draw.ellipse([o.x - o.r, o.y - o.r, o.x + o.r, o.y + o.r], fill=fill)
    else:
        draw.polygon(shape_polygon(o.shape, o.x, o.y, o.r), fill=fill)


def object_mask(scene: Scene) -> np.ndarray:
    """[S, S] uint8 map of which object covers each pixel: 0 for the background, i + 1 for scene.objects[i]
    (the same geometry as `render`, so it labels exactly the painted pixels)."""
    img = Image.new("L", (scene.image_size, scene.image_size), 0)
    draw = ImageDraw.Draw(img)
    for i, o in enumerate(scene.objects):
        _draw(draw, o, i + 1)
    return np.asarray(img, np.uint8)


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
