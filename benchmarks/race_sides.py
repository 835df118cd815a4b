"""The two sides of benchmarks.time_to_accuracy's race, each on its own clock: bccd_jax's training loop
(`JaxSide`), and PyTorch eager replaying bccd_jax's batches and random draws (`TorchSide`, `replay_draws`).
"""

from __future__ import annotations

import collections
import contextlib
import time

import numpy as np

from bccd_jax.errors import UserError


class Clock:
    """Wall seconds of one framework, accumulated over its own segments; training and evaluation apart."""

    def __init__(self):
        self.train_s = self.eval_s = 0.0

    @property
    def wall_s(self) -> float:
        return self.train_s + self.eval_s


class JaxSide:
    """bccd_jax's own training loop (MultiSeedTrainer, one seed), evaluating TEST at the given steps."""

    def __init__(self, model, tx, cfg, seed, train, test, eval_at):
        import jax
        import jax.numpy as jnp

        from bccd_jax.seeds import MultiSeedTrainer

        self.jax, self.jnp = jax, jnp
        self.compile_events: dict[str, float] = collections.defaultdict(float)
        self._listening = False
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        self.clock, self.curve, self.eval_at = Clock(), [], eval_at
        t0 = time.perf_counter()
        with self._counting():
            self.trainer = MultiSeedTrainer(model, tx, cfg, len(train[1]))
            self.x, self.y = jax.device_put(train[0]), jax.device_put(train[1])
            self.tx_, self.ty_ = jax.device_put(test[0]), jax.device_put(test[1])
            self.state = self.trainer.init_state([seed], self.x)
            jax.block_until_ready(self.state)
        self.clock.train_s += time.perf_counter() - t0
        self.step, self.epochs, self.first_step_s = 0, 0, None

    def _on_event(self, name, secs, **kw):
        if self._listening and (name.startswith("/jax/core/compile/")
                                or name.startswith("/jax/compilation_cache/cache_retrieval")):
            self.compile_events[name] += secs

    @contextlib.contextmanager
    def _counting(self):
        """Count JAX's compile timings only while this side runs (the PyTorch side never compiles)."""
        self._listening = True
        try:
            yield
        finally:
            self._listening = False

    def initial_params(self):
        """One seed's parameters as numpy copies (the state is donated to every step)."""
        return self.jax.tree.map(lambda p: np.array(p[0]), self.state.params)

    def run_epoch(self, epoch: int):
        jnp, tr = self.jnp, self.trainer
        with self._counting():
            t0 = time.perf_counter()
            idx, mask = tr.batch_plan(self.state.key, jnp.int32(epoch))
            mask = mask[0]
            for i in range(tr.steps_per_epoch):
                self.state, _ = tr.loop_step(self.state, self.x, self.y, idx[:, i], mask[i], jnp.int32(epoch),
                                              jnp.int32(i))
                self.step += 1
                if self.first_step_s is None:
                    self.jax.block_until_ready(self.state)
                    self.first_step_s = time.perf_counter() - t0
                if self.step in self.eval_at:
                    self.jax.block_until_ready(self.state)
                    self.clock.train_s += time.perf_counter() - t0
                    t1 = time.perf_counter()
                    acc = float(np.mean(np.asarray(tr.evaluate(self.state, self.tx_, self.ty_)[1])))
                    self.clock.eval_s += time.perf_counter() - t1
                    self.curve.append(dict(step=self.step, time_s=self.clock.wall_s,
                                           train_time_s=self.clock.train_s, test_acc=acc))
                    t0 = time.perf_counter()
            self.jax.block_until_ready(self.state)
            self.clock.train_s += time.perf_counter() - t0
            self.epochs += 1


