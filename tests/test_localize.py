"""The white-cell localiser and the crop around it: synthetic scenes with known answers, the embedded originals."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bccd_jax.data import localize
from bccd_jax.data import pixels, sources
from bccd_jax.errors import run_cli

BACKGROUND = (225, 200, 205)   # pale pink
RED_CELL = (205, 130, 140)
NUCLEUS = (120, 85, 190)       # purple-blue


def scene(h: int = 240, w: int = 320, nuclei: tuple[tuple[float, float, float], ...] = ((200, 90, 18),),
          rotated_fill_deg: float = 0.0, seed: int = 0) -> np.ndarray:
    """A pink field with red cells, purple discs at (x, y, radius) and, optionally, the black corners that a
    rotation by `rotated_fill_deg` with constant fill leaves (as in the augmented set)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(12):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.06, 0.09) * w
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = RED_CELL
    for cx, cy, r in nuclei:
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = NUCLEUS
    if rotated_fill_deg:
        a = np.deg2rad(rotated_fill_deg)
        u = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)
        v = -(xx - w / 2) * np.sin(a) + (yy - h / 2) * np.cos(a)
        img[(np.abs(u) > w / 2) | (np.abs(v) > h / 2)] = 0
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_black_rotation_corners_are_darker_than_the_nucleus_in_the_stain_channel() -> None:
    # why the fill must be masked: black is the densest "hematoxylin" of all
    dens = localize.hematoxylin_density(np.array([[[0, 0, 0], NUCLEUS, RED_CELL, BACKGROUND]], np.uint8))[0]
    assert dens[0] > 2 * dens[1] and dens[1] > 0.3 > max(dens[2], dens[3])


def test_finds_the_nucleus_among_red_cells_and_black_rotation_corners() -> None:
    img = scene(nuclei=((210, 80, 16),), rotated_fill_deg=20)
    assert (img.max(axis=-1) < 10).mean() > 0.1  # the corners are large
    loc = localize.locate_cell(img)
    assert loc.status == "one", loc.reason
    assert np.hypot(loc.center[0] - 210, loc.center[1] - 80) < 3
    assert loc.size == pytest.approx(localize.CELL_PER_NUCLEUS * 32, rel=0.15)


def test_finds_a_large_centred_cell_and_a_small_one_in_a_large_field() -> None:
    big = localize.locate_cell(scene(363, 360, nuclei=((180, 181, 60),)))
    assert big.status == "one" and np.hypot(big.center[0] - 180, big.center[1] - 181) < 3
    field = localize.locate_cell(scene(480, 640, nuclei=((90, 400, 30),)))
    assert field.status == "one" and np.hypot(field.center[0] - 90, field.center[1] - 400) < 3
    assert field.nucleus_box is not None
    x0, y0, x1, y1 = field.nucleus_box
    assert abs((x1 - x0) - 60) <= 4 and abs((y1 - y0) - 60) <= 4


def test_the_lobes_of_one_nucleus_make_one_cell() -> None:
    lobes = ((150, 120, 10), (177, 112, 10), (200, 130, 10))  # a neutrophil-like nucleus, gaps of 6-9 px
    loc = localize.locate_cell(scene(nuclei=lobes))
    assert loc.status == "one", loc.reason
    assert loc.nucleus_box is not None and loc.nucleus_box[0] <= 143 and loc.nucleus_box[2] >= 207  # all three


def test_no_cell_falls_back_to_the_image_centre() -> None:
    img = scene(nuclei=(), rotated_fill_deg=15)
    loc = localize.locate_cell(img)
    assert loc.status == "none" and loc.nucleus_box is None and loc.candidates == 0
    assert loc.center == (160.0, 120.0)
    # the fallback crop is the largest centred square, whatever the aspect asked for
    x0, y0, x1, y1 = localize.cell_crop_rect(loc, img.shape[:2], (64, 64))
    assert (x1 - x0, y1 - y0) == (240, 240) and (x0, y0) == (40, 0)


