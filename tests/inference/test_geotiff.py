"""GeoTIFF scenes: windowed sliding-window inference, georeference, nodata, scaling, errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import Affine
from torch import nn

from cdkd.errors import ConfigError, DataError
from cdkd.inference.geotiff import (
    MASK_NODATA,
    OVERLAY_ALPHA,
    SceneOptions,
    output_nodata,
    predict_scene,
)
from cdkd.inference.predict import plan_jobs
from cdkd.inference.raster import Scaling
from cdkd.inference.sliding import TileGrid, full_resolution_logits, sliding_window_logits
from cdkd.models import ChangeModel, create_model
from tests.factories import Composer, save_checkpoint

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0)
CRS = "EPSG:32633"


class Pointwise(ChangeModel):
    """Change logit = sum over channels of x1 - x2, pixel by pixel (no spatial context)."""

    out_channels = 2

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        d = (x1 - x2).sum(1, keepdim=True)
        return torch.cat([-d, d], 1)


class Local3x3(ChangeModel):
    """A fixed random 3x3 convolution of x1 - x2: context of exactly one pixel each side."""

    out_channels = 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.conv(x1 - x2)


def write_scene(
    path: Path,
    data: np.ndarray,
    nodata: float | None = 0,
    crs: str = CRS,
    transform: Affine = TRANSFORM,
) -> Path:
    """Write ``data [C, H, W]`` as an LZW-compressed GeoTIFF."""
    count, height, width = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress="lzw",
    ) as dst:
        dst.write(data)
    return path


def scene_pair(
    root: Path, height: int = 130, width: int = 150, seed: int = 0
) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Two random uint8 RGB dates with nodata=0: a corner of date 1 and a strip of date 2."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 256, (3, height, width), dtype=np.uint8)
    b = rng.integers(1, 256, (3, height, width), dtype=np.uint8)
    a[:, :10, :20] = 0
    b[:, -5:, 30:60] = 0
    return write_scene(root / "t1.tif", a), write_scene(root / "t2.tif", b), a, b


def whole_change_logit(model: ChangeModel, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference: the whole image through the network in one pass, nodata set to the mean."""
    valid = (a != 0).any(0) & (b != 0).any(0)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def norm(x: np.ndarray) -> torch.Tensor:
        t = (torch.from_numpy(x.astype(np.float32)) - mean) / std
        return torch.where(torch.from_numpy(valid), t, 0.0)[None]

    with torch.no_grad():
        logits = full_resolution_logits(model, norm(a), norm(b))
    return model.change_logit(logits)[0, 0].numpy()


