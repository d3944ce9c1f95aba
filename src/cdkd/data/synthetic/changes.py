"""Change targets (CAR) and the change operators that edit the second date of a scene."""

from __future__ import annotations

import numpy as np

from cdkd.data.synthetic.palette import (
    _AFTER,
    _CROP_COLOURS,
    _NATURAL,
    Cover,
    _line_mask,
    _poly_mask,
    _rect,
)
from cdkd.data.synthetic.scene import _Blob, _buildings, _road_points, _roads, _Scene
from cdkd.partition import SCHEMES, bucket_of

CAR_THRESHOLDS: tuple[float, ...] = SCHEMES["three"][0]
CAR_MIX: tuple[float, ...] = (0.125, 0.60, 0.175, 0.10)
"""Share of images with no change, CAR in (0, 5 %], (5 %, 20 %] and above 20 %."""


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
