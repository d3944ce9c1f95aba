"""One synthetic image pair: a scene, its changes and the photometry of each date."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cdkd.data.synthetic.changes import CAR_THRESHOLDS, _full_change, _place_changes
from cdkd.data.synthetic.nuisance import _photometry
from cdkd.data.synthetic.scene import _build_scene, _Scene
from cdkd.partition import bucket_of


class SyntheticPair(NamedTuple):
    """One generated sample: two RGB dates and the boolean change mask."""

    image1: np.ndarray
    image2: np.ndarray
    mask: np.ndarray


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