def read_output(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(path) as src:
        return src.read(1), {
            "crs": src.crs,
            "transform": src.transform,
            "size": (src.width, src.height),
            "nodata": src.nodata,
            "count": src.count,
        }


def test_tiled_scene_equals_whole_image_for_a_pointwise_model(tmp_path: Path) -> None:
    t1, t2, a, b = scene_pair(tmp_path)
    out = tmp_path / "out" / "map.tif"
    calls: list[int] = []
    options = SceneOptions(tile_size=64, overlap=16, batch_size=2, probability=True)
    result = predict_scene(Pointwise(), t1, t2, out, MEAN, STD, options, advance=calls.append)
    prob, meta = read_output(out)
    assert sum(calls) == len(TileGrid(130, 150, 64, 16)) == 9
    assert meta["size"] == (150, 130) and meta["count"] == 1
    assert meta["crs"] == rasterio.crs.CRS.from_string(CRS) and meta["transform"] == TRANSFORM
    nodata = ~((a != 0).any(0) & (b != 0).any(0))
    assert nodata.sum() == 10 * 20 + 5 * 30
    assert math.isnan(meta["nodata"]) and np.isnan(prob[nodata]).all()
    expected = torch.sigmoid(torch.from_numpy(whole_change_logit(Pointwise(), a, b))).numpy()
    np.testing.assert_allclose(prob[~nodata], expected[~nodata], atol=1e-6)
    assert result.valid_pixels == (~nodata).sum()
    assert result.changed_pixels == (expected[~nodata] > 0.5).sum()
    assert [p.name for p in out.parent.iterdir()] == ["map.tif"]


def test_tiles_match_whole_image_away_from_window_edges_and_blend_at_them(
    tmp_path: Path,
) -> None:
    t1, t2, a, b = scene_pair(tmp_path)
    model = Local3x3().eval()
    options = SceneOptions(tile_size=64, overlap=16, probability=True)
    predict_scene(model, t1, t2, tmp_path / "p.tif", MEAN, STD, options)
    prob, _ = read_output(tmp_path / "p.tif")
    whole = whole_change_logit(model, a, b)
    expected = torch.sigmoid(torch.from_numpy(whole)).numpy()
    grid = TileGrid(130, 150, 64, 16)
    edges = np.zeros((130, 150), dtype=bool)  # inner window edges: the 3x3 sees zero padding
    for top in grid.rows:
        for left in grid.cols:
            box = edges[top : top + 64, left : left + 64]
            box[[0, -1], :] |= np.array([top > 0, top + 64 < 130])[:, None]
            box[:, [0, -1]] |= np.array([left > 0, left + 64 < 150])[None, :]
    frame = np.zeros_like(edges)
    frame[[0, -1], :] = frame[:, [0, -1]] = True  # whole-image reference pads differently
    valid = ~np.isnan(prob)
    away = valid & ~edges & ~frame
    np.testing.assert_allclose(prob[away], expected[away], atol=1e-6)
    # One window alone is wrong by up to `worst` (in logits) on its inner edges; blending
    # gives such a window at most 1/(overlap+1) of a pixel's weight along each axis, and the
    # sigmoid's slope is at most 1/4.
    worst = 0.0
    for top in grid.rows:
        for left in grid.cols:
            crop = (..., slice(top, top + 64), slice(left, left + 64))
            mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
            x1 = ((torch.from_numpy(a[crop].astype(np.float32)) - mean) / std)[None]
            x2 = ((torch.from_numpy(b[crop].astype(np.float32)) - mean) / std)[None]
            with torch.no_grad():
                alone = model(x1, x2)[0, 0].numpy()
            worst = max(worst, float(np.abs(alone - whole[crop]).max()))
    at_edges = valid & edges & ~frame
    assert worst > 0.1
    assert np.abs(prob[at_edges] - expected[at_edges]).max() <= 2 * worst / 17 / 4 + 1e-6


def test_sliding_window_batches_windows_without_changing_results() -> None:
    torch.manual_seed(1)
    x1, x2 = torch.randn(1, 3, 70, 90), torch.randn(1, 3, 70, 90)
    model = Local3x3().eval()
    calls: list[int] = []
    with torch.no_grad():
        one = sliding_window_logits(model, x1, x2, tile=32, overlap=8)
        batched = sliding_window_logits(
            model, x1, x2, tile=32, overlap=8, batch_size=4, advance=calls.append
        )
    assert sum(calls) == len(TileGrid(70, 90, 32, 8)) == 12
    torch.testing.assert_close(one, batched, atol=1e-5, rtol=0)


@pytest.fixture
def run_predict(compose_config: Composer) -> Callable[..., None]:
    """``python -m cdkd.predict`` in this process (its body, after Hydra composed the config)."""
    from cdkd.cli.predict import main

    def run(*overrides: str) -> None:
        main.__wrapped__(compose_config("predict", *overrides))

    return run


@pytest.fixture(scope="module")
def fc_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "fc.ckpt", "fc_siam_diff")


