# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Change map of a georeferenced scene
#
# This tutorial writes a small bi-temporal GeoTIFF pair, predicts its change map window by
# window with `cdkd.inference.geotiff.predict_scene` (the library call behind
# `python -m cdkd.predict image1=... image2=... output=...`) and overlays the result on the
# later date with matplotlib.
#
# Sizes (environment variable `CDKD_TUTORIAL_SIZE`):
#
# - `demo` (default): FC-Siam-diff trained for 300 steps on cdkd's synthetic 64x64 pairs (a
#   minute or two on a CPU), then a 384x384 scene in 128-pixel windows;
# - `tiny`: the network keeps its random initial weights (so the map is noise) and the scene
#   is 96x96 in 64-pixel windows; seconds, for the test suite and the documentation build.
#
# Files go to `CDKD_TUTORIAL_DIR` when it is set, else to a new temporary folder.

# %%
# ruff: noqa: E402  (a notebook: each cell imports what it introduces)
import logging
import os
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

# Quiet the libraries' notes that say nothing about the method (tqdm's notebook check,
# Lightning's "GPU available" lines and tips).
warnings.filterwarnings("ignore", message="IProgress not found")
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

SIZE = os.environ.get("CDKD_TUTORIAL_SIZE", "demo")
SETTINGS = {
    "demo": {"scene": 384, "tile": 128, "overlap": 32, "train_steps": 300},
    "tiny": {"scene": 96, "tile": 64, "overlap": 16, "train_steps": 0},
}
if SIZE not in SETTINGS:
    raise SystemExit(f"CDKD_TUTORIAL_SIZE={SIZE!r}: use one of {sorted(SETTINGS)}")
S = SETTINGS[SIZE]
WORK = Path(os.environ.get("CDKD_TUTORIAL_DIR") or tempfile.mkdtemp(prefix="cdkd-tutorial-"))
WORK.mkdir(parents=True, exist_ok=True)
MODEL = "fc_siam_diff"
print("size:", SIZE)
print("working folder:", WORK)

# %% [markdown]
# ## A synthetic scene pair as GeoTIFF
#
# cdkd's synthetic generator draws a landscape at two dates with labelled changes (buildings,
# land-cover conversion, water) and unlabelled nuisances (illumination, season, noise,
# misregistration). Here one large pair is written as two 3-band uint8 GeoTIFFs on a UTM grid
# with 0.5 m pixels, the same CRS, transform and size for both dates (cdkd refuses pairs whose
# grids differ rather than resampling silently).

# %%
from cdkd.data.synthetic import make_pair

pair = make_pair(np.random.default_rng(7), S["scene"], target_car=0.15)
profile = {
    "driver": "GTiff",
    "width": S["scene"],
    "height": S["scene"],
    "count": 3,
    "dtype": "uint8",
    "crs": "EPSG:32633",
    "transform": from_origin(500_000.0, 5_000_000.0, 0.5, 0.5),
}
scene = {"2019": WORK / "2019.tif", "2023": WORK / "2023.tif"}
for path, image in zip(scene.values(), (pair.image1, pair.image2), strict=True):
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(image, -1, 0))
print("ground-truth change area ratio:", round(float(pair.mask.mean()), 3))

# %% [markdown]
# ## A model
#
# At the default size a baseline FC-Siam-diff is trained on the synthetic dataset, exactly as
# `python -m cdkd.train stage=baseline model=fc_siam_diff schedule.max_steps=300` would; its
# best checkpoint is the `weights=` of the prediction. At the tiny size the network keeps its
# random initial weights, saved as a plain state dict (`weights=` also takes the state dicts
# that other projects release).

# %%
from cdkd.cli.pipeline import compose_config
from cdkd.models import create_model
from cdkd.models.checkpoint import load_network

if S["train_steps"]:
    from cdkd.training.run import train

    cfg = compose_config(
        "train",
        [
            f"model={MODEL}",
            "stage=baseline",
            f"schedule.max_steps={S['train_steps']}",
            "schedule.val_every=100",
            f"paths.data_dir={WORK / 'data'}",
            f"paths.runs_dir={WORK / 'runs'}",
            "logger=none",
            "callbacks.progress_bar=null",
            "trainer.enable_model_summary=false",
        ],
    )
    train(cfg)
    weights = Path(cfg.run_dir) / "best.ckpt"
    model = load_network(weights, expected_model=MODEL)
else:
    torch.manual_seed(0)
    weights = WORK / "random_init.pth"
    torch.save(create_model(MODEL).state_dict(), weights)
    model = create_model(MODEL, weights=str(weights))
model = model.eval()
print("weights:", weights)

# %% [markdown]
# ## Prediction, window by window
#
# The scene is cut into overlapping windows (`tile_size`, `overlap`); overlapping predictions
# are blended with weights that fade towards each window's inner edges, so there are no seams,
# and finished rows are written at once, so scenes larger than memory work. The output is a
# single-band GeoTIFF on the input grid (0/255), and `overlay` also writes a PNG with the
# changes tinted over the later date. The command-line equivalent:
#
# ```bash
# python -m cdkd.predict model=fc_siam_diff weights=WEIGHTS image1=2019.tif image2=2023.tif \
#     output=change.tif tile_size=128 overlap=32 overlay=true
# ```

# %%
from cdkd.inference.geotiff import SceneOptions, predict_scene

normalize = compose_config("predict", [f"model={MODEL}", "weights=x", "output=x"]).model.normalize
result = predict_scene(
    model,
    scene["2019"],
    scene["2023"],
    WORK / "change.tif",
    mean=list(normalize.mean),
    std=list(normalize.std),
    options=SceneOptions(tile_size=S["tile"], overlap=S["overlap"], overlay=True),
)
print("change map:", result.output)
print("overlay:", result.overlay)
print(f"changed: {result.changed_pixels} of {result.valid_pixels} valid pixels")

# %% [markdown]
# The change map keeps the scenes' georeference:

# %%
with rasterio.open(result.output) as src:
    change = src.read(1)
    print("CRS:", src.crs, "| transform:", tuple(src.transform)[:6], "| size:", src.shape)
    print("values:", sorted(np.unique(change).tolist()), "| nodata:", src.nodata)
    bounds = src.bounds

# %% [markdown]
# ## Overlay with matplotlib
#
# The two dates, the ground truth of the generator and the predicted change tinted red over the
# later date, in map coordinates (metres east and north).

# %%
extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
tinted = pair.image2.astype(float) / 255
tinted[change == 255] = 0.4 * tinted[change == 255] + 0.6 * np.array([1.0, 0.0, 0.0])
panels = {
    "2019": pair.image1,
    "2023": pair.image2,
    "ground truth": pair.mask,
    "predicted change over 2023": tinted,
}
fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
for ax, (title, image) in zip(axes, panels.items(), strict=True):
    ax.imshow(image, extent=extent, cmap="gray" if image.ndim == 2 else None)
    ax.set_title(title)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=7)
fig.tight_layout()
plt.show()
