"""Freezing layers by composing optax, and the study's VGG16 freeze policies.

Freezing is an optimizer concern, not a model one: `freeze` wraps any optax
transformation with `optax.multi_transform` so frozen leaves get
`optax.set_to_zero()` (no update, no weight decay, no optimizer state) while
the rest go through `tx` unchanged. The model and its params tree stay the same
for every policy, so a policy is just a run parameter (ModelConfig.freeze).
Under jit, gradients that only feed zeroed updates are dead code, so XLA can
drop their computation as well.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import optax

from bccd_jax.errors import UserError
from bccd_jax.models.vgg import CONV_NAMES

TRAINABLE = "trainable"
FROZEN = "frozen"

FREEZE_POLICIES: dict[str, tuple[str, ...]] = {
    "none": (),  # fine-tune everything
    "blocks1-3": tuple(n for n in CONV_NAMES if n.startswith(("block1_", "block2_", "block3_"))),
    "blocks1-4": tuple(n for n in CONV_NAMES if n.startswith(("block1_", "block2_", "block3_", "block4_"))),
    "all_conv": CONV_NAMES,  # feature extraction: only the new head trains
}
"""VGG16 freeze policy name -> the Keras layer names it freezes (everything else trains)."""


def _path_str(path: Sequence[Any]) -> str:
    """'params/block1_conv1/kernel' for a jax key path (dict keys, attributes or indices)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _as_predicate(trainable: Callable[[str], bool] | Sequence[str]) -> Callable[[str], bool]:
    """A predicate on '/'-joined param paths; a sequence of names means 'a path component is listed'."""
    if callable(trainable):
        return trainable
    if isinstance(trainable, str):
        raise UserError(f"trainable must be a sequence of layer names or a predicate, not the string {trainable!r}")
    names = frozenset(trainable)
    return lambda path: any(part in names for part in path.split("/"))


def freeze_labels(params: Any, trainable: Callable[[str], bool] | Sequence[str]) -> Any:
    """A pytree like `params` with TRAINABLE or FROZEN at each leaf.

    `trainable` is a predicate on the leaf's path ('block4_conv1/kernel', with a leading
    'params/' if the full variables dict is given) or a sequence of layer names.
    """
    pred = _as_predicate(trainable)
    return jax.tree_util.tree_map_with_path(lambda p, _: TRAINABLE if pred(_path_str(p)) else FROZEN, params)


def freeze(tx: optax.GradientTransformation, params: Any,
           trainable: Callable[[str], bool] | Sequence[str]) -> optax.GradientTransformation:
    """`tx` on the trainable leaves of `params`, zero updates (and no state) on the others."""
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, freeze_labels(params, trainable))


def vgg16_trainable(policy: str) -> Callable[[str], bool]:
    """The trainability predicate of a VGG16 freeze policy (see FREEZE_POLICIES)."""
    if policy not in FREEZE_POLICIES:
        raise UserError(f"unknown freeze policy {policy!r}; choose one of {sorted(FREEZE_POLICIES)}")
    frozen = frozenset(FREEZE_POLICIES[policy])
    return lambda path: not any(part in frozen for part in path.split("/"))


def vgg16_freeze_labels(params: Mapping[str, Any], policy: str) -> Any:
    """TRAINABLE/FROZEN labels of a VGG16 params tree under `policy`, for optax.multi_transform."""
    trainable = vgg16_trainable(policy)
    flat = params.get("params", params)
    missing = [n for n in FREEZE_POLICIES[policy] if n not in flat]
    if missing:
        raise UserError(f"freeze policy {policy!r} names layer {missing[0]}, which the params do not have "
                        "(freeze policies are for VGG16)")
    return freeze_labels(params, trainable)


def freeze_vgg16(tx: optax.GradientTransformation, params: Mapping[str, Any],
                 policy: str) -> optax.GradientTransformation:
    """`freeze` with a named VGG16 policy (FREEZE_POLICIES), its layer names checked against `params`."""
    vgg16_freeze_labels(params, policy)
    return freeze(tx, params, vgg16_trainable(policy))


def count_trainable(params: Any, labels: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts, for logging what a policy leaves to train."""
    sizes = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x.size, params))
    flags = jax.tree_util.tree_leaves(labels)
    return sum(s for s, f in zip(sizes, flags) if f == TRAINABLE), sum(sizes)


def frozen_prefix(policy: str) -> int:
    """How many leading VGG16 blocks a policy freezes whole (0: none): the part whose output can be cached."""
    if policy not in FREEZE_POLICIES:
        raise UserError(f"unknown freeze policy {policy!r}; choose one of {sorted(FREEZE_POLICIES)}")
    frozen = set(FREEZE_POLICIES[policy])
    blocks = 0
    while blocks < 5 and {n for n in CONV_NAMES if n.startswith(f"block{blocks + 1}_")} <= frozen:
        blocks += 1
    return blocks
