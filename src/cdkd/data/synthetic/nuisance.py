"""Unlabelled acquisition differences between the dates (photometry, blur, noise, shift)."""

from __future__ import annotations

import cv2
import numpy as np

from cdkd.data.synthetic.palette import _HAZE, _SEASON, _noise


def _photometry(
    rng: np.random.Generator, canvas: np.ndarray, vegetation: np.ndarray, shift: bool
) -> np.ndarray:
    """Acquisition effects of one date: season, illumination, haze, misregistration, blur, noise."""
    s = canvas.shape[0]
    canvas = canvas + vegetation[..., None] * (rng.uniform(-1, 1) * _SEASON)
    gain = rng.uniform(0.86, 1.14) * (1 + rng.normal(0, 0.025, 3)).astype(np.float32)
    spatial = 1 + rng.uniform(0.02, 0.08) * _noise(rng, s, s * 0.7, 1)
    canvas = canvas * spatial[..., None] * gain + np.float32(rng.uniform(-10, 10))
    haze = np.float32(rng.uniform(0, 0.12))
    canvas = canvas * (1 - haze) + haze * _HAZE
    if shift:
        dx, dy = rng.uniform(-0.5, 0.5, 2)
        warp = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        canvas = cv2.warpAffine(
            canvas, warp, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
    canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.2, 0.8))
    canvas = canvas + rng.normal(0, rng.uniform(0.8, 3.0), canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