class TorchSide:
    """The same run in PyTorch eager: same start, batches, augmentation, dropout masks, optimizer steps and
    learning rates."""

    def __init__(self, model_cfg, cfg, hw, train_mean, params, plans, draws, lrs, seed, train, test, eval_at,
                 threads, dtype="float32"):
        import torch

        from benchmarks.torch_cnn import TorchCNN, load_flax_params

        self.torch = torch
        # "bfloat16": forward passes and loss under torch.autocast (bfloat16 convolutions and matmuls, float32
        # weights and optimizer), as benchmarks.bench times PyTorch's bfloat16 rows
        self.amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext
        if threads:
            torch.set_num_threads(threads)
        self.cfg, self.plans, self.draws, self.lrs, self.eval_at = cfg, plans, draws, lrs, eval_at
        self.clock, self.curve, self.step, self.epochs, self.first_step_s = Clock(), [], 0, 0, None
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        self.net = TorchCNN(model_cfg, hw, train_mean)
        load_flax_params(self.net, params)
        kernels = [p for p in self.net.parameters() if p.dim() >= 2]  # bccd_jax.optimizers.decays
        others = [p for p in self.net.parameters() if p.dim() < 2]
        if cfg.optimizer != "adam":
            raise UserError(f"the PyTorch side implements the adam recipe only, not {cfg.optimizer!r}")
        groups = [{"params": kernels, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}]
        opt = torch.optim.AdamW if cfg.weight_decay else torch.optim.Adam
        self.opt = opt(groups, lr=float(lrs[0]), betas=(0.9, 0.999), eps=1e-7)
        self.x = torch.from_numpy(train[0]).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
        self.y = torch.from_numpy(train[1]).long()
        self.tx_ = torch.from_numpy(test[0]).permute(0, 3, 1, 2).contiguous()
        self.ty_ = torch.from_numpy(test[1]).long()
        self.clock.train_s += time.perf_counter() - t0

    def evaluate(self) -> float:
        from benchmarks.torch_cnn import tta_logits

        torch, bs = self.torch, self.cfg.eval_batch_size
        self.net.eval()
        with torch.no_grad(), self.amp():
            correct = sum(int((tta_logits(self.net, self.tx_[i:i + bs], self.cfg.eval_tta).argmax(-1)
                               == self.ty_[i:i + bs]).sum()) for i in range(0, len(self.ty_), bs))
        return correct / len(self.ty_)

    def run_epoch(self, epoch: int):
        import torch.nn.functional as F

        from benchmarks.torch_cnn import augment

        torch = self.torch
        idx, mask = self.plans[epoch]
        aug, keep = self.draws[epoch]
        t0 = time.perf_counter()
        self.net.train()
        for i in range(idx.shape[0]):
            b = torch.from_numpy(idx[i])
            w = torch.from_numpy(mask[i]).float()
            xb = self.x[b].float()
            if self.cfg.augment.active:
                xb = augment(xb, self.cfg.augment, {k: v[i] for k, v in aug.items()})
            with self.amp():
                ce = F.cross_entropy(self.net(xb, dropout_keep=keep[i]), self.y[b], reduction="none")
                loss = (ce.float() * w).sum() / w.sum().clamp_min(1.0)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            for g in self.opt.param_groups:
                g["lr"] = float(self.lrs[self.step])
            self.opt.step()
            self.step += 1
            if self.first_step_s is None:
                self.first_step_s = time.perf_counter() - t0
            if self.step in self.eval_at:
                self.clock.train_s += time.perf_counter() - t0
                t1 = time.perf_counter()
                acc = self.evaluate()
                self.clock.eval_s += time.perf_counter() - t1
                self.curve.append(dict(step=self.step, time_s=self.clock.wall_s, train_time_s=self.clock.train_s,
                                       test_acc=acc))
                self.net.train()
                t0 = time.perf_counter()
        self.clock.train_s += time.perf_counter() - t0
        self.epochs += 1


def replay_draws(model, cfg, params, seed: int, batch_shape, steps: int) -> list:
    """Per epoch: bccd_jax's augmentation parameters ({name: (steps, B, ...)}) and dropout keep masks
    ((steps, B, features)) of every step of `seed`, as torch tensors for TorchSide."""
    import jax
    import jax.numpy as jnp
    import torch

    from bccd_jax.steps import seed_key, step_draws, variables

    def one(epoch, i):
        aug, keeps = step_draws(model, variables(params, {}), seed_key(seed), batch_shape, cfg, epoch, i)
        if len(keeps) != 1:
            raise UserError(f"the PyTorch side has one dropout layer; the model has {len(keeps)}")
        return aug, keeps[0]

    epoch_draws = jax.jit(jax.vmap(one, in_axes=(None, 0)))
    out = []
    for e in range(cfg.epochs):
        aug, keep = epoch_draws(jnp.int32(e), jnp.arange(steps, dtype=jnp.int32))
        out.append(({k: torch.from_numpy(np.array(v)) for k, v in aug.items()}, torch.from_numpy(np.array(keep))))
    return out
