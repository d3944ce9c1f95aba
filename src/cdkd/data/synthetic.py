"""Synthetic bi-temporal aerial scenes with change labels: the project's built-in default data.

Every pair shows one procedurally drawn landscape at two dates: field parcels with crop rows,
meadow, forest, bare soil, lakes and rivers, roads, and buildings that cast shadows. Between
the dates some objects change (new or demolished buildings, land-cover conversion, greenhouses,
water expansion or retreat, new hardened surfaces, new roads, whole new developments); those
pixels are labelled. Other differences are nuisances and stay unlabelled: illumination, haze,
seasonal colour of vegetation, shadow direction, blur, sensor noise and sub-pixel
misregistration of the second image.

The label comes from the scene, not from the pixels: a pixel is changed when the surface seen
on top differs between the dates, and a change always replaces one land-cover class by another,
so every labelled pixel differs visibly. Change area ratios (CAR) follow a JL1-CD-like mixture
(most images below 5 %, a long tail up to 100 %, some without change), stratified per split so
each partition of the ``three`` CAR scheme gets images even for small splits.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cdkd.errors import ConfigError, DataError
from cdkd.partition import SCHEMES, bucket_of

GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic.json"
FOLDERS = ("A", "B", "label")
MIN_SIZE = 16

CAR_THRESHOLDS: tuple[float, ...] = SCHEMES["three"][0]
CAR_MIX: tuple[float, ...] = (0.125, 0.60, 0.175, 0.10)
"""Share of images with no change, CAR in (0, 5 %], (5 %, 20 %] and above 20 %."""

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


class SyntheticPair(NamedTuple):
    """One generated sample: two RGB dates and the boolean change mask."""

    image1: np.ndarray
    image2: np.ndarray
    mask: np.ndarray


def target_cars(count: int, rng: np.random.Generator) -> np.ndarray:
    """Target change area ratio of each of ``count`` images, stratified over :data:`CAR_MIX`.

    Bucket sizes are fixed by largest remainders (every bucket gets at least one image once
    ``count`` reaches the number of buckets), then shuffled, so the proportions hold for small
    splits too. Within a bucket: 0; log-uniform in [0.2 %, 4.5 %]; uniform in [6 %, 19 %];
    a tail mixing [22 %, 80 %], [80 %, 99 %] and exactly 100 %.
    """
    weights = np.asarray(CAR_MIX, np.float64)
    raw = count * weights
    quotas = np.floor(raw).astype(int)
    order = np.argsort(-(raw - quotas), kind="stable")
    quotas[order[: count - quotas.sum()]] += 1
    if count >= len(weights):
        for bucket in np.flatnonzero(quotas == 0):
            quotas[np.argmax(quotas)] -= 1
            quotas[bucket] += 1
    buckets = np.repeat(np.arange(len(weights)), quotas)
    rng.shuffle(buckets)
    out = np.zeros(count, np.float64)
    for i, bucket in enumerate(buckets):
        if bucket == 1:
            out[i] = np.exp(rng.uniform(np.log(0.002), np.log(0.045)))
        elif bucket == 2:
            out[i] = rng.uniform(0.06, 0.19)
        elif bucket == 3:
            tail = rng.random()
            if tail < 0.1:
                out[i] = 1.0
            elif tail < 0.3:
                out[i] = rng.uniform(0.8, 0.99)
            else:
                out[i] = rng.uniform(0.22, 0.8)
    return out


def _noise(rng: np.random.Generator, size: int, cell: float, octaves: int = 2) -> np.ndarray:
    """Smooth value noise, roughly zero mean and unit variance, with features ``cell`` px wide."""
    out = np.zeros((size, size), np.float32)
    total = 0.0
    amp = 1.0
    for _ in range(octaves):
        n = int(np.ceil(size / max(cell, 1.0))) + 1
        if n >= size:
            layer = rng.standard_normal((size, size), dtype=np.float32)
        else:
            grid = rng.standard_normal((n, n), dtype=np.float32)
            layer = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
            layer /= max(float(layer.std()), 1e-3)
        out += amp * layer
        total += amp * amp
        amp *= 0.5
        cell /= 2.0
    return out / np.float32(np.sqrt(total))


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


@dataclass
class _Blob:
    """An irregular rounded outline that can be scaled about its centre (lakes, patches)."""

    centre: np.ndarray
    radius: float
    harmonics: np.ndarray
    phases: np.ndarray

    @classmethod
    def random(
        cls, rng: np.random.Generator, centre: np.ndarray, radius: float, rough: float = 0.35
    ) -> _Blob:
        """Outline whose radius wobbles by up to about ``rough`` (relative) around the circle."""
        k = np.arange(1, 5)
        return cls(centre, radius, rng.uniform(0, rough, 4) / k, rng.uniform(0, 2 * np.pi, 4))

    def points(self, scale: float = 1.0) -> np.ndarray:
        """Polygon vertices (x, y) of the outline scaled by ``scale``."""
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        k = np.arange(1, 5)[:, None]
        profile = 1 + (self.harmonics[:, None] * np.cos(k * angles + self.phases[:, None])).sum(0)
        r = self.radius * scale * np.clip(profile, 0.3, None)
        return self.centre + np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


@dataclass
class _Layer:
    """A surface painted over the scene at some dates; ``cover`` may vary per pixel."""

    mask: np.ndarray
    rgb: np.ndarray
    cover: int | np.ndarray
    epochs: tuple[int, ...]
    shadows: list[tuple[int, np.ndarray, float]] = field(default_factory=list)


class _Scene:
    """A layered landscape seen at two dates, with the top layer and cover of every pixel."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng = rng
        self.size = size
        self.layers: list[_Layer] = []
        self.top = np.full((2, size, size), -1, np.int32)
        self.cover = np.zeros((2, size, size), np.int8)
        self.visible = np.zeros((2, size, size, 3), np.float32)
        self.textures: dict[str, np.ndarray] = {}
        self.buildings: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.demolished: set[int] = set()
        self.waters: list[_Blob] = []
        self.next_id = 0
        self.angle = rng.uniform(0, np.pi)
        self.axis = np.array([np.cos(self.angle), np.sin(self.angle)])
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.u = xx * np.float32(self.axis[0]) + yy * np.float32(self.axis[1])
        self.v = -xx * np.float32(self.axis[1]) + yy * np.float32(self.axis[0])
        sun = rng.uniform(0, 2 * np.pi)
        self.sun = [
            rng.uniform(0.6, 1.3) * np.array([np.cos(a), np.sin(a)])
            for a in (sun, sun + rng.uniform(-0.35, 0.35))
        ]
        self.parcels = np.zeros((size, size), np.int32)
        self.parcel_cover = np.zeros(0, np.int8)
        self.cuts = np.zeros(0)

    def add(
        self,
        mask: np.ndarray,
        rgb: np.ndarray,
        cover: int | np.ndarray,
        epochs: tuple[int, ...] = _BOTH,
        shadows: list[tuple[int, np.ndarray, float]] | None = None,
    ) -> int:
        """Paint a layer on top at the given dates; returns its index."""
        index = len(self.layers)
        self.layers.append(_Layer(mask, rgb, cover, epochs, shadows or []))
        values = cover[mask] if isinstance(cover, np.ndarray) else cover
        for e in epochs:
            self.top[e][mask] = index
            self.cover[e][mask] = values
            np.copyto(self.visible[e], rgb, where=mask[..., None])
        return index

    def change(self, mask: np.ndarray, rgb: np.ndarray, cover: int, **kw: Any) -> np.ndarray:
        """Paint ``cover`` at the second date only, where it differs from both dates' cover."""
        mask = mask & (self.cover[0] != cover) & (self.cover[1] != cover)
        if mask.any():
            self.add(mask, rgb, cover, _AFTER, **kw)
        return mask

    def label(self) -> np.ndarray:
        """Changed pixels: the visible surface differs between the two dates."""
        return self.top[0] != self.top[1]

    def snapshot(self) -> tuple[Any, ...]:
        """State needed to undo the layers added after this call."""
        return (
            len(self.layers),
            self.top.copy(),
            self.cover.copy(),
            self.visible.copy(),
            len(self.buildings),
            set(self.demolished),
            len(self.waters),
            self.next_id,
        )

    def restore(self, state: tuple[Any, ...]) -> None:
        """Drop everything added since :meth:`snapshot` returned ``state``."""
        n_layers, top, cover, visible, n_buildings, demolished, n_waters, next_id = state
        del self.layers[n_layers:], self.buildings[n_buildings:], self.waters[n_waters:]
        self.top, self.cover, self.visible = top, cover, visible
        self.demolished, self.next_id = demolished, next_id

    def blocked(self) -> np.ndarray:
        """Pixels where nothing new may be built at either date (water, roads, buildings)."""
        return np.isin(self.cover, _OBSTACLES).any(0)

    def new_id(self) -> int:
        """A fresh building id (ids tie shadows to buildings that may be demolished)."""
        self.next_id += 1
        return self.next_id

    def texture(self, name: str) -> np.ndarray:
        """Full-frame texture of a material, shared by both dates so unchanged areas match."""
        if name not in self.textures:
            self.textures[name] = _make_texture(self, name)
        return self.textures[name]

    def render(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free RGB image of one date and its vegetation weight map."""
        canvas = np.zeros((self.size, self.size, 3), np.float32)
        for layer in self.layers:
            if epoch not in layer.epochs:
                continue
            if layer.shadows:
                shade = np.zeros((self.size, self.size), np.uint8)
                for bid, pts, height in layer.shadows:
                    if epoch == 1 and bid in self.demolished:
                        continue
                    shifted = np.round((pts + height * self.sun[epoch]) * 16).astype(np.int32)
                    cv2.fillPoly(shade, [shifted], 1, cv2.LINE_8, 4)
                canvas[shade.astype(bool)] *= _SHADOW_GAIN
            np.copyto(canvas, layer.rgb, where=layer.mask[..., None])
        return canvas, _VEGETATION[self.cover[epoch]]


def _make_texture(scene: _Scene, name: str) -> np.ndarray:
    """Draw the texture of a named material over the whole frame."""
    rng, s = scene.rng, scene.size
    fine = _noise(rng, s, max(1.0, s / 48), 1)[..., None]
    low = _noise(rng, s, s / 4, 2)[..., None]
    if name in _TINTS:
        base, low_amp, fine_amp = _TINTS[name]
        return np.asarray(base, np.float32) * (1 + low_amp * low) + fine_amp * fine
    if name == "forest":
        crowns = _noise(rng, s, max(1.0, s / 56), 2)[..., None]
        tex = np.array([46, 72, 42], np.float32) * (1 + 0.12 * low) + crowns * np.array(
            [13, 18, 10], np.float32
        )
        return np.where(crowns < -0.8, tex * 0.6, tex)
    if name.startswith("crop"):
        colour = _CROP_COLOURS[int(name[4:]) % len(_CROP_COLOURS)]
        period = max(2.0, s * rng.uniform(0.02, 0.05))
        rows = np.sin(2 * np.pi * scene.v / period)[..., None]
        return colour * (1 + 0.06 * low) + rows * rng.uniform(5, 12) + 2 * fine
    if name == "greenhouse":
        period = max(2.0, s * rng.uniform(0.025, 0.04))
        phase = np.mod(scene.u / period, 1.0)[..., None]
        sheet = np.float32(212) + 10 * np.cos(2 * np.pi * phase) + np.array([0, 4, 8], np.float32)
        return np.where(phase < 0.78, sheet + 3 * fine, np.array([140, 128, 108], np.float32))
    if name == "water":
        colour = _WATER_COLOURS[rng.integers(len(_WATER_COLOURS))]
        return (colour * (1 + 0.04 * low)).astype(np.float32)
    if name == "roof":
        return np.repeat(3 * fine, 3, axis=2)
    raise ValueError(f"unknown material '{name}'")


def _mosaic(scene: _Scene, probs: tuple[float, ...]) -> None:
    """Base layer: strips of parcels on a rotated grid, each crop, meadow, forest or soil."""
    rng, s = scene.rng, scene.size
    u, v = scene.u, scene.v
    cuts = [float(u.min()) - rng.uniform(0, 0.3 * s)]
    while cuts[-1] <= float(u.max()):
        cuts.append(cuts[-1] + s * rng.uniform(0.18, 0.5))
    scene.cuts = np.asarray(cuts)
    strip = np.clip(np.searchsorted(scene.cuts, u) - 1, 0, len(cuts) - 2)
    spacing = s * rng.uniform(0.14, 0.5, len(cuts) - 1)
    offset = rng.uniform(0, spacing)
    pos = v + offset[strip]
    row = np.floor(pos / spacing[strip]).astype(np.int64)
    keys = strip.astype(np.int64) * 100_000 + (row - row.min())
    _, inverse = np.unique(keys, return_inverse=True)
    parcels = inverse.reshape(s, s).astype(np.int32)
    n = int(parcels.max()) + 1
    kinds = rng.choice(np.array(_NATURAL, np.int8), size=n, p=probs)
    crop = rng.integers(len(_CROP_COLOURS), size=n)
    tone = rng.uniform(0.88, 1.12, size=n).astype(np.float32)
    period = np.maximum(2.0, s * rng.uniform(0.02, 0.05, size=n)).astype(np.float32)
    amp = np.where(
        kinds == Cover.CROP,
        rng.uniform(4, 13, n),
        np.where(kinds == Cover.SOIL, rng.uniform(0, 8, n), 0.0),
    ).astype(np.float32)
    along_u = rng.random(n) < 0.5
    coord = np.where(along_u[parcels], u, v)
    rows = np.sin(2 * np.pi * coord / period[parcels])[..., None] * amp[parcels][..., None]
    kind_px = kinds[parcels]
    rgb = _CROP_COLOURS[crop][parcels] * (1 + 0.05 * _noise(rng, s, s / 4))[..., None]
    for cover, name in ((Cover.GRASS, "grass"), (Cover.FOREST, "forest"), (Cover.SOIL, "soil")):
        sel = (kind_px == cover)[..., None]
        rgb = np.where(sel, scene.texture(name) * tone[parcels][..., None], rgb)
    rgb = rgb + rows
    du = np.minimum(u - scene.cuts[strip], scene.cuts[strip + 1] - u)
    dv_raw = np.mod(pos, spacing[strip])
    dv = np.minimum(dv_raw, spacing[strip] - dv_raw)
    border = (np.minimum(du, dv) < max(0.5, s * 0.006))[..., None]
    rgb = np.where(border, 0.5 * rgb + 0.5 * np.array([122, 124, 92], np.float32), rgb)
    scene.parcels, scene.parcel_cover = parcels, kinds
    scene.add(np.ones((s, s), bool), rgb.astype(np.float32), kind_px)


def _roads(scene: _Scene, count: int, epochs: tuple[int, ...] = _BOTH) -> None:
    """Roads along parcel edges (straight) or across the scene (curved)."""
    for _ in range(count):
        pts = _road_points(scene)
        thickness = max(1, round(scene.size * scene.rng.uniform(0.012, 0.028)))
        name = "asphalt" if scene.rng.random() < 0.6 else "dirt"
        mask = _line_mask(scene.size, pts, thickness)
        if epochs == _AFTER:
            scene.change(mask, scene.texture(name), Cover.ROAD)
        else:
            scene.add(mask, scene.texture(name), Cover.ROAD, epochs)


def _road_points(scene: _Scene, length: float | None = None) -> np.ndarray:
    """Centre line of a road: a grid-aligned straight line or a curve between two edges."""
    rng, s = scene.rng, scene.size
    span = 2.0 * s if length is None else length
    if rng.random() < 0.55:
        centre = np.full(2, s / 2)
        across = np.array([-scene.axis[1], scene.axis[0]])
        if rng.random() < 0.6:
            along, normal = across, scene.axis
            edges = scene.cuts - centre @ normal
            edges = edges[np.abs(edges) < 0.4 * s]
            offset = rng.choice(edges) if edges.size else rng.uniform(-0.4 * s, 0.4 * s)
        else:
            along, normal = scene.axis, across
            offset = rng.uniform(-0.4 * s, 0.4 * s)
        origin = centre + offset * normal
        start = origin - along * (rng.uniform(0, span / 2) if length else s)
        t = np.linspace(0, span, 16)[:, None]
        return start + t * along
    ends = rng.uniform(0, s, (2, 2))
    ends[0, rng.integers(2)] = -2.0
    ends[1, rng.integers(2)] = s + 2.0
    ctrl = rng.uniform(0.2 * s, 0.8 * s, 2)
    t = np.linspace(0, 1, 24)[:, None]
    curve = (1 - t) ** 2 * ends[0] + 2 * t * (1 - t) * ctrl + t**2 * ends[1]
    if length is not None:
        steps = np.linalg.norm(np.diff(curve, axis=0), axis=1)
        keep = np.searchsorted(np.cumsum(steps), length) + 2
        first = rng.integers(0, max(1, len(curve) - keep + 1))
        curve = curve[first : first + keep]
    return curve


def _buildings(
    scene: _Scene,
    centre: np.ndarray,
    count: int,
    epochs: tuple[int, ...],
    within: np.ndarray | None = None,
) -> np.ndarray:
    """A cluster of up to ``count`` gable or flat-roofed buildings on a local lattice."""
    rng, s = scene.rng, scene.size
    along = scene.axis if rng.random() < 0.5 else np.array([-scene.axis[1], scene.axis[0]])
    across = np.array([-along[1], along[0]])
    pitch = s * rng.uniform(0.07, 0.12)
    reach = int(np.ceil(np.sqrt(count))) + 1
    lots = [(i, j) for i in range(-reach, reach + 1) for j in range(-reach, reach + 1)]
    order = rng.permutation(len(lots))
    blocked = scene.blocked()
    taken = np.zeros((s, s), bool)
    rgb = scene.texture("roof").copy()
    shadows: list[tuple[int, np.ndarray, float]] = []
    placed: list[tuple[int, np.ndarray, np.ndarray]] = []
    for k in order:
        if len(placed) >= count:
            break
        i, j = lots[k]
        c = centre + i * pitch * along + j * pitch * across + rng.normal(0, 0.08 * pitch, 2)
        length, width = pitch * rng.uniform(0.55, 0.95), pitch * rng.uniform(0.4, 0.7)
        if rng.random() < 0.15:
            length, width = length * 1.6, width * 1.4
        pts = _rect(c, along if rng.random() < 0.7 else across, max(length, 2.0), max(width, 2.0))
        mask = _poly_mask(s, pts)
        if not mask.any() or (mask & (blocked | taken)).any():
            continue
        if within is not None and (mask & ~within).any():
            continue
        colour = _roof_colour(scene, mask, epochs)
        if rng.random() < 0.7:
            ridge = (pts[0] + pts[3]) / 2, (pts[1] + pts[2]) / 2
            half_a = np.stack([pts[0], pts[1], ridge[1], ridge[0]])
            half_b = np.stack([ridge[0], ridge[1], pts[2], pts[3]])
            for half, gain in ((half_a, 1.12), (half_b, 0.84)):
                fill = np.zeros((s, s), np.uint8)
                cv2.fillPoly(fill, [np.round(half * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
                rgb[fill.astype(bool) & mask] += colour * gain
        else:
            rgb[mask] += colour
        taken |= mask
        bid = scene.new_id()
        height = s * rng.uniform(0.008, 0.022) * (2.5 if rng.random() < 0.1 else 1.0)
        shadows.append((bid, pts, height))
        placed.append((bid, pts, mask))
    if taken.any():
        scene.add(taken, rgb, Cover.BUILDING, epochs, shadows)
        if epochs == _BOTH:
            scene.buildings.extend(placed)
    return taken


def _roof_colour(scene: _Scene, mask: np.ndarray, epochs: tuple[int, ...]) -> np.ndarray:
    """Roof colour; a new building gets the one of three candidates that stands out most."""
    rng = scene.rng
    picks = _ROOF_COLOURS[rng.choice(len(_ROOF_COLOURS), 3, replace=False)]
    picks = picks * rng.uniform(0.9, 1.1, (3, 1)).astype(np.float32)
    if epochs != _AFTER:
        return picks[0]
    under = scene.visible[0][mask].mean(0)
    return picks[np.argmax(np.abs(picks - under).sum(1))]


def _build_scene(scene: _Scene, greenfield: bool) -> None:
    """Lay out the unchanged landscape: parcels, forest, water, roads, settlements."""
    rng, s = scene.rng, scene.size
    weights = np.array([t.weight for t in _SCENE_TYPES])
    kind = _SCENE_TYPES[rng.choice(len(_SCENE_TYPES), p=weights / weights.sum())]
    if greenfield:
        _mosaic(scene, (0.6, 0.2, 0.2, 0.0))
        return
    _mosaic(scene, kind.parcels)
    if rng.random() < kind.p_forest:
        for _ in range(rng.integers(1, 3)):
            blob = _Blob.random(rng, rng.uniform(0, s, 2), s * rng.uniform(0.1, 0.3), 0.45)
            scene.add(_poly_mask(s, blob.points()), scene.texture("forest"), Cover.FOREST)
    if rng.random() < kind.p_water:
        if rng.random() < 0.65:
            blob = _Blob.random(rng, rng.uniform(0.15 * s, 0.85 * s, 2), s * rng.uniform(0.1, 0.28))
            scene.add(_poly_mask(s, blob.points()), scene.texture("water"), Cover.WATER)
            scene.waters.append(blob)
        else:
            width = max(2, round(s * rng.uniform(0.05, 0.12)))
            mask = _line_mask(s, _road_points(scene), width)
            scene.add(mask, scene.texture("water"), Cover.WATER)
    _roads(scene, int(rng.integers(kind.roads[0], kind.roads[1] + 1)))
    for _ in range(int(rng.integers(kind.clusters[0], kind.clusters[1] + 1))):
        centre = rng.uniform(0.1 * s, 0.9 * s, 2)
        if rng.random() < 0.3:
            yard = _rect(
                centre, scene.axis, s * rng.uniform(0.15, 0.35), s * rng.uniform(0.1, 0.25)
            )
            yard_mask = _poly_mask(s, yard) & ~scene.blocked()
            scene.add(yard_mask, scene.texture("paved"), Cover.PAVED)
        count = int(rng.integers(kind.per_cluster[0], kind.per_cluster[1] + 1))
        _buildings(scene, centre, count, _BOTH)


_TRANSITIONS: dict[int, tuple[tuple[str, int, float], ...]] = {
    Cover.CROP: (
        ("soil", Cover.SOIL, 0.3),
        ("greenhouse", Cover.GREENHOUSE, 0.25),
        ("construction", Cover.SOIL, 0.2),
        ("paved", Cover.PAVED, 0.1),
        ("grass", Cover.GRASS, 0.1),
        ("water", Cover.WATER, 0.05),
    ),
    Cover.FOREST: (
        ("soil", Cover.SOIL, 0.35),
        ("crop", Cover.CROP, 0.35),
        ("construction", Cover.SOIL, 0.2),
        ("grass", Cover.GRASS, 0.1),
    ),
    Cover.GRASS: (
        ("soil", Cover.SOIL, 0.3),
        ("crop", Cover.CROP, 0.3),
        ("construction", Cover.SOIL, 0.2),
        ("greenhouse", Cover.GREENHOUSE, 0.1),
        ("paved", Cover.PAVED, 0.1),
    ),
    Cover.SOIL: (
        ("crop", Cover.CROP, 0.4),
        ("grass", Cover.GRASS, 0.2),
        ("paved", Cover.PAVED, 0.2),
        ("greenhouse", Cover.GREENHOUSE, 0.2),
    ),
}


def _pick_transition(scene: _Scene, mask: np.ndarray) -> tuple[str, int]:
    """Material and cover to convert a region to, given its dominant current cover."""
    rng = scene.rng
    counts = np.bincount(scene.cover[1][mask].astype(np.int64), minlength=len(Cover))
    dominant = int(np.argmax(counts))
    options = _TRANSITIONS.get(dominant, _TRANSITIONS[Cover.GRASS])
    probs = np.array([o[2] for o in options])
    name, cover, _ = options[rng.choice(len(options), p=probs / probs.sum())]
    if name == "crop":
        name = f"crop{rng.integers(len(_CROP_COLOURS))}"
    return name, cover


def _natural_point(scene: _Scene, tries: int = 12) -> np.ndarray:
    """A random point whose current cover is natural land, if one is found quickly."""
    s = scene.size
    point = scene.rng.uniform(0, s, 2)
    for _ in range(tries):
        x, y = np.clip(point.astype(int), 0, s - 1)
        if scene.cover[1][y, x] in _NATURAL:
            break
        point = scene.rng.uniform(0, s, 2)
    return point


def _chg_new_buildings(scene: _Scene, budget: float) -> None:
    """New buildings, sometimes on a construction pad that was already cleared."""
    rng, s = scene.rng, scene.size
    mean_area = (s * 0.095) ** 2 * 0.45
    count = int(np.clip(round(budget / mean_area), 1, 14))
    centre = _natural_point(scene)
    if rng.random() < 0.4:
        pad = _Blob.random(rng, centre, np.sqrt(budget * 1.5 / np.pi) + 1, 0.2)
        pad_mask = _poly_mask(s, pad.points()) & ~scene.blocked() & ~scene.label()
        if pad_mask.any():
            scene.add(pad_mask, scene.texture("construction"), Cover.SOIL)
    _buildings(scene, centre, count, _AFTER)


def _chg_demolish(scene: _Scene, budget: float) -> None:
    """A standing building is torn down, leaving rubble, a cleared plot or grass."""
    standing = [b for b in scene.buildings if b[0] not in scene.demolished]
    if not standing:
        _chg_new_buildings(scene, budget)
        return
    areas = np.array([b[2].sum() for b in standing], np.float64)
    fits = np.flatnonzero(areas <= budget * 1.5)
    pick = scene.rng.choice(fits) if fits.size else int(np.argmin(areas))
    bid, _, mask = standing[pick]
    name = ("rubble", "construction", "grass")[scene.rng.integers(3)]
    scene.change(mask, scene.texture(name), Cover.GRASS if name == "grass" else Cover.SOIL)
    scene.demolished.add(bid)


def _chg_convert(scene: _Scene, budget: float) -> None:
    """Land-cover conversion of a whole parcel when one fits the budget, else of a patch."""
    rng, s = scene.rng, scene.size
    base = scene.top[0] == 0
    areas = np.bincount(
        scene.parcels[base & (scene.top[1] == 0)], minlength=len(scene.parcel_cover)
    )
    fits = np.flatnonzero((areas >= 0.3 * budget) & (areas <= 1.2 * budget))
    if fits.size and rng.random() < 0.6:
        mask = (scene.parcels == rng.choice(fits)) & base
    else:
        blob = _Blob.random(rng, _natural_point(scene), np.sqrt(budget / np.pi) + 0.5, 0.4)
        mask = _poly_mask(s, blob.points()) & np.isin(scene.cover[1], _NATURAL)
    if mask.any():
        name, cover = _pick_transition(scene, mask)
        scene.change(mask, scene.texture(name), cover)


def _chg_water(scene: _Scene, budget: float) -> None:
    """A lake grows or retreats, or a new pond appears."""
    rng, s = scene.rng, scene.size
    if scene.waters and rng.random() < 0.75:
        blob = scene.waters[rng.integers(len(scene.waters))]
        area = np.pi * blob.radius**2
        if rng.random() < 0.5:
            grown = _poly_mask(s, blob.points(np.sqrt(1 + budget / area))) & ~scene.blocked()
            scene.change(grown, scene.texture("water"), Cover.WATER)
        else:
            shrunk = _poly_mask(s, blob.points(np.sqrt(max(0.1, 1 - budget / area))))
            exposed = (scene.cover[0] == Cover.WATER) & (scene.cover[1] == Cover.WATER) & ~shrunk
            exposed &= _poly_mask(s, blob.points(1.05))
            name = "mud" if rng.random() < 0.5 else "grass"
            scene.change(
                exposed, scene.texture(name), Cover.GRASS if name == "grass" else Cover.SOIL
            )
        return
    side = np.sqrt(budget)
    aspect = rng.uniform(1.0, 2.2)
    blocked = scene.blocked()
    for _ in range(6):
        pts = _rect(
            _natural_point(scene), scene.axis, side * np.sqrt(aspect), side / np.sqrt(aspect)
        )
        pond = _poly_mask(s, pts)
        if not (pond & blocked).any():
            scene.change(pond, scene.texture("water"), Cover.WATER)
            return


def _chg_harden(scene: _Scene, budget: float) -> None:
    """Soil, meadow or field sealed with concrete or asphalt."""
    rng, s = scene.rng, scene.size
    side = np.sqrt(budget)
    aspect = rng.uniform(1.0, 3.0)
    along = scene.axis if rng.random() < 0.7 else rng.normal(size=2)
    along = along / np.linalg.norm(along)
    pts = _rect(_natural_point(scene), along, side * np.sqrt(aspect), side / np.sqrt(aspect))
    mask = _poly_mask(s, pts) & np.isin(scene.cover[1], _NATURAL)
    name = "paved" if rng.random() < 0.6 else "asphalt"
    scene.change(mask, scene.texture(name), Cover.PAVED)


def _chg_road(scene: _Scene, budget: float) -> None:
    """A new asphalt road segment of about ``budget`` pixels."""
    rng, s = scene.rng, scene.size
    thickness = max(1, round(s * rng.uniform(0.012, 0.03)))
    pts = _road_points(scene, length=max(4.0, budget / thickness))
    mask = (
        _line_mask(s, pts, thickness) & ~scene.blocked() & ~np.isin(scene.cover, Cover.PAVED).any(0)
    )
    scene.change(mask, scene.texture("asphalt"), Cover.ROAD)


def _chg_develop(scene: _Scene, budget: float) -> None:
    """A new development: a cleared or paved zone, usually with new buildings on it."""
    rng, s = scene.rng, scene.size
    blob = _Blob.random(rng, _natural_point(scene), np.sqrt(budget / np.pi) + 1, 0.25)
    zone = _poly_mask(s, blob.points()) & ~scene.blocked()
    name = "construction" if rng.random() < 0.6 else "paved"
    scene.change(zone, scene.texture(name), Cover.SOIL if name == "construction" else Cover.PAVED)
    if rng.random() < 0.7:
        count = int(np.clip(zone.sum() / ((s * 0.1) ** 2), 1, 24))
        _buildings(scene, blob.centre, count, _AFTER, within=zone)


def _full_change(scene: _Scene) -> None:
    """Every pixel changes: fields and woods become a construction site or greenhouses."""
    rng, s = scene.rng, scene.size
    everything = np.ones((s, s), bool)
    if rng.random() < 0.35:
        scene.change(everything, scene.texture("greenhouse"), Cover.GREENHOUSE)
        return
    scene.change(everything, scene.texture("construction"), Cover.SOIL)
    _roads(scene, int(rng.integers(1, 3)), _AFTER)
    for _ in range(int(rng.integers(1, 4))):
        _buildings(scene, rng.uniform(0.15 * s, 0.85 * s, 2), int(rng.integers(4, 14)), _AFTER)


_SMALL = (
    (_chg_new_buildings, 0.3),
    (_chg_demolish, 0.15),
    (_chg_road, 0.15),
    (_chg_harden, 0.15),
    (_chg_convert, 0.15),
    (_chg_water, 0.1),
)
_MEDIUM = (
    (_chg_new_buildings, 0.2),
    (_chg_demolish, 0.05),
    (_chg_road, 0.1),
    (_chg_harden, 0.15),
    (_chg_convert, 0.3),
    (_chg_water, 0.1),
    (_chg_develop, 0.1),
)
_LARGE = ((_chg_convert, 0.4), (_chg_develop, 0.3), (_chg_water, 0.15), (_chg_new_buildings, 0.15))


def _place_changes(scene: _Scene, target: float) -> None:
    """Add change objects until the CAR approaches ``target`` without leaving its bucket."""
    rng = scene.rng
    total = scene.size**2
    bucket = int(bucket_of(target, CAR_THRESHOLDS))
    bounds = (0.0, *CAR_THRESHOLDS, 1.0)
    low, high = bounds[bucket], bounds[bucket + 1]
    car = 0.0
    for _ in range(80):
        if car > low and car >= 0.85 * target:
            break
        need = max(1.0, (target - car) * total)
        fraction = need / total
        menu = _SMALL if fraction < 0.02 else _MEDIUM if fraction < 0.12 else _LARGE
        probs = np.array([w for _, w in menu])
        placer = menu[rng.choice(len(menu), p=probs / probs.sum())][0]
        budget = need * rng.uniform(0.5, 1.0) if fraction >= 0.02 else need * rng.uniform(0.6, 1.2)
        state = scene.snapshot()
        placer(scene, max(budget, 1.0))
        new_car = float(scene.label().mean())
        if new_car <= car or new_car > high:
            scene.restore(state)
        else:
            car = new_car


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


def make_pair(rng: np.random.Generator, size: int, target_car: float) -> SyntheticPair:
    """Generate one image pair of ``size`` px whose change area ratio lands near ``target_car``.

    The realised CAR falls in the same partition bucket as ``target_car`` (retrying the
    layout a few times if needed); 0 gives a pair with nuisance differences only and 1 a pair
    where every pixel changes.
    """
    want = int(bucket_of(target_car, CAR_THRESHOLDS))
    for _ in range(4):
        scene = _Scene(rng, size)
        full = target_car >= 0.999
        _build_scene(scene, greenfield=full)
        if full:
            _full_change(scene)
        elif target_car > 0:
            _place_changes(scene, target_car)
        mask = scene.label()
        car = float(mask.mean())
        if (car > 0) == (target_car > 0) and int(bucket_of(car, CAR_THRESHOLDS)) == want:
            break
    images = []
    for epoch in (0, 1):
        canvas, vegetation = scene.render(epoch)
        images.append(_photometry(rng, canvas, vegetation, shift=epoch == 1))
    return SyntheticPair(images[0], images[1], mask)


def _write_png(path: Path, array: np.ndarray) -> None:
    """Encode an RGB or single-channel uint8 array as PNG."""
    data = array[..., ::-1] if array.ndim == 3 else array
    if not cv2.imwrite(str(path), np.ascontiguousarray(data), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise DataError(f"{path}: could not write PNG")


def _split_key(split: str) -> int:
    """Stable integer for a split name, part of every seed drawn for that split."""
    return zlib.crc32(split.encode("utf-8"))


#: File naming schemes: ``padded`` (``0000.png``, ``0001.png``, ...) or ``natural``
#: (``1.png`` ... ``N.png``, as JL1-CD names its pairs).
NAMINGS = ("padded", "natural")


def _file_names(count: int, naming: str = "padded") -> list[str]:
    """The file names of one split's ``count`` pairs under ``naming`` (see :data:`NAMINGS`)."""
    if naming == "natural":
        return [f"{i}.png" for i in range(1, count + 1)]
    width = max(4, len(str(max(count - 1, 0))))
    return [f"{i:0{width}d}.png" for i in range(count)]


def _parameters(
    counts: Mapping[str, int], size: int, seed: int, naming: str = "padded"
) -> dict[str, Any]:
    """Validated generation parameters, as recorded in the manifest."""
    if naming not in NAMINGS:
        raise ConfigError(f"synthetic data: naming must be one of {NAMINGS}, got {naming!r}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < MIN_SIZE:
        raise ConfigError(f"synthetic data: size must be an integer >= {MIN_SIZE}, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"synthetic data: seed must be a non-negative integer, got {seed!r}")
    if not counts:
        raise ConfigError("synthetic data: counts must name at least one split")
    clean: dict[str, int] = {}
    for split, count in counts.items():
        if (
            not isinstance(split, str)
            or not split
            or split.startswith(".")
            or (Path(split).name != split or split == MANIFEST_NAME)
        ):
            raise ConfigError(f"synthetic data: split name {split!r} is not a plain folder name")
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise ConfigError(
                f"synthetic data: count of split '{split}' must be >= 0, got {count!r}"
            )
        clean[split] = int(count)
    params = {
        "generator": "cdkd.synthetic",
        "version": GENERATOR_VERSION,
        "size": int(size),
        "seed": int(seed),
        "counts": clean,
    }
    if naming != "padded":  # manifests of padded datasets stay as they were written before
        params["naming"] = naming
    return params


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """Parameters recorded in ``root``, or None when absent or unreadable."""
    try:
        data = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(root: Path, params: dict[str, Any]) -> bool:
    """Whether ``root`` already holds every file of a dataset made with ``params``."""
    if _read_manifest(root) != params:
        return False
    for split, count in params["counts"].items():
        expected = set(_file_names(count, params.get("naming", "padded")))
        for folder in FOLDERS:
            try:
                present = set(os.listdir(root / split / folder))
            except OSError:
                return False
            if not expected <= present:
                return False
    return True


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier synthetic dataset."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(
            f"{root}: exists and is not a folder; cannot write a synthetic dataset there"
        )
    if (root / MANIFEST_NAME).is_file() or not any(root.iterdir()):
        return
    raise DataError(
        f"{root}: folder exists and is not a synthetic dataset (no {MANIFEST_NAME}); "
        "refusing to replace it"
    )


def _swap_in(staging: Path, root: Path, params: dict[str, Any]) -> None:
    """Move a finished dataset onto ``root`` with folder renames, replacing an older one.

    If another process put the same dataset in place meanwhile, that one is kept.
    """
    retired = None
    if root.exists():
        if _is_complete(root, params):
            return
        retired = staging.with_suffix(".old")
        os.rename(root, retired)
    try:
        os.rename(staging, root)
    except OSError:
        if _is_complete(root, params):
            return
        if retired is not None and not root.exists():
            os.rename(retired, root)
            retired = None
        raise
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def generate_dataset(
    root: str | Path,
    counts: Mapping[str, int],
    size: int = 64,
    seed: int = 0,
    progress: bool = True,
    naming: str = "padded",
) -> Path:
    """Write a synthetic change-detection dataset to ``root/{split}/{A,B,label}/NNNN.png``.

    Images are RGB PNGs and labels single-channel 0/255 PNGs with the same file names. The
    output is a pure function of ``(counts, size, seed)``: each split and each image draws from
    its own seed, so changing one split's count leaves the other splits' files unchanged.
    If ``root`` already holds a complete dataset with these parameters (``root/synthetic.json``)
    nothing is written. Otherwise the dataset is built in a hidden folder beside ``root`` and
    renamed into place at the end, so an interrupted run never leaves a partial dataset.

    Args:
        root: Dataset folder; may exist only if empty or holding an earlier synthetic dataset.
        counts: Number of pairs per split, e.g. ``{"train": 96, "val": 24, "test": 24}``.
        size: Side of the square images in pixels.
        seed: Base seed of every random draw.
        progress: Show a progress bar while generating.
        naming: ``padded`` file names (``0000.png`` ...) or ``natural`` ones (``1.png`` ...
            ``N.png`` in every split, JL1-CD's naming).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    params = _parameters(counts, size, seed, naming)
    if _is_complete(root, params):
        return root
    _check_replaceable(root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = root.parent / f".{root.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
        staging.mkdir()
    except OSError as exc:
        raise DataError(f"{root}: cannot create the synthetic dataset here ({exc})") from exc
    try:
        total = sum(params["counts"].values())
        columns = (
            TextColumn("[bold]synthetic data"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task("generate", total=total)
            for split, count in params["counts"].items():
                _write_split(
                    staging / split,
                    split,
                    _file_names(count, naming),
                    params["size"],
                    params["seed"],
                    lambda: bar.advance(task),
                )
        (staging / MANIFEST_NAME).write_text(json.dumps(params, indent=2) + "\n", "utf-8")
        _swap_in(staging, root, params)
    except OSError as exc:
        raise DataError(f"{root}: writing the synthetic dataset failed ({exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _write_split(
    folder: Path, split: str, names: list[str], size: int, seed: int, tick: Callable[[], None]
) -> None:
    """Generate and write every pair of one split, the i-th pair under ``names[i]``."""
    for name in FOLDERS:
        (folder / name).mkdir(parents=True)
    key = _split_key(split)
    targets = target_cars(
        len(names), np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, 0)))
    )
    for index, (file_name, target) in enumerate(zip(names, targets, strict=True)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, 1, index)))
        pair = make_pair(rng, size, float(target))
        _write_png(folder / "A" / file_name, pair.image1)
        _write_png(folder / "B" / file_name, pair.image2)
        _write_png(folder / "label" / file_name, pair.mask.astype(np.uint8) * 255)
        tick()
