"""One landscape at two dates: its layers of land cover, their textures, and the layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from cdkd.data.synthetic.palette import (
    _AFTER,
    _BOTH,
    _CROP_COLOURS,
    _NATURAL,
    _OBSTACLES,
    _ROOF_COLOURS,
    _SCENE_TYPES,
    _SHADOW_GAIN,
    _TINTS,
    _VEGETATION,
    _WATER_COLOURS,
    Cover,
    _line_mask,
    _noise,
    _poly_mask,
    _rect,
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
        vertices: np.ndarray = self.centre + np.stack([r * np.cos(angles), r * np.sin(angles)], 1)
        return vertices


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
        changed: np.ndarray = self.top[0] != self.top[1]
        return changed

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
        return np.isin(self.cover[0], _OBSTACLES) | np.isin(self.cover[1], _OBSTACLES)

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
        forest: np.ndarray = np.where(crowns < -0.8, tex * 0.6, tex)
        return forest
    if name.startswith("crop"):
        colour = _CROP_COLOURS[int(name[4:]) % len(_CROP_COLOURS)]
        period = max(2.0, s * rng.uniform(0.02, 0.05))
        rows = np.sin(2 * np.pi * scene.v / period)[..., None]
        crop: np.ndarray = colour * (1 + 0.06 * low) + rows * rng.uniform(5, 12) + 2 * fine
        return crop
    if name == "greenhouse":
        period = max(2.0, s * rng.uniform(0.025, 0.04))
        phase = np.mod(scene.u / period, 1.0)[..., None]
        sheet = np.float32(212) + 10 * np.cos(2 * np.pi * phase) + np.array([0, 4, 8], np.float32)
        return np.where(phase < 0.78, sheet + 3 * fine, np.array([140, 128, 108], np.float32))
    if name == "water":
        water: np.ndarray = _WATER_COLOURS[rng.integers(len(_WATER_COLOURS))]
        return (water * (1 + 0.04 * low)).astype(np.float32)
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
        straight: np.ndarray = start + t * along
        return straight
    ends = rng.uniform(0, s, (2, 2))
    ends[0, rng.integers(2)] = -2.0
    ends[1, rng.integers(2)] = s + 2.0
    ctrl = rng.uniform(0.2 * s, 0.8 * s, 2)
    t = np.linspace(0, 1, 24)[:, None]
    curve: np.ndarray = (1 - t) ** 2 * ends[0] + 2 * t * (1 - t) * ctrl + t**2 * ends[1]
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
    picks: np.ndarray = _ROOF_COLOURS[rng.choice(len(_ROOF_COLOURS), 3, replace=False)]
    picks = picks * rng.uniform(0.9, 1.1, (3, 1)).astype(np.float32)
    if epochs != _AFTER:
        chosen: np.ndarray = picks[0]
    else:
        under = scene.visible[0][mask].mean(0)
        chosen = picks[np.argmax(np.abs(picks - under).sum(1))]
    return chosen


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
