"""Device meshes and THE logical-axis rule table.

Every parameter carries logical axis names (`nnx.Param(..., axes=(...))`) and activations are
constrained with `constrain(x, names)`.  `RULES` below is the only place that maps those names
to the mesh axes `data`, `fsdp` and `tensor`.  Optimizer state is sharded like its parameters.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger("jaxlava.sharding")
MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: dict[str, Any] = {
    # activations
    "batch": ("data", "fsdp"),
    "seq": None,
    # decoder parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    "proj_in": None,
    # vision tower: small and frozen, so its weights are sharded on fsdp only (heads stay whole)
    "vis_embed": "fsdp",
    "vis_mlp": None,
    "vis_heads": None,
    "vis_patch": None,
    "vis_pos": None,
    "vis_channels": None,
    # LoRA ranks and scalar heads
    "lora_rank": None,
}

_ACTIVE: list[Mesh] = []


# ---------------------------------------------------------------------------------------------- meshes
def parse_mesh_spec(spec: str, num_devices: int) -> dict[str, int]:
    """'data=2,fsdp=-1,tensor=2' -> {'data': 2, 'fsdp': n, 'tensor': 2}; -1 takes the remaining devices."""
    sizes = {a: 1 for a in MESH_AXES}
    seen, free = set(), None
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if "=" not in part:
            raise ValueError(f"mesh spec {spec!r}: {part!r} is not of the form axis=size")
        name, value = (s.strip() for s in part.split("=", 1))
        if name not in MESH_AXES:
            raise ValueError(f"mesh spec {spec!r}: unknown axis {name!r} (axes are {', '.join(MESH_AXES)})")
        if name in seen:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} given twice")
        seen.add(name)
        try:
            size = int(value)
        except ValueError:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} must be an integer, got {value!r}") from None
        if size == -1:
            if free is not None:
                raise ValueError(f"mesh spec {spec!r}: only one axis may be -1")
            free = name
        elif size < 1:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} must be >= 1 or -1, got {size}")
        else:
            sizes[name] = size
    fixed = math.prod(v for k, v in sizes.items() if k != free)
    if free is not None:
        if num_devices % fixed:
            raise ValueError(f"mesh spec {spec!r}: the fixed axes use {fixed} devices, which does not divide "
                             f"the {num_devices} devices available")
        sizes[free] = num_devices // fixed
    total = math.prod(sizes.values())
    if total != num_devices:
        raise ValueError(f"mesh spec {spec!r} covers {total} devices but {num_devices} are available")
    return sizes


def make_mesh(spec: str | None = None, devices: Sequence | None = None) -> Mesh:
    """CLI convention: spec None -> one device; '' (flag without value) -> all devices on fsdp; else as given."""
    devices = list(devices if devices is not None else jax.devices())
    if spec is None:
        devices = devices[:1]
        spec = "fsdp=1"
    elif spec.strip() in ("", "all"):
        spec = "fsdp=-1"
    sizes = parse_mesh_spec(spec, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    arr = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def use_mesh(mesh: Mesh):
    """Activate `mesh` for jit and for `constrain`."""
    _ACTIVE.append(mesh)
    try:
        with jax.set_mesh(mesh):
            yield mesh
    finally:
        _ACTIVE.pop()


def active_mesh() -> Mesh | None:
    return _ACTIVE[-1] if _ACTIVE else None


# ---------------------------------------------------------------------------------------------- rules
_FALLBACKS: set = set()


def _report_fallback(name: str, dim: int, axis: str, mesh: Mesh) -> None:
    key = (name, dim, axis, mesh.shape[axis])
    if key not in _FALLBACKS:
        _FALLBACKS.add(key)
        log.warning("logical axis %r: dim of size %d does not divide over mesh axis %r (size %d); that dim is "
                    "not split over %r", name, dim, axis, mesh.shape[axis], axis)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> P:
    """Logical names -> PartitionSpec through RULES. A mesh axis that does not divide the dim (logged once
    as a warning), or that is already used by an earlier dim, is dropped (that dim is replicated instead)."""
    out, used = [], set()
    for i, name in enumerate(axes):
        rule = RULES.get(name) if name is not None else None
        if name is not None and name not in RULES:
            raise KeyError(f"logical axis {name!r} has no entry in jaxlava.sharding.RULES")
        mesh_axes = () if rule is None else ((rule,) if isinstance(rule, str) else tuple(rule))
        keep = []
        for a in mesh_axes:
            if a in used:
                continue
            if mesh is not None and shape is not None:
                size = math.prod(mesh.shape[x] for x in keep + [a])
                if shape[i] % size:
                    _report_fallback(name, shape[i], a, mesh)
                    continue
            keep.append(a)
        used.update(keep)
        out.append(None if not keep else (keep[0] if len(keep) == 1 else tuple(keep)))
    return P(*out)


def _axes_of(var) -> tuple | None:
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    return meta.get("axes")


def state_shardings(state, mesh: Mesh):
    """A tree like `state` (an nnx.State of Variables or arrays) whose leaves are NamedShardings from `axes`."""
    def one(var):
        axes = _axes_of(var)
        shape = tuple(var.shape) if hasattr(var, "shape") else ()
        spec = logical_to_spec(axes, shape, mesh) if axes is not None else P()
        return NamedSharding(mesh, spec)
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def like_params_shardings(tree, params, param_shardings, replicated: NamedSharding) -> list:
    """Flat sharding leaves for `tree` (an optimizer state or a train state): every sub-tree with the structure
    and leaf shapes of `params` (Adam's mu and nu, the params themselves) is sharded like the params
    (`param_shardings`: a tree or flat list matching `params`); every other leaf (step counts, keys) gets
    `replicated`.  The result lines up with `jax.tree.leaves(tree)`."""
    p_def = jax.tree.structure(params)
    p_shapes = [tuple(x.shape) for x in jax.tree.leaves(params)]
    p_sh = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    if len(p_sh) != len(p_shapes):
        raise ValueError(f"{len(p_shapes)} parameters but {len(p_sh)} parameter shardings")

    def matches(x):
        return jax.tree.structure(x) == p_def and [tuple(y.shape) for y in jax.tree.leaves(x)] == p_shapes

    out = []
    for sub in jax.tree.leaves(tree, is_leaf=matches):
        out += list(p_sh) if matches(sub) else [replicated]
    return out


def opt_state_shardings(opt_state, params, mesh: Mesh):
    """A tree like `opt_state` (e.g. `tx.init(params)`, concrete or from `jax.eval_shape`) of NamedShardings:
    moments shaped like the params follow the params' rule-table shardings, scalars are replicated."""
    leaves = like_params_shardings(opt_state, params, state_shardings(params, mesh), NamedSharding(mesh, P()))
    return jax.tree.unflatten(jax.tree.structure(opt_state), leaves)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Constrain an activation to the rule table's layout; a no-op when no mesh is active."""
    mesh = active_mesh()
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh)))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch-major arrays: dim 0 on (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def create_sharded(factory, mesh: Mesh):
    """Build `factory()` (an nnx Module) directly sharded: abstract shapes first, then a jitted init whose
    outputs land in their shards, so no full host copy of the parameters ever exists."""
    abstract = nnx.eval_shape(factory)
    graphdef, state = nnx.split(abstract)
    shardings = state_shardings(state, mesh)

    def init():
        return nnx.split(factory())[1]

    with use_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def shard_model(model, mesh: Mesh):
    """Move an existing model's state onto `mesh` according to the rules (small models, tests)."""
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, state_shardings(state, mesh))
    return nnx.merge(graphdef, state)


def load_sharded(getter: Callable[[tuple[slice, ...]], Any], shape: Sequence[int], sharding: NamedSharding | None,
                 dtype=None) -> jax.Array:
    """A global array whose shards are read on demand: `getter(index)` (a tuple of slices, one per dim) returns
    that block as numpy, e.g. `lambda idx: safe_open(f, "numpy").get_slice(name)[idx]`.  Each process calls it
    only for the blocks its own devices hold (`jax.make_array_from_callback`), so no process reads or holds the
    full tensor.  `sharding` None: read everything onto the default device."""
    shape = tuple(int(d) for d in shape)

    def read(index) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (len(shape) - len(tuple(index)))
        block = np.asarray(getter(index))
        want = tuple(len(range(*s.indices(d))) for s, d in zip(index, shape))
        if block.shape != want:
            raise ValueError(f"load_sharded: the getter returned a block of shape {block.shape} for index {index} "
                             f"of a {shape} tensor (expected {want})")
        return block.astype(dtype) if dtype is not None else block

    if sharding is None:
        return jax.numpy.asarray(read(tuple(slice(None) for _ in shape)))
    return jax.make_array_from_callback(shape, sharding, read)
