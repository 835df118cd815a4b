"""The bccd_jax CNN family in PyTorch, for the comparisons in benchmarks/: same layers, same init family.

- `TorchCNN(model_cfg, (H, W))`: conv blocks (conv-ReLU ..., 2x2 max-pool) -> dense -> ReLU ->
  dropout -> logits, as bccd_jax.models.cnn.CNN builds them from a ModelConfig, at any image size.
  The input normalisation (x/255 with optional feature centering, or per-image standardisation;
  grayscale) happens inside `forward`, as in the Flax module, on uint8 or float NCHW 0..255 input.
- Initialisation as the Flax initialisers (`init`): "keras" glorot_uniform = xavier_uniform_;
  "he" / "lecun" = a truncated normal at +-2 sigma with variance 2 / fan_in or 1 / fan_in after
  truncation (the same distribution as jax.nn.initializers.variance_scaling "truncated_normal");
  biases zero. `load_flax_params` copies a Flax parameter tree instead (identical start).
- `augment`: bccd_jax.augment.apply_augment in torch ops (NCHW, 0..255), replaying the parameters
  that bccd_jax drew for the batch (bccd_jax.steps.step_draws); `forward(x, dropout_keep)` replays
  its dropout mask the same way.

Batch norm and VGG16 are not built here: the benchmarks compare the plain CNNs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F

from bccd_jax.config import AugmentConfig, ModelConfig
from bccd_jax.models.cnn import feature_map_size
from bccd_jax.errors import UserError

# jax.nn.initializers.variance_scaling: a unit normal truncated at +-2 has this standard deviation
_TRUNC_STD = 0.87962566103423978


class TorchCNN(tnn.Module):
    """bccd_jax.models.cnn.CNN for `cfg` at image size `hw`; `train_mean` for feature centering."""

    def __init__(self, cfg: ModelConfig, hw: tuple[int, int], train_mean=None):
        super().__init__()
        cfg.validate()
        if cfg.arch == "vgg16" or cfg.batch_norm:
            raise UserError(f"the PyTorch reference builds the plain CNNs only, not {cfg.arch}"
                            f"{' with batch norm' if cfg.batch_norm else ''}")
        if cfg.feature_centering and train_mean is None:
            raise UserError("feature_centering needs the training-set mean (train_mean)")
        if cfg.input_norm not in ("scale", "image"):
            raise UserError(f"the PyTorch reference normalises inputs by scale or image, not {cfg.input_norm}")
        feature_map_size(cfg, hw)
        self.cfg = cfg
        mean = torch.as_tensor(np.asarray(train_mean if cfg.feature_centering else [0.0, 0.0, 0.0]), dtype=torch.float32)
        self.register_buffer("input_mean", mean.view(1, 3, 1, 1))
        pad = "same" if cfg.padding == "SAME" else 0
        layers, cin = [], 3
        for block in cfg.conv_blocks:
            for features in block:
                layers += [tnn.Conv2d(cin, features, cfg.kernel_size, padding=pad), tnn.ReLU()]
                cin = features
            layers.append(tnn.MaxPool2d(2))  # floor mode: odd trailing rows/columns dropped, as max_pool_2x2
        self.features = tnn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 3, *hw)).numel()
        self.dense = tnn.Linear(flat, cfg.dense_features)
        self.dropout = tnn.Dropout(cfg.dropout)
        self.out = tnn.Linear(cfg.dense_features, cfg.num_classes)
        init_like_flax(self, cfg.init)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """0..255 NCHW -> what the first layer sees (bccd_jax.models.cnn.normalize_inputs)."""
        x = x.float()
        if self.cfg.grayscale:
            x = x.mean(1, keepdim=True).expand_as(x)
        if self.cfg.input_norm == "image":
            mean = x.mean((2, 3), keepdim=True)
            std = x.std((2, 3), keepdim=True, unbiased=False)
            return (x - mean) / std.clamp_min(1.0)
        return (x - self.input_mean) / 255.0

    def forward(self, x: torch.Tensor, dropout_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; in training mode `dropout_keep` (N, dense_features) bool, when given, is the dropout
        mask (flax's: kept units scaled by 1 / (1 - rate)) instead of one drawn by torch."""
        h = F.relu(self.dense(self.features(self.normalize(x)).flatten(1)))
        if dropout_keep is not None and self.training and self.cfg.dropout:
            h = torch.where(dropout_keep, h / (1.0 - self.cfg.dropout), torch.zeros_like(h))
        else:
            h = self.dropout(h)
        return self.out(h)


def init_like_flax(net: tnn.Module, init: str) -> None:
    """Kernels as bccd_jax.models.cnn.KERNEL_INITS[init], biases zero."""
    for m in net.modules():
        if isinstance(m, (tnn.Conv2d, tnn.Linear)):
            w = m.weight
            fan_in = w.shape[1] * (w[0, 0].numel() if w.dim() > 2 else 1)
            if init == "keras":
                tnn.init.xavier_uniform_(w)
            elif init in ("he", "lecun"):
                std = math.sqrt((2.0 if init == "he" else 1.0) / fan_in) / _TRUNC_STD
                tnn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)
            else:
                raise UserError(f"unknown init {init!r}")
            tnn.init.zeros_(m.bias)


