"""Pair augmentation: shared geometry, ignore padding, per-date photometry, time exchange."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdkd.data import PairAugment, PhotoMetricDistortion, build_augmentation
from cdkd.errors import ConfigError
from cdkd.partition import change_area_ratio


def _pattern(size: int = 32) -> np.ndarray:
    """An asymmetric 0/1 pattern: every flip and rotation of it is distinguishable."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[2:10, 2:20] = 1
    mask[10:26, 2:6] = 1
    mask[20:24, 24:28] = 1
    return mask


def _as_image(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)


def _flips(mask: np.ndarray) -> dict[str, np.ndarray]:
    return {"id": mask, "h": mask[:, ::-1], "v": mask[::-1], "hv": mask[::-1, ::-1]}


@pytest.mark.parametrize("recipe", ["standard", "changer"])
def test_rotation_padding_is_ignored_never_change(recipe: str) -> None:
    aug = build_augmentation(recipe)
    image = np.full((32, 32, 3), 128, dtype=np.uint8)
    padded = 0
    for seed in range(24):
        for fill in (0, 1):
            label = np.full((32, 32), fill, dtype=np.uint8)
            _, _, mask = aug(image, image.copy(), label, key=(seed, fill))
            assert set(np.unique(mask).tolist()) <= {fill, 255}
            padded += int((mask == 255).any())
            car = change_area_ratio(torch.from_numpy(mask.astype(np.int64)))
            assert car.item() == float(fill)
    assert padded > 0


@pytest.mark.parametrize("recipe", ["standard", "changer"])
def test_geometry_is_identical_for_both_dates_and_the_label(recipe: str) -> None:
    geometric = PairAugment(geometric=build_augmentation(recipe).geometric)
    pattern = _pattern()
    changed_something = False
    for seed in range(24):
        image = _as_image(pattern)
        out1, out2, mask = geometric(image, image.copy(), pattern.copy(), key=(seed,))
        np.testing.assert_array_equal(out1, out2)
        valid = mask != 255
        agree = ((out1[..., 0] > 127) == (mask == 1))[valid].mean()
        if np.isin(out1, (0, 255)).all():
            # No interpolation happened (flips, quarter turns): pixels moved exactly together.
            assert agree == 1.0
        else:
            # Rotation: bilinear images against a nearest-neighbour label differ only at edges.
            assert agree > 0.9
        changed_something |= not np.array_equal(mask, pattern)
    assert changed_something


def test_standard_recipe_draws_its_flips_independently() -> None:
    geometric = PairAugment(geometric=build_augmentation("standard").geometric)
    pattern = _pattern()
    seen = set()
    for draw in range(64):
        image = _as_image(pattern)
        _, _, mask = geometric(image, image.copy(), pattern.copy(), key=(0, draw))
        seen |= {key for key, flipped in _flips(pattern).items() if np.array_equal(mask, flipped)}
    assert seen == {"id", "h", "v", "hv"}


def test_changer_flip_branch_turns_and_flips_exactly() -> None:
    geometric = PairAugment(geometric=build_augmentation("changer").geometric)
    pattern = _pattern()
    turned = [np.rot90(pattern, k) for k in range(4)]
    reflections = [np.flip(t, axis) for t in turned for axis in (0, 1)]
    kinds = set()
    for draw in range(48):
        image = _as_image(pattern)
        _, _, mask = geometric(image, image.copy(), pattern.copy(), key=(1, draw))
        if np.array_equal(mask, pattern):
            kinds.add("none")
        elif any(np.array_equal(mask, r) for r in reflections):
            kinds.add("reflection")
        else:
            assert (mask == 255).any(), "anything else must be a small rotation"
            kinds.add("rotation")
    assert kinds == {"none", "reflection", "rotation"}


def test_photometric_distortion_is_drawn_per_date() -> None:
    aug = build_augmentation("standard")
    photometric_only = PairAugment(photometric=aug.photometric)
    image = np.random.default_rng(0).integers(60, 200, (16, 16, 3), dtype=np.uint8)
    differs = 0
    for draw in range(16):
        label = np.zeros((16, 16), np.uint8)
        out1, out2, _ = photometric_only(image, image.copy(), label, key=(0, draw))
        differs += int(not np.array_equal(out1, out2))
    assert differs >= 8