def test_cli_scene_keeps_the_grid_and_equals_whole_image_prediction(
    tmp_path: Path, fc_checkpoint: Path, run_predict: Callable[..., None]
) -> None:
    t1, t2, a, b = scene_pair(tmp_path, height=40, width=56)
    out = tmp_path / "maps" / "change.tif"
    run_predict(
        "model=fc_siam_diff",
        f"weights={fc_checkpoint}",
        f"image1={t1}",
        f"image2={t2}",
        f"output={out}",
        "overlay=true",
        "device=cpu",
    )
    mask, meta = read_output(out)
    assert meta["crs"] == rasterio.crs.CRS.from_string(CRS)
    assert meta["transform"] == TRANSFORM and meta["size"] == (56, 40)
    # Input nodata 0 would read as "unchanged" in a 0/255 mask: the documented substitute.
    assert meta["nodata"] == MASK_NODATA
    model = create_model("fc_siam_diff", weights=fc_checkpoint).eval()
    expected = np.where(whole_change_logit(model, a, b) > 0, 255, 0)
    nodata = ~((a != 0).any(0) & (b != 0).any(0))
    assert (mask[nodata] == MASK_NODATA).all()
    np.testing.assert_array_equal(mask[~nodata], expected[~nodata])
    overlay = np.asarray(Image.open(tmp_path / "maps" / "change_overlay.png"))
    assert overlay.shape == (40, 56, 3)


def test_cli_reports_a_grid_mismatch_in_one_line(
    tmp_path: Path,
    fc_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    run_predict: Callable[..., None],
) -> None:
    t1, _, _, b = scene_pair(tmp_path, height=40, width=48)
    t2 = write_scene(tmp_path / "other.tif", b, crs="EPSG:32634")
    with pytest.raises(SystemExit) as exc:
        run_predict(
            "model=fc_siam_diff",
            f"weights={fc_checkpoint}",
            f"image1={t1}",
            f"image2={t2}",
            f"output={tmp_path / 'o.tif'}",
        )
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(t1) in err and str(t2) in err and "EPSG:32634" in err
    assert not (tmp_path / "o.tif").exists()


def test_cli_folder_mode_maps_scenes_to_geotiffs_and_images_to_pngs(
    tmp_path: Path, fc_checkpoint: Path, run_predict: Callable[..., None]
) -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(2)]
    for folder, image in zip(("A", "B"), images, strict=True):
        (tmp_path / "in" / folder).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "in" / folder / "photo.png")
        Image.fromarray(image).save(tmp_path / "in" / folder / "plain.tif")
        write_scene(tmp_path / "in" / folder / "scene.tif", image.transpose(2, 0, 1), None)
    out = tmp_path / "out"
    run_predict(
        "model=fc_siam_diff",
        f"weights={fc_checkpoint}",
        f"input={tmp_path / 'in'}",
        f"output={out}",
        "tile_size=32",
        "overlap=8",
        "batch_size=3",
        "device=cpu",
    )
    assert sorted(p.name for p in out.iterdir()) == ["photo.png", "plain.png", "scene.tif"]
    model = create_model("fc_siam_diff", weights=fc_checkpoint).eval()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x1, x2 = ((torch.from_numpy(i).permute(2, 0, 1)[None].float() - mean) / std for i in images)
    with torch.no_grad():
        logits = sliding_window_logits(model, x1, x2, tile=32, overlap=8)
    expected = np.where(model.predict(logits)[0].numpy(), 255, 0)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "photo.png")), expected)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "plain.png")), expected)
    scene, meta = read_output(out / "scene.tif")
    assert meta["nodata"] is None and meta["transform"] == TRANSFORM
    np.testing.assert_array_equal(scene, expected)


def test_plan_jobs_needs_one_way_of_naming_pairs_and_the_suffix_of_the_map(
    tmp_path: Path,
) -> None:
    t1, t2, a, _ = scene_pair(tmp_path, height=8, width=8)
    png = tmp_path / "a.png"
    Image.fromarray(a.transpose(1, 2, 0)).save(png)
    for names in [(tmp_path, t1, t2), (None, t1, None), (None, None, None)]:
        with pytest.raises(ConfigError, match="either input=DIR or both image1"):
            plan_jobs(*names, tmp_path / "out.tif")
    with pytest.raises(ConfigError, match=r"GeoTIFF scene is written as \.tif or \.tiff"):
        plan_jobs(None, t1, t2, tmp_path / "map.png")
    with pytest.raises(ConfigError, match=r"image pair is written as \.png"):
        plan_jobs(None, png, png, tmp_path / "map.tif")
    (job,), problems = plan_jobs(None, png, t2, tmp_path / "map.TIF")
    assert job.scene and job.name == "map" and problems == []


