"""Data sets cropped around the located cell (`load_dataset(..., crop="cell")`) and how runs record the crop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bccd_jax import CLASS_NAMES
from bccd_jax.data import _sources_and_settings, hashing, load_dataset
from bccd_jax.errors import UserError
from bccd_jax.data.localize import STATUSES
from bccd_jax.run import DataRecord, RunRecord

SIZE = (32, 40)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    frame = load_dataset("originals", image_size=SIZE, cache_dir=str(cache))
    cell = load_dataset("originals", image_size=SIZE, cache_dir=str(cache), crop="cell")
    return frame, cell


def test_cell_build_has_the_frame_builds_splits_and_labels(builds) -> None:
    frame, cell = builds
    assert cell.crop == "cell" and frame.crop == "frame"
    assert cell.image_shape == frame.image_shape == (*SIZE, 3)
    assert set(cell.splits) == set(frame.splits) == {"train", "test"}
    for name, split in frame.splits.items():
        other = cell.splits[name]
        np.testing.assert_array_equal(other.labels, split.labels)
        np.testing.assert_array_equal(other.original_ids, split.original_ids)
        np.testing.assert_array_equal(other.filenames, split.filenames)
        assert other.images.dtype == np.uint8
        assert np.abs(other.images.astype(np.int16) - split.images).mean() > 5  # other pixels
    assert cell.fingerprint != frame.fingerprint and cell.build_dir != frame.build_dir
    for name, split in cell.splits.items():
        counts = cell.localiser[name]
        assert set(counts) == set(STATUSES) and sum(counts.values()) == len(split)
    assert frame.localiser == {}


def test_frame_fingerprint_has_no_crop_setting(builds) -> None:
    """A frame build keeps the fingerprint (and so the cache folder) it had before crops existed."""
    frame, cell = builds
    files, settings = _sources_and_settings("originals", None, SIZE, None)
    assert "crop" not in settings
    assert hashing.fingerprint(files, settings) == frame.fingerprint
    assert hashing.fingerprint(files, {**settings, "crop": "cell"}) == cell.fingerprint
    meta = json.loads((Path(frame.build_dir) / "meta.json").read_text())
    assert "crop" not in meta["settings"] and "crop" not in meta
    assert Path(frame.build_dir).name.startswith(f"originals-{SIZE[0]}x{SIZE[1]}-")
    assert Path(cell.build_dir).name.startswith(f"originals-cell-{SIZE[0]}x{SIZE[1]}-")


def test_cell_build_reads_back_from_the_cache(builds) -> None:
    _, cell = builds
    again = load_dataset("originals", image_size=SIZE, cache_dir=str(Path(cell.build_dir).parent), crop="cell")
    assert again.build_dir == cell.build_dir and again.localiser == cell.localiser
    np.testing.assert_array_equal(again.splits["test"].images, cell.splits["test"].images)


def test_bad_crop_is_a_one_line_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown crop 'box'") as e:
        load_dataset("originals", image_size=SIZE, cache_dir=str(tmp_path), crop="box")
    assert "\n" not in str(e.value)


def test_augmented_cell_build_counts_the_localiser(tmp_path: Path) -> None:
    """Plain images hold no nucleus: every one falls back to the centre crop and is counted as "none"."""
    rng = np.random.default_rng(0)
    for split in ("TRAIN", "TEST", "TEST_SIMPLE"):
        for ci, cls in enumerate(CLASS_NAMES):
            d = tmp_path / "dataset2-master" / "images" / split / cls
            d.mkdir(parents=True)
            a = np.full((48, 64, 3), 200, np.uint8) - rng.integers(0, 5, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(a).save(d / f"_0_{ci}0.jpeg", quality=95)
    ds = load_dataset("augmented", data_dir=str(tmp_path / "dataset2-master"), image_size=(24, 32),
                      cache_dir=str(tmp_path / "cache"), crop="cell")
    assert ds.crop == "cell"
    assert ds.localiser == {s: {"one": 0, "several": 0, "none": 4} for s in ("train", "test", "test_simple")}
    np.testing.assert_array_equal(ds.splits["train"].labels, np.arange(4))


def test_data_record_crop_defaults_to_frame() -> None:
    rec = DataRecord("originals", (32, 40, 3), "f" * 64, (1.0, 2.0, 3.0), {"train": 268, "test": 71}, "embedded")
    assert rec.crop == "frame"
    old = dataclasses.asdict(rec)
    old.pop("crop")
    record = RunRecord.from_json({"experiment": "x", "data": old, "variants": {}})
    assert record.data.crop == "frame"
    record = RunRecord.from_json({"experiment": "x", "data": {**old, "crop": "cell"}, "variants": {}})
    assert record.data.crop == "cell"


def test_runner_crop_flag_and_record(builds) -> None:
    from bccd_jax.runner import data_record, make_parser, parse_args

    from experiments.recipe import EXPERIMENT

    assert parse_args(EXPERIMENT, []).crop == "frame"  # the protocol's crop for the recipe
    assert parse_args(EXPERIMENT, ["--crop", "cell"]).crop == "cell"
    with pytest.raises(UserError, match="invalid choice: 'box'"):
        make_parser(EXPERIMENT).parse_args(["--crop", "box"])
    frame, cell = builds
    assert data_record(frame, None).crop == "frame" and data_record(cell, None).crop == "cell"