def test_time_exchange_swaps_the_dates() -> None:
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    b = np.full((8, 8, 3), 9, dtype=np.uint8)
    mask = np.eye(8, dtype=np.uint8)
    out1, out2, out_mask = PairAugment(exchange_p=1.0)(a, b, mask)
    assert out1 is b and out2 is a and out_mask is mask
    assert build_augmentation("changer").exchange_p == 0.5
    assert build_augmentation("standard").exchange_p == 0.0
    swapper = PairAugment(exchange_p=0.5)
    swaps = [swapper(a, b, mask, key=(3, draw))[0] is b for draw in range(40)]
    assert 0 < sum(swaps) < 40


def test_seeding_follows_torch_seed() -> None:
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = _pattern(16)

    def run(seed: int) -> list[np.ndarray]:
        torch.manual_seed(seed)
        aug = build_augmentation("changer")
        return [np.concatenate([o.ravel() for o in aug(image, image, mask)]) for _ in range(4)]

    first, again, other = run(5), run(5), run(6)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


def test_photometric_steps_follow_mmseg_arithmetic() -> None:
    t = PhotoMetricDistortion()
    gray = np.full((2, 2, 3), 250, dtype=np.uint8)
    assert (t.apply(gray, brightness=10.0) == 255).all()
    assert (t.apply(gray, brightness=-7.5) == 242).all()
    mid = np.full((2, 2, 3), 100, dtype=np.uint8)
    assert (t.apply(mid, contrast=1.2) == 120).all()
    red = np.zeros((1, 1, 3), dtype=np.uint8)
    red[..., 0] = 255
    # OpenCV hue is in half degrees: +60 turns red (0 deg) into green (120 deg).
    np.testing.assert_array_equal(t.apply(red, hue=60)[0, 0], [0, 255, 0])
    np.testing.assert_array_equal(t.apply(red, hue=-60)[0, 0], [0, 0, 255])
    np.testing.assert_array_equal(t.apply(red, saturation=0.0)[0, 0], [255, 255, 255])
    untouched = t.apply(mid)
    np.testing.assert_array_equal(untouched, mid)


def test_photometric_parameters_stay_in_range_and_fire_half_the_time() -> None:
    t = PhotoMetricDistortion()
    t.set_random_seed(0)
    draws = [t.get_params() for _ in range(2000)]
    for key, low, high in (
        ("brightness", -10, 10),
        ("contrast", 0.8, 1.2),
        ("saturation", 0.8, 1.2),
        ("hue", -10, 9),
    ):
        values = [d[key] for d in draws if d[key] is not None]
        assert 0.45 < len(values) / len(draws) < 0.55
        assert low <= min(values) and max(values) <= high
    assert all(isinstance(d["hue"], int) for d in draws if d["hue"] is not None)
    assert 0.45 < np.mean([d["contrast_first"] for d in draws]) < 0.55


def test_crop_and_unknown_recipe() -> None:
    aug = build_augmentation("none", crop_size=16)
    image = np.zeros((32, 24, 3), dtype=np.uint8)
    out1, out2, mask = aug(image, image, np.zeros((32, 24), dtype=np.uint8))
    assert out1.shape == out2.shape == (16, 16, 3)
    assert mask.shape == (16, 16)
    _, _, padded = build_augmentation("none", crop_size=40)(
        image, image, np.zeros((32, 24), dtype=np.uint8)
    )
    assert padded.shape == (40, 40)
    assert (padded == 255).sum() == 40 * 40 - 32 * 24
    assert build_augmentation("none") is None
    with pytest.raises(ConfigError, match="unknown augmentation 'flipflop'"):
        build_augmentation("flipflop")


def test_a_key_fixes_the_draw_and_keyless_calls_continue_a_sequence() -> None:
    augment = build_augmentation("changer")
    rng = np.random.default_rng(0)
    image1, image2 = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    mask = rng.integers(0, 2, (16, 16), dtype=np.uint8)

    def flat(key: tuple[int, ...] | None) -> np.ndarray:
        return np.concatenate([a.ravel() for a in augment(image1, image2, mask, key)])

    keyed = [flat((7, 0, position)) for position in range(6)]
    assert all(np.array_equal(flat((7, 0, p)), out) for p, out in enumerate(keyed))
    assert len({out.tobytes() for out in keyed}) > 1
    sequence = [flat(None) for _ in range(4)]
    assert len({out.tobytes() for out in sequence}) > 1
    assert np.array_equal(flat((7, 0, 3)), keyed[3])  # keyless calls leave keyed draws alone