def load_flax_params(net: TorchCNN, params: Mapping[str, Any]) -> None:
    """Copy one seed's Flax CNN parameters (Conv_i, Dense_0, Dense_1) into `net`.

    Conv kernels HWIO -> OIHW; dense kernels (in, out) -> (out, in); the first dense layer's
    rows are reordered from Flax's (H, W, C) flattening to torch's (C, H, W)."""
    convs = [m for m in net.features if isinstance(m, tnn.Conv2d)]
    names = sorted((k for k in params if k.startswith("Conv_")), key=lambda k: int(k.split("_")[1]))
    if len(names) != len(convs) or "Dense_0" not in params or "Dense_1" not in params:
        raise UserError(f"parameters {sorted(params)} do not match a CNN with {len(convs)} conv layers")

    def put(dst: torch.Tensor, src: np.ndarray):
        src = torch.from_numpy(np.array(src, np.float32))  # a writable copy
        if tuple(src.shape) != tuple(dst.shape):
            raise UserError(f"parameter shape {tuple(src.shape)} does not fit {tuple(dst.shape)}")
        dst.copy_(src)

    with torch.no_grad():
        for conv, name in zip(convs, names):
            put(conv.weight, np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1))
            put(conv.bias, np.asarray(params[name]["bias"]))
        k = np.asarray(params["Dense_0"]["kernel"])
        c = convs[-1].out_channels
        hw = k.shape[0] // c
        k = k.reshape(hw, c, -1).transpose(1, 0, 2).reshape(k.shape[0], -1)  # (H W C) rows -> (C H W)
        put(net.dense.weight, k.T)
        put(net.dense.bias, np.asarray(params["Dense_0"]["bias"]))
        put(net.out.weight, np.asarray(params["Dense_1"]["kernel"]).T)
        put(net.out.bias, np.asarray(params["Dense_1"]["bias"]))


# --------------------------------------------------------------------------- augmentation

_LUMA = torch.tensor([0.299, 0.587, 0.114])
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def augment(x: torch.Tensor, cfg: AugmentConfig, d: Mapping[str, Any]) -> torch.Tensor:
    """bccd_jax.augment.apply_augment on float NCHW 0..255: the parameters `d` that
    bccd_jax.augment.draw_augment drew for this batch (numpy or torch, batch axis first), applied
    with torch ops: colour first (0..1 inside), then one affine warp per image (bilinear, black
    outside), or exact flips when flipping is the only geometry."""
    if cfg.degrading:
        raise UserError("augment.blur and augment.jpeg have no PyTorch counterpart in benchmarks/torch_cnn.py; "
                        "time a recipe variant without them")
    d = {k: torch.as_tensor(v) for k, v in d.items()}
    b = x.shape[0]

    def per_image(v):
        return v.view(b, 1, 1, 1)

    if cfg.colour:
        x = x / 255.0
        if cfg.stain:
            hed = torch.einsum("bchw,cj->bjhw", -torch.log(x.clamp_min(1.0 / 255.0)), _HED_FROM_RGB)
            hed = hed * d["stain_scale"][:, :, None, None] + d["stain_bias"][:, :, None, None]
            x = torch.exp(-torch.einsum("bjhw,jc->bchw", hed, _RGB_FROM_HED))
        if cfg.brightness:
            x = x + per_image(d["brightness"])
        if cfg.contrast:
            mean = x.mean((1, 2, 3), keepdim=True)
            x = mean + per_image(d["contrast"]) * (x - mean)
        if cfg.saturation:
            grey = torch.einsum("bchw,c->bhw", x, _LUMA)[:, None]
            x = grey + per_image(d["saturation"]) * (x - grey)
        if cfg.hue:
            t = torch.deg2rad(d["hue"])
            rot = torch.zeros(b, 3, 3)
            rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, t.cos(), -t.sin(), t.sin(), t.cos()
            x = torch.einsum("bdc,bchw->bdhw", _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ, x)
        if cfg.gamma:
            x = x.clamp(0.0, 1.0) ** per_image(d["gamma"])
        x = x.clamp(0.0, 1.0) * 255.0
    if not cfg.geometric:
        return x
    if "angle" not in d:  # flips only: exact
        x = torch.where(per_image(d["flip_y"]), x.flip(2), x)
        return torch.where(per_image(d["flip_x"]), x.flip(3), x)
    return affine_warp(x, d["angle"], d["scale"], d["shift"], d["flip_y"], d["flip_x"])


def affine_warp(x: torch.Tensor, angle, scale, shift, flip_y, flip_x) -> torch.Tensor:
    """Flip, rotate by `angle` (radians), zoom by `scale` about the centre, shift by `shift` (B, 2) pixels
    (y, x): bccd_jax.augment.affine_warp(x, inverse_affine(...)) through affine_grid / grid_sample."""
    b, _, h, w = x.shape
    c, s = angle.cos(), angle.sin()
    fy, fx = 1.0 - 2.0 * flip_y.float(), 1.0 - 2.0 * flip_x.float()
    # output -> source map in pixels from the centre, (y, x) order (bccd_jax.augment.inverse_affine)
    a = torch.stack([torch.stack([fy * c, fy * s], -1), torch.stack([-fx * s, fx * c], -1)], -2) / scale[:, None, None]
    t = -torch.einsum("bij,bj->bi", a, shift)
    # the same map for affine_grid: (x, y) order, coordinates divided by the half extents
    cy, cx = max(h - 1, 1) / 2.0, max(w - 1, 1) / 2.0
    theta = torch.stack([torch.stack([a[:, 1, 1], a[:, 1, 0] * cy / cx, t[:, 1] / cx], -1),
                         torch.stack([a[:, 0, 1] * cx / cy, a[:, 0, 0], t[:, 0] / cy], -1)], -2)
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

def tta_logits(net: tnn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    """Logits, or with tta="flips" the log of the mean softmax over the four flips (bccd_jax.steps.make_evaluate)."""
    if tta == "none":
        return net(x)
    probs = torch.stack([F.softmax(net(f), -1) for f in (x, x.flip(2), x.flip(3), x.flip(2, 3))]).mean(0)
    return torch.log(probs.clamp_min(1e-12))
