"""Land-cover classes, colours, landscape kinds and the drawing primitives of a scene."""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import cv2
import numpy as np

_BOTH = (0, 1)
_AFTER = (1,)
_SHADOW_GAIN = 0.55
_SEASON = np.array([22.0, 12.0, -8.0], np.float32)
_HAZE = np.array([200.0, 206.0, 214.0], np.float32)


class Cover(IntEnum):
    """Land-cover class of a surface; a change always swaps one class for another."""

    CROP = 0
    GRASS = 1
    FOREST = 2
    SOIL = 3
    WATER = 4
    ROAD = 5
    BUILDING = 6
    PAVED = 7
    GREENHOUSE = 8


_VEGETATION = np.array([c in (Cover.CROP, Cover.GRASS, Cover.FOREST) for c in Cover], np.float32)
_NATURAL = (Cover.CROP, Cover.GRASS, Cover.FOREST, Cover.SOIL)
_OBSTACLES = (Cover.WATER, Cover.ROAD, Cover.BUILDING, Cover.GREENHOUSE)

_CROP_COLOURS = np.array(
    [
        (76, 116, 54),
        (100, 138, 62),
        (128, 148, 74),
        (174, 162, 96),
        (194, 178, 118),
        (58, 94, 48),
        (118, 128, 60),
    ],
    np.float32,
)
_ROOF_COLOURS = np.array(
    [
        (166, 72, 60),
        (184, 98, 72),
        (78, 104, 152),
        (128, 128, 134),
        (216, 216, 210),
        (88, 140, 142),
        (150, 118, 92),
    ],
    np.float32,
)
_WATER_COLOURS = np.array([(36, 56, 72), (50, 76, 74), (68, 88, 90), (30, 48, 60)], np.float32)

# Flat materials: base RGB, relative amplitude of large-scale and absolute of fine variation.
_TINTS: dict[str, tuple[tuple[float, float, float], float, float]] = {
    "grass": ((108, 136, 78), 0.08, 3),
    "soil": ((160, 130, 100), 0.08, 5),
    "dirt": ((176, 158, 128), 0.05, 4),
    "mud": ((118, 108, 88), 0.08, 4),
    "rubble": ((156, 146, 132), 0.05, 14),
    "construction": ((182, 166, 140), 0.12, 7),
    "paved": ((186, 186, 180), 0.04, 4),
    "asphalt": ((84, 86, 92), 0.03, 3),
}


class _SceneType(NamedTuple):
    """How often a kind of landscape occurs and what it contains."""

    weight: float
    parcels: tuple[float, float, float, float]  # probabilities of crop, grass, forest, soil
    roads: tuple[int, int]
    clusters: tuple[int, int]
    per_cluster: tuple[int, int]
    p_water: float
    p_forest: float


_SCENE_TYPES = (
    _SceneType(0.45, (0.62, 0.14, 0.08, 0.16), (0, 2), (0, 1), (2, 6), 0.35, 0.3),  # farmland
    _SceneType(0.15, (0.25, 0.15, 0.50, 0.10), (0, 1), (0, 0), (1, 3), 0.35, 0.7),  # woodland
    _SceneType(0.30, (0.45, 0.20, 0.07, 0.28), (1, 3), (1, 2), (5, 16), 0.3, 0.2),  # village
    _SceneType(0.10, (0.30, 0.30, 0.05, 0.35), (2, 4), (2, 4), (6, 18), 0.15, 0.1),  # suburb
)


def _noise(rng: np.random.Generator, size: int, cell: float, octaves: int = 2) -> np.ndarray:
    """Smooth value noise, roughly zero mean and unit variance, with features ``cell`` px wide."""
    out = np.zeros((size, size), np.float32)
    total = 0.0
    amp = 1.0
    for _ in range(octaves):
        n = int(np.ceil(size / max(cell, 1.0))) + 1
        if n >= size:
            layer: np.ndarray = rng.standard_normal((size, size), dtype=np.float32)
        else:
            grid = rng.standard_normal((n, n), dtype=np.float32)
            layer = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
            layer = layer / max(float(layer.std()), 1e-3)
        out += amp * layer
        total += amp * amp
        amp *= 0.5
        cell /= 2.0
    scaled: np.ndarray = out / np.float32(np.sqrt(total))
    return scaled


def _poly_mask(size: int, pts: np.ndarray) -> np.ndarray:
    """Boolean mask of a filled polygon given in float pixel coordinates (x, y)."""
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return canvas.astype(bool)


def _line_mask(size: int, pts: np.ndarray, thickness: int) -> np.ndarray:
    """Boolean mask of an open polyline of the given thickness."""
    canvas = np.zeros((size, size), np.uint8)
    cv2.polylines(canvas, [np.round(pts * 16).astype(np.int32)], False, 1, thickness, cv2.LINE_8, 4)
    return canvas.astype(bool)


def _rect(centre: np.ndarray, along: np.ndarray, length: float, width: float) -> np.ndarray:
    """Corners of a rectangle centred at ``centre`` with its long side along unit ``along``."""
    across = np.array([-along[1], along[0]])
    half_l, half_w = along * length / 2, across * width / 2
    return np.stack(
        [
            centre - half_l - half_w,
            centre + half_l - half_w,
            centre + half_l + half_w,
            centre - half_l + half_w,
        ]
    )
