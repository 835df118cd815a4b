"""Cells, not photos: which originals photograph the same white cell, and which evaluation
images show a cell that training has seen.

`data/same_cell_pairs.csv` lists 18 pairs of BCCD originals that show the same cell (the same
field re-photographed, shifted or rotated). A *cell* is a connected group of such originals,
named by its smallest id; an original in no pair is a cell of its own. Grouped metrics and
their bootstrap resample cells, and an evaluation split's leak-free subset drops the images
whose cell also occurs in training (three TEST originals re-photograph TRAIN cells).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from bccd_jax.data import sources
from bccd_jax.errors import UserError

PAIRS_NAME = "same_cell_pairs.csv"


@functools.lru_cache(maxsize=4)
def cell_map(pairs_csv: str | None = None) -> dict[str, str]:
    """original id -> cell id for every original that shares its cell with another (default: the
    embedded table). Originals not in the map are cells of their own."""
    path = Path(pairs_csv) if pairs_csv else sources.repo_data_dir() / PAIRS_NAME
    rows = sources.read_dict_csv(path, ("original_a", "original_b"))
    parent: dict[str, str] = {}

    def root(a: str) -> str:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    for r in rows:
        ra, rb = root(r["original_a"].strip()), root(r["original_b"].strip())
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {a: root(a) for a in parent}


def cell_ids(original_ids: Iterable[str], mapping: dict[str, str] | None = None) -> np.ndarray:
    """The cell of each image from its original id ("" stays "": unknown)."""
    mapping = cell_map() if mapping is None else mapping
    return np.asarray([mapping.get(str(o), str(o)) for o in original_ids], dtype=str)


def split_cells(ds, split: str) -> np.ndarray:
    """Cell id per image of one split of a bccd_jax.data.Dataset ("" where the source is unknown)."""
    if split not in ds.splits:
        raise UserError(f"split {split!r} not in data set {ds.name} (has: {', '.join(ds.splits)})")
    return cell_ids(ds.splits[split].original_ids)


def leakfree_index(eval_cells: Sequence[str], train_cells: Iterable[str]) -> np.ndarray:
    """Indices of the evaluation images whose (known) cell does not occur in training."""
    seen = set(train_cells) - {""}
    return np.flatnonzero([c == "" or c not in seen for c in eval_cells])


def leakfree_subsets(ds, eval_splits: Sequence[str]) -> dict[str, tuple[str, np.ndarray]]:
    """`<split>_leakfree -> (split, indices)` for each evaluation split with known sources."""
    train = split_cells(ds, "train")
    out = {}
    for split in eval_splits:
        cells = split_cells(ds, split)
        if (cells != "").any() and (train != "").any():
            out[f"{split}_leakfree"] = (split, leakfree_index(cells, train))
    return out


def label_conflicts(cells: Sequence[str], labels: Sequence[int]) -> dict[str, list[int]]:
    """Cells whose images carry more than one label in this split: {cell: sorted labels}."""
    seen: dict[str, set[int]] = {}
    for c, y in zip(cells, labels):
        if c:
            seen.setdefault(str(c), set()).add(int(y))
    return {c: sorted(ys) for c, ys in sorted(seen.items()) if len(ys) > 1}
