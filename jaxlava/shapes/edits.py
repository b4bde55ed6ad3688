"""One-object edits of a free-form shapes-world description: take one object out of its lists, or put one in.

The reward models' on-policy pairs (jaxlava/training/rm_pairs.py) compare two of the policy's own samples, and
most of them are won by the shorter one (an absent object adds words). Edit twins pair a sample with itself less
one object, or with one object more, so that the two differ in that object only. With the four edits in equal
numbers (a present or an absent object, taken out or put in), neither the length of a response nor whether it is
the edited one tells the winner; only whether the object is in the image (or in its facts) does.

The edits work on the text the policy wrote, which is not always a well-formed list: an item is
"a|an|one [size] colour shape [at|on|in the place]", a list is a run of items joined by ", " or " and ", and an
edit rewrites one list with `text.join`. Taking an object out also drops the sentences that name only it ("The
small red square is at the top."). The caller judges every edit again (`jaxlava.eval.shapes`) and keeps only
those that changed exactly the one object; an edit that cannot be made returns None.
"""
from __future__ import annotations

import dataclasses
import functools
import re

from jaxlava.shapes.text import an, join, where

PLACES = ("top left", "top right", "bottom left", "bottom right", "top", "bottom", "left", "right", "centre")
_SEP = re.compile(r",? and |, ")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclasses.dataclass(frozen=True)
class Vocab:
    """A world's words: `item` matches one listed object (groups `colour` and `shape`), `name` a bare
    "colour shape" anywhere."""
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    sizes: tuple[str, ...]

    @staticmethod
    def _alt(words) -> str:
        return "|".join(sorted(map(re.escape, words), key=len, reverse=True))

    @functools.cached_property
    def name(self) -> re.Pattern:
        return re.compile(rf"\b({self._alt(self.colours)}) ({self._alt(self.shapes)})\b")

    @functools.cached_property
    def item(self) -> re.Pattern:
        return re.compile(rf"\b(?:an?|one) (?:(?:{self._alt(self.sizes)}) )?(?P<colour>{self._alt(self.colours)}) "
                          rf"(?P<shape>{self._alt(self.shapes)})\b(?: (?:at|on|in) the (?:{self._alt(PLACES)})\b)?")


def lists(text: str, vocab: Vocab) -> list[list[re.Match]]:
    """The runs of items in `text`: items only a list separator apart, in order."""
    runs: list[list[re.Match]] = []
    for m in vocab.item.finditer(text):
        if runs and _SEP.fullmatch(text[runs[-1][-1].end():m.start()]):
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def _category(m: re.Match) -> str:
    return f"{m.group('colour')} {m.group('shape')}"


def _rewrite(text: str, run: list[re.Match], items: list[str]) -> str:
    return text[:run[0].start()] + join(items) + text[run[-1].end():]


def take_out(text: str, category: str, vocab: Vocab) -> str | None:
    """`text` without `category`: every listed item of it removed from its list, and every sentence that names
    it and no other object dropped; None where it is the only item of a list (nothing would be left there) or is
    not listed at all."""
    runs = [r for r in lists(text, vocab) if any(_category(m) == category for m in r)]
    if not runs:
        return None
    for run in reversed(runs):  # from the end, so the earlier runs' offsets stay right
        keep = [m.group(0) for m in run if _category(m) != category]
        if not keep:
            return None
        text = _rewrite(text, run, keep)
    kept = [s for s in _SENTENCE_END.split(text)
            if {" ".join(pair) for pair in vocab.name.findall(s.lower())} != {category}]
    return " ".join(kept) if kept else None


def put_in(text: str, category: str, size: str, place: str, at: int, vocab: Vocab) -> str | None:
    """`text` with "a SIZE CATEGORY" put into its first list at position `at` (taken modulo the list's length plus
    one), followed by its PLACE where that list's items carry places; None where `text` lists nothing."""
    runs = lists(text, vocab)
    if not runs:
        return None
    items = [m.group(0) for m in runs[0]]
    located = any(" the " in item for item in items)
    items.insert(at % (len(items) + 1), an(f"{size} {category}") + (" " + where(place) if located else ""))
    return _rewrite(text, runs[0], items)
