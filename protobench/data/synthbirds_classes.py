"""synthbirds' class table: every class is a combination of per-part attributes.

Four big parts (crown, wing, breast, tail) carry the four main palette colours, each class
placing them in a different order, so that every bird shows the same colours in about the same
amounts and a global colour histogram tells little more than the wing's pattern. Classes are
enumerated in a fixed order, boldest differences first:

1. the 24 arrangements of the main colours, each plain-winged and bar-winged (48 classes; a
   plain/barred pair differs in the wing's pattern only);
2. the 24 arrangements with a spotted wing (classes 49-72);
3. the 72 classes of 1-2 again with one part's shape changed: a long beak, a forked tail, a
   crest, a hooked beak, a pointed tail (up to 432 classes).

The first ``n`` classes of this order are the table of a dataset with ``n`` classes. The other
parts (back, belly, nape, throat, beak, eye, legs) look the same in every class.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: The parts every bird is drawn from; part ``k`` is ``k + 1`` in a part map.
PART_NAMES: tuple[str, ...] = (
    "back", "beak", "belly", "breast", "crown", "eye", "legs", "nape", "tail", "throat", "wing",
)

#: Colours (RGB, 0-255) by name: the four main colours first, then the fixed ones.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "blue": (35, 80, 215),
    "yellow": (245, 205, 30),
    "green": (30, 160, 55),
    "slate": (90, 88, 95),
    "cream": (228, 220, 198),
    "grey": (150, 146, 140),
    "white": (245, 245, 240),
    "black": (22, 22, 22),
    "brown": (120, 82, 48),
    "orange": (235, 130, 30),
}

MAIN_COLOURS: tuple[str, ...] = ("red", "blue", "yellow", "green")
COLOUR_PARTS: tuple[str, ...] = ("crown", "wing", "breast", "tail")
PATTERN_COLOUR = "black"

#: The shape each part may take; the first is the default.
SHAPES: dict[str, tuple[str, ...]] = {
    "beak": ("short", "long", "hooked"),
    "tail": ("fan", "forked", "pointed"),
    "crown": ("round", "crest"),
}
#: The patterns a part may carry; the first is the default.
PATTERNS: dict[str, tuple[str, ...]] = {"wing": ("plain", "bars", "spots")}

_FIXED_COLOURS = {
    "back": "slate", "belly": "cream", "nape": "grey", "throat": "white",
    "beak": "orange", "eye": "black", "legs": "brown",
}
_SHAPE_TIERS: tuple[tuple[str, str] | None, ...] = (
    None, ("beak", "long"), ("tail", "forked"), ("crown", "crest"), ("beak", "hooked"), ("tail", "pointed"),
)


@dataclass(frozen=True)
class PartAttributes:
    """How one part of one class looks."""

    colour: str
    pattern: str = "plain"
    shape: str = "default"


@dataclass(frozen=True)
class BirdClass:
    """One class: its 0-based ``index``, a CUB-style ``name`` and ``parts`` (part name -> attributes)."""

    index: int
    name: str
    parts: dict[str, PartAttributes] = field(hash=False)


def _make_class(index: int, colours: tuple[str, ...], wing_pattern: str,
                tier: tuple[str, str] | None) -> BirdClass:
    colour = {**_FIXED_COLOURS, **dict(zip(COLOUR_PARTS, colours))}
    shape = {part: shapes[0] for part, shapes in SHAPES.items()}
    words = [f"{c.capitalize()}_{p.capitalize()}" for p, c in zip(COLOUR_PARTS, colours)]
    if wing_pattern != "plain":
        words.append({"bars": "Barred_Wing", "spots": "Spotted_Wing"}[wing_pattern])
    if tier is not None:
        shape[tier[0]] = tier[1]
        words.append(f"{tier[1].capitalize()}_{tier[0].capitalize()}")
    parts = {
        p: PartAttributes(colour[p], wing_pattern if p == "wing" else "plain", shape.get(p, "default"))
        for p in PART_NAMES
    }
    return BirdClass(index=index, name="_".join(words), parts=parts)


def _all_classes() -> list[BirdClass]:
    arrangements = list(itertools.permutations(MAIN_COLOURS))
    plain, bars, spots = PATTERNS["wing"]
    combos = [(a, pattern) for a in arrangements for pattern in (plain, bars)]
    combos += [(a, spots) for a in arrangements]
    return [
        _make_class(len(combos) * t + i, colours, pattern, tier)
        for t, tier in enumerate(_SHAPE_TIERS)
        for i, (colours, pattern) in enumerate(combos)
    ]


ALL_CLASSES: tuple[BirdClass, ...] = tuple(_all_classes())
MAX_CLASSES = len(ALL_CLASSES)


def classes(num_classes: int) -> list[BirdClass]:
    """The first ``num_classes`` classes of the fixed enumeration."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    return list(ALL_CLASSES[:num_classes])