@pytest.mark.parametrize(
    ("kind", "change", "words"),
    [
        (
            "transform",
            {"transform": Affine(10.0, 0.0, 500030.0, 0.0, -10.0, 5600000.0)},
            "geotransform",
        ),
        ("size", {}, "size 40x30 differs"),
        ("crs", {"crs": "EPSG:4326"}, "CRS EPSG:4326 differs"),
    ],
)
def test_mismatched_grids_are_rejected_naming_both_files(
    tmp_path: Path, kind: str, change: dict[str, Any], words: str
) -> None:
    t1, _, _, b = scene_pair(tmp_path, height=32, width=40)
    data = b[:, :30, :] if kind == "size" else b
    t2 = write_scene(tmp_path / f"{kind}.tif", data, **change)
    with pytest.raises(DataError) as exc:
        predict_scene(Pointwise(), t1, t2, tmp_path / "o.tif", MEAN, STD)
    message = str(exc.value)
    assert "\n" not in message and words in message
    assert str(t1) in message and str(t2) in message
    assert not (tmp_path / "o.tif").exists()


def test_nan_pixels_of_a_float_scene_are_nodata_and_scale_one_matches_8_bit(
    tmp_path: Path,
) -> None:
    _, _, a, b = scene_pair(tmp_path, height=40, width=48)
    fa, fb = a.astype(np.float32) / 255, b.astype(np.float32) / 255
    fa[:, 20:23, 5:9] = np.nan
    fb[1, 30, 40] = np.inf
    t1 = write_scene(tmp_path / "f1.tif", fa, nodata=None)
    t2 = write_scene(tmp_path / "f2.tif", fb, nodata=None)
    options = SceneOptions(tile_size=32, overlap=8, scaling=Scaling.parse(1))
    predict_scene(Pointwise(), t1, t2, tmp_path / "f.tif", MEAN, STD, options)
    u1 = write_scene(tmp_path / "u1.tif", a, nodata=None)
    u2 = write_scene(tmp_path / "u2.tif", b, nodata=None)
    predict_scene(Pointwise(), u1, u2, tmp_path / "u.tif", MEAN, STD, options)
    from_float, meta = read_output(tmp_path / "f.tif")
    from_bytes, _ = read_output(tmp_path / "u.tif")
    bad = np.zeros((40, 48), dtype=bool)
    bad[20:23, 5:9] = bad[30, 40] = True
    assert meta["nodata"] == MASK_NODATA
    assert ((from_float == MASK_NODATA) == bad).all()
    # Neither pair declares a nodata value, so the zero corners are data in both.
    np.testing.assert_array_equal(from_float[~bad], from_bytes[~bad])


def test_16_bit_scene_needs_a_scale(tmp_path: Path) -> None:
    _, _, a, b = scene_pair(tmp_path, height=32, width=40)
    t1 = write_scene(tmp_path / "w1.tif", a.astype(np.uint16) * 10 + 1000, nodata=None)
    t2 = write_scene(tmp_path / "w2.tif", b.astype(np.uint16) * 10 + 1000, nodata=None)
    with pytest.raises(DataError) as exc:
        predict_scene(Pointwise(), t1, t2, tmp_path / "o.tif", MEAN, STD)
    assert str(t1) in str(exc.value) and "16-bit uint16" in str(exc.value)
    assert "scale=" in str(exc.value) and not (tmp_path / "o.tif").exists()
    # A percentile stretch over the full range undoes the affine encoding exactly.
    a[:, 0, 0], a[:, 0, 1] = 0, 255
    b[:, 0, 0], b[:, 0, 1] = 0, 255
    write_scene(t1, a.astype(np.uint16) * 10 + 1000, nodata=None)
    write_scene(t2, b.astype(np.uint16) * 10 + 1000, nodata=None)
    options = SceneOptions(scaling=Scaling.parse("percentile", (0, 100)), probability=True)
    predict_scene(Pointwise(), t1, t2, tmp_path / "o.tif", MEAN, STD, options)
    u1, u2 = write_scene(tmp_path / "u1.tif", a), write_scene(tmp_path / "u2.tif", b)
    predict_scene(Pointwise(), u1, u2, tmp_path / "u.tif", MEAN, STD, options)
    stretched, bytes_ = read_output(tmp_path / "o.tif")[0], read_output(tmp_path / "u.tif")[0]
    ok = ~np.isnan(bytes_)
    np.testing.assert_allclose(stretched[ok], bytes_[ok], atol=1e-6)