def test_two_cells_are_several_and_the_larger_is_chosen() -> None:
    loc = localize.locate_cell(scene(nuclei=((70, 70, 14), (250, 170, 20))))
    assert loc.status == "several" and loc.candidates == 2
    assert np.hypot(loc.center[0] - 250, loc.center[1] - 170) < 3
    assert "largest of 2" in loc.reason


def test_specks_smaller_than_a_nucleus_are_not_a_cell() -> None:
    loc = localize.locate_cell(scene(nuclei=((60, 60, 3), (250, 150, 3))))  # platelet-sized
    assert loc.status == "none", loc.reason


def test_bad_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        localize.locate_cell(np.zeros((50, 50), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        localize.locate_cell(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError, match="too small"):
        localize.locate_cell(np.zeros((8, 50, 3), np.uint8))


def test_locating_a_field_is_fast() -> None:
    img = scene(480, 640, nuclei=((300, 200, 30),), rotated_fill_deg=10)
    localize.locate_cell(img)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        localize.locate_cell(img)
        times.append(time.perf_counter() - t0)
    assert min(times) < 0.05, f"{min(times) * 1e3:.0f} ms for a 640x480 image"


# --------------------------------------------------------------------------- crop


def test_crop_is_centred_on_the_cell_at_the_cells_scale() -> None:
    small = scene(240, 320, nuclei=((22, 20, 15),), seed=1)   # at a corner: the crop reaches past the image
    large = scene(480, 640, nuclei=((44, 40, 30),), seed=2)   # the same cell at twice the scale
    crops = [localize.crop_cell(im, (60, 80)) for im in (small, large)]
    for crop in crops:
        assert crop.shape == (60, 80, 3) and crop.dtype == np.uint8
        assert np.abs(crop[30, 40].astype(int) - NUCLEUS).max() < 30  # the nucleus in the middle
    purple = [(np.abs(c.astype(int) - NUCLEUS).max(axis=-1) < 30).mean() for c in crops]
    assert purple[0] == pytest.approx(purple[1], abs=0.02) and purple[0] > 0.1  # the same fraction of the crop


def test_crop_cells_is_crop_cell_over_a_batch() -> None:
    batch = np.stack([scene(nuclei=((100 + 40 * k, 120, 16),), seed=k) for k in range(3)])
    crops, locs = localize.crop_cells(batch, (48, 64))
    assert crops.shape == (3, 48, 64, 3) and crops.dtype == np.uint8 and len(locs) == 3
    for k in range(3):
        np.testing.assert_array_equal(crops[k], localize.crop_cell(batch[k], (48, 64)))
    threaded, _ = localize.crop_cells(batch, (48, 64), workers=2)
    np.testing.assert_array_equal(threaded, crops)
    mixed, _ = localize.crop_cells([batch[0], scene(363, 360, nuclei=((180, 180, 50),))], (48, 64))
    assert mixed.shape == (2, 48, 64, 3)
    empty, none = localize.crop_cells(np.zeros((0, 240, 320, 3), np.uint8), (48, 64))
    assert empty.shape == (0, 48, 64, 3) and none == []


# --------------------------------------------------------------------------- the embedded originals


def test_finds_the_annotated_white_cell_in_embedded_originals() -> None:
    items, _ = sources.select_originals(sources.find_originals())
    sample = items[::8]  # about 40 originals of every class
    inside, recentred = 0, 0
    for it in sample:
        rgb = np.asarray(pixels.open_rgb(it.image), dtype=np.uint8)
        loc = localize.locate_cell(rgb)
        b = it.box
        inside += b.xmin <= loc.center[0] <= b.xmax and b.ymin <= loc.center[1] <= b.ymax
        again = localize.locate_cell(localize.crop_cell(rgb, (120, 160), loc))  # its own crop: the cell mid-crop
        recentred += again.status == "one" and np.hypot(again.center[0] - 80, again.center[1] - 60) < 4
    assert len(sample) >= 40 and inside == len(sample) and recentred == len(sample)


def test_cli_reports_a_bad_folder_in_one_line(capsys, tmp_path) -> None:
    from experiments import localiser

    assert run_cli(localiser.main, ["--foreign", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--foreign" in err and "not a folder" in err
    assert run_cli(localiser.main, ["--sample", "-1"]) == 2