def differing_parts(a: BirdClass, b: BirdClass) -> tuple[str, ...]:
    """The parts whose attributes differ between two classes (their part distance is its length)."""
    return tuple(p for p in PART_NAMES if a.parts[p] != b.parts[p])


def varying_parts(table: Sequence[BirdClass]) -> tuple[str, ...]:
    """The parts whose attributes differ between some classes of ``table`` (the others identify nothing)."""
    return tuple(p for p in PART_NAMES if len({c.parts[p] for c in table}) > 1)


def classes_at_distance(table: Sequence[BirdClass], target: int, n: int) -> list[int]:
    """Indices of the classes ``n`` parts away from class ``target``, in table order.

    FunnyBirds (Hesse et al., ICCV 2023; visinf/funnybirds-framework ``datasets/funny_birds.py``,
    ``get_classes_with_distance_n``): the distance is the number of parts whose attributes differ.
    """
    return [c.index for c in table if len(differing_parts(table[target], c)) == n]


@functools.lru_cache(maxsize=8)
def _minimal_sufficient_masks(table: tuple[BirdClass, ...], target: int) -> tuple[int, ...]:
    k = len(PART_NAMES)
    subsets = np.arange(1, 1 << k)
    bits = 1 << np.arange(k)
    shared = [sum(int(bits[i]) for i, p in enumerate(PART_NAMES) if c.parts[p] == table[target].parts[p])
              for c in table if c.index != target]
    # a part set is sufficient when no other class shows all of its parts' attributes
    insufficient = np.zeros(len(subsets) + 1, dtype=bool)
    for mask in shared:
        insufficient[subsets[(subsets & ~mask) == 0]] = True
    sufficient = ~insufficient
    sufficient[0] = False
    minimal = [int(s) for s in subsets if sufficient[s] and not any(sufficient[s & ~int(b)] for b in bits if s & b)]
    return tuple(minimal)


def minimal_sufficient_part_sets(table: Sequence[BirdClass], target: int) -> list[frozenset[str]]:
    """The minimal part sets whose attributes tell class ``target`` apart from every other class of ``table``.

    FunnyBirds (Hesse et al., ICCV 2023, completeness, the CSDC; visinf/funnybirds-framework
    ``datasets/funny_birds.py``, ``get_minimal_sufficient_part_sets``): a set is sufficient when no other class
    has the same attributes on all of its parts, minimal when no proper subset is sufficient. Computed over
    bit masks of the 11 parts instead of lists of attribute strings (the same sets).
    """
    masks = _minimal_sufficient_masks(tuple(table), target)
    return [frozenset(p for i, p in enumerate(PART_NAMES) if m >> i & 1) for m in masks]


def contrast_classes(table: Sequence[BirdClass], target: int, shared: int = 2) -> tuple[int, int] | None:
    """Two classes that each share ``shared`` parts with ``target``, the two shared sets disjoint; or None.

    FunnyBirds' target sensitivity (Hesse et al., ICCV 2023, contrastivity; visinf/funnybirds-
    framework ``evaluation_protocols.py``, ``target_sensitivity_protocol``): among the classes at part distance
    3 of its 5 parts (sharing 2), the first pair in table order whose shared parts are disjoint. Named
    departure: synthbirds' parts that look the same in every class are left out of the count (only
    :func:`varying_parts` are shared or not), so "sharing 2 parts" means the same as in FunnyBirds, where all
    parts vary; where no such pair exists, None (the reference would reuse the last pair it tried).
    """
    varying = varying_parts(table)
    candidates = [c.index for c in table
                  if len(varying) - len(set(differing_parts(table[target], c)) & set(varying)) == shared]
    for i, first in enumerate(candidates):
        for second in candidates[i + 1:]:
            if shared_parts(table, target, first).isdisjoint(shared_parts(table, target, second)):
                return first, second
    return None


def shared_parts(table: Sequence[BirdClass], a: int, b: int) -> frozenset[str]:
    """The varying parts (:func:`varying_parts`) on which classes ``a`` and ``b`` look the same."""
    return frozenset(varying_parts(table)) - set(differing_parts(table[a], table[b]))
