"""The arrays a fit trains and evaluates on, built from a data set: the training split, the
evaluation splits, and their leak-free subsets (bccd_jax.data.cells), scored from the same logits."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from bccd_jax.data.cells import leakfree_subsets


@dataclasses.dataclass
class TrainData:
    """Arrays for one run: the training set, named evaluation sets (on device once put), and named
    subsets of those sets (`name -> (evaluation set, indices into it)`), scored from the same logits."""

    train_images: Any
    train_labels: Any
    eval_sets: dict[str, tuple[Any, Any]]
    eval_subsets: dict[str, tuple[str, np.ndarray]] = dataclasses.field(default_factory=dict)

    @staticmethod
    def from_dataset(ds, eval_splits: Sequence[str] | None = None,
                     inputs: Mapping[str, Any] | None = None) -> "TrainData":
        """From a bccd_jax.data.Dataset: 'train' for training, every other split (or `eval_splits`) for
        evaluation, and for each of them `<split>_leakfree`: its images whose cell is not in 'train'.
        `inputs` replaces the images of each split (e.g. cached features of a frozen prefix)."""
        names = [s for s in ds.splits if s != "train"] if eval_splits is None else list(eval_splits)
        x = {s: (inputs or {}).get(s, sp.images) for s, sp in ds.splits.items()}
        return TrainData(
            train_images=jax.device_put(np.asarray(x["train"])),
            train_labels=jax.device_put(ds.splits["train"].labels.astype(np.int32)),
            eval_sets={n: (jax.device_put(np.asarray(x[n])),
                           jax.device_put(ds.splits[n].labels.astype(np.int32))) for n in names},
            eval_subsets=leakfree_subsets(ds, names),
        )
