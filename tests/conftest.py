"""Shared test setup: a persistent XLA compilation cache so identical programs compile once per test run."""

from __future__ import annotations

import os
import tempfile

import bccd_jax  # noqa: F401  first: its XLA:CPU flags must be set before JAX starts a backend
import jax

_CACHE = os.environ.get("BCCD_JAX_TEST_COMPILE_CACHE") or tempfile.mkdtemp(prefix="bccd_jax_test_xla_")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cache_env(tmp_root: Path) -> dict[str, str]:
    """Environment for subprocesses: the test run's XLA cache (above) and one data cache for all of them."""
    return {**os.environ, "BCCD_JAX_COMPILE_CACHE": jax.config.jax_compilation_cache_dir or str(tmp_root / "xla"),
            "BCCD_JAX_CACHE": str(tmp_root / "bccd_data"), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict[str, str]:
    """`cache_env` of this test run, for the tests that start subprocesses."""
    return cache_env(tmp_path_factory.getbasetemp())


PLAIN_INPUT = ("--crop", "frame", "--set", "input_norm=scale", "augment.flip=false", "augment.rot90=false")
"""Flags that give the quick protocol's optimizers the study's own input."""


def small_run(out: Path, env: dict[str, str], size: tuple[int, int], epochs: int = 2) -> Path:
    """A real run folder: the optimizers experiment's adam variant, 2 seeds, on the embedded originals, with the
    study's plain input (the WBC box, pixels / 255, no augmentation) instead of the quick protocol's cell crops."""
    proc = subprocess.run([sys.executable, "-m", "experiments.optimizers", "--variants", "adam", "--epochs", str(epochs),
                           "--seeds", "2", "--image-size", *map(str, size), "--out", str(out), "--no-progress",
                           "--no-figures", *PLAIN_INPUT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    (run,) = (out / "optimizers").iterdir()
    return run

def write_labelled_folder(root: Path, env: dict[str, str], size: tuple[int, int]) -> Path:
    """The embedded originals' TEST crops at `size` as lossless PNGs in CLASS folders named as users do (plural,
    lower case) under `root`, plus a class the model does not know (one image): bccd_jax.evaluate's input
    made of images whose recorded accuracy is known."""
    import numpy as np
    from PIL import Image

    from bccd_jax import CLASS_NAMES
    from bccd_jax.data import load_dataset

    test = load_dataset("originals", image_size=size, cache_dir=env["BCCD_JAX_CACHE"]).splits["test"]
    for i, (img, label) in enumerate(zip(test.images, test.labels)):
        folder = root / (CLASS_NAMES[label].lower() + "s")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img)).save(folder / f"{i:03d}_{test.original_ids[i]}.png")
    (root / "Basophil").mkdir()
    Image.fromarray(np.asarray(test.images[0])).save(root / "Basophil" / "b.png")
    return root


DATA_ENV = "BCCD_DATA_DIR"
"""The full augmented set (the dataset2-master folder) for the tests that need it; they skip without it."""


@pytest.fixture(scope="session")
def full_data_dir():
    from pathlib import Path

    path = os.environ.get(DATA_ENV)
    if not path:
        pytest.skip(f"needs the full augmented data set: set {DATA_ENV} to its dataset2-master folder")
    if not Path(path, "images").is_dir() and not Path(path, "TRAIN").is_dir():
        pytest.fail(f"{DATA_ENV}={path} has no images/ (or TRAIN/) folder: not the dataset2-master folder")
    return Path(path)
