"""The PyTorch reference of benchmarks/ replays a bccd_jax train step: same augmented batch, same dropout
mask, same loss and gradients (skipped where torch is not installed; it is not a test dependency)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bccd_jax.config import AugmentConfig, ModelConfig, TrainConfig
from bccd_jax.models import build_model
from bccd_jax.optimizers import make_optimizer
from bccd_jax.steps import make_step_fns, seed_key, step_draws

torch = pytest.importorskip("torch")

AUG = AugmentConfig(flip=True, rot90=True, rotate=15, shift=0.05, stain=0.05, brightness=0.1, contrast=0.2,
                    saturation=0.2, hue=10, gamma=0.2)


def test_torch_replays_a_train_step():
    from bccd_jax.augment import apply_augment
    from benchmarks.torch_cnn import TorchCNN, augment, load_flax_params

    rng = np.random.default_rng(0)
    n, hw = 40, (20, 24)
    x = rng.integers(0, 256, (n, *hw, 3)).astype(np.uint8)
    y = rng.integers(0, 4, n).astype(np.int32)
    mcfg = ModelConfig.preset("base", conv_blocks=((6, 6), (8,)), dense_features=16, dropout=0.5, init="he",
                              input_norm="image", padding="SAME")
    cfg = TrainConfig(batch_size=16, augment=AUG)
    model = build_model(mcfg)
    fns = make_step_fns(model, make_optimizer(cfg), cfg, n)
    state = fns.init(seed_key(2), x)
    idx, mask = (np.array(v) for v in fns.batch_plan(state.key, 1))
    i = 2  # the last, padded batch: 8 of its 16 rows are masked out of the loss
    want, _, _ = jax.jit(fns.step_grads)(state.params, {}, state.key, x, y, idx[i], mask[i], 1, i)
    draws, keeps = jax.jit(lambda: step_draws(model, {"params": state.params}, state.key, (16, *hw, 3), cfg, 1, i))()
    draws = {k: np.array(v) for k, v in draws.items()}

    net = TorchCNN(mcfg, hw)
    load_flax_params(net, state.params)
    net.train()
    xb = torch.from_numpy(x[idx[i]]).permute(0, 3, 1, 2).float()
    xa = augment(xb, AUG, draws)
    np.testing.assert_allclose(xa.permute(0, 2, 3, 1).numpy(), np.asarray(apply_augment(x[idx[i]], draws, AUG)),
                               atol=0.05)  # 0..255: bilinear taps through grid_sample against a gather
    ce = torch.nn.functional.cross_entropy(net(xa, dropout_keep=torch.from_numpy(np.array(keeps[0]))),
                                           torch.from_numpy(y[idx[i]]).long(), reduction="none")
    w = torch.from_numpy(mask[i]).float()
    ((ce * w).sum() / w.sum()).backward()

    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    for m, name in zip(convs, sorted((k for k in want if k.startswith("Conv_")), key=lambda k: int(k[5:]))):
        np.testing.assert_allclose(m.weight.grad.permute(2, 3, 1, 0).numpy(), want[name]["kernel"], rtol=2e-3,
                                   atol=2e-5)
        np.testing.assert_allclose(m.bias.grad.numpy(), want[name]["bias"], rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(net.out.weight.grad.T.numpy(), want["Dense_1"]["kernel"], rtol=2e-3, atol=2e-5)

    # the replay is what makes them agree: torch's own dropout draw gives other gradients
    net.zero_grad()
    torch.manual_seed(0)
    ce = torch.nn.functional.cross_entropy(net(xa), torch.from_numpy(y[idx[i]]).long(), reduction="none")
    ((ce * w).sum() / w.sum()).backward()
    assert not np.allclose(net.out.weight.grad.T.numpy(), want["Dense_1"]["kernel"], rtol=2e-3, atol=2e-5)


def test_draws_of_a_flip_only_augmentation_are_flips():
    from benchmarks.torch_cnn import augment

    flips = AugmentConfig(flip=True)
    cfg = TrainConfig(batch_size=8, augment=flips)
    model = build_model(ModelConfig.preset("base", conv_blocks=((4,),), dense_features=8))
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.uint8))
    draws, _ = step_draws(model, params, seed_key(0), (8, 8, 8, 3), cfg, 0, 0)
    assert set(draws) == {"flip_y", "flip_x"}
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (8, 3, 8, 8)).astype(np.float32))
    out = augment(x, flips, {k: np.array(v) for k, v in draws.items()})
    for j in range(8):
        want = x[j]
        want = want.flip(1) if draws["flip_y"][j] else want
        want = want.flip(2) if draws["flip_x"][j] else want
        assert torch.equal(out[j], want)