def test_overlay_tints_changed_pixels_and_is_downsampled_when_large(tmp_path: Path) -> None:
    t1, t2, _, b = scene_pair(tmp_path, height=40, width=48)
    options = SceneOptions(overlay=True)
    result = predict_scene(Pointwise(), t1, t2, tmp_path / "m.tif", MEAN, STD, options)
    mask, _ = read_output(tmp_path / "m.tif")
    overlay = np.asarray(Image.open(result.overlay)).astype(float)
    later = b.transpose(1, 2, 0).astype(float)
    changed = mask == 255
    assert changed.any() and (~changed & (mask == 0)).any()
    tinted = (1 - OVERLAY_ALPHA) * later + OVERLAY_ALPHA * np.array([255.0, 0.0, 0.0])
    np.testing.assert_allclose(overlay[changed], tinted[changed], atol=1.0)
    np.testing.assert_array_equal(overlay[mask == 0], later[mask == 0])
    small = SceneOptions(overlay=True, overlay_max_size=20)
    result = predict_scene(Pointwise(), t1, t2, tmp_path / "s.tif", MEAN, STD, small)
    assert Image.open(result.overlay).size == (16, 14)


@pytest.mark.parametrize(
    ("source", "probability", "needed", "expected"),
    [
        (None, False, False, None),
        (0, False, True, MASK_NODATA),
        (255, False, True, MASK_NODATA),
        (-9999, False, True, MASK_NODATA),
        (65535, False, True, MASK_NODATA),
        (200, False, True, 200),
        (0, True, True, math.nan),
        (-9999, True, True, -9999),
        (None, True, True, math.nan),
    ],
)
def test_output_nodata_is_kept_unless_it_reads_as_a_result(
    source: float | None, probability: bool, needed: bool, expected: float | None
) -> None:
    value = output_nodata(source, probability, needed)
    if expected is None or not math.isnan(expected):
        assert value == expected
    else:
        assert value is not None and math.isnan(value)


def test_float_nodata_outside_the_probability_range_is_preserved(tmp_path: Path) -> None:
    _, _, a, b = scene_pair(tmp_path, height=32, width=40)
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    fa[fa == 0] = -9999
    fb[fb == 0] = -9999
    t1 = write_scene(tmp_path / "n1.tif", fa, nodata=-9999)
    t2 = write_scene(tmp_path / "n2.tif", fb, nodata=-9999)
    options = SceneOptions(scaling=Scaling.parse(255), probability=True)
    predict_scene(Pointwise(), t1, t2, tmp_path / "p.tif", MEAN, STD, options)
    prob, meta = read_output(tmp_path / "p.tif")
    assert meta["nodata"] == -9999
    nodata = ~((a != 0).any(0) & (b != 0).any(0))
    assert (prob[nodata] == -9999).all() and ((prob[~nodata] >= 0) & (prob[~nodata] <= 1)).all()


def test_band_and_option_errors(tmp_path: Path) -> None:
    t1, t2, _, _ = scene_pair(tmp_path, height=32, width=40)
    with pytest.raises(DataError, match=r"has 3 band\(s\); bands=\[1, 2, 4\]"):
        predict_scene(
            Pointwise(), t1, t2, tmp_path / "o.tif", MEAN, STD, SceneOptions(bands=(1, 2, 4))
        )
    with pytest.raises(ConfigError, match="three"):
        SceneOptions(bands=(1, 2))
    with pytest.raises(ConfigError, match="overlap"):
        SceneOptions(tile_size=64, overlap=64)
    with pytest.raises(ConfigError, match="scale="):
        Scaling.parse("stretchy")
