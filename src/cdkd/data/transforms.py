"""Training augmentation for image pairs, built on albumentations.

Geometric transforms draw one set of parameters per pair and apply it to both dates and the
label, so pixels stay aligned. Photometric distortion is drawn independently for each date, as
in Open-CD's multi-image pipelines: the two acquisitions differ in illumination anyway, and the
model must not learn to call every radiometric difference a change. Label pixels uncovered by
rotation or crop padding are set to the ignore index, so they never count as change.

Recipes (``augment``):

* ``standard``: the JL1-CD recipe of the paper (Open-CD ``standard_512x512_200k``): rotation by
  U(-180, 180) degrees with p 0.5, horizontal flip p 0.5, vertical flip p 0.5, then
  photometric distortion.
* ``changer``: Changer's recipe: with p 0.5 a rotation by U(-20, 20) degrees, otherwise with
  p 0.5 a random multiple of 90 degrees followed by a flip along a random axis; then the two
  dates are exchanged with p 0.5, then photometric distortion.
* ``none``: no augmentation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal, get_args

import albumentations as A
import cv2
import numpy as np
import torch

from cdkd.errors import ConfigError
from cdkd.partition import IGNORE_INDEX

#: The training augmentation recipes (``data.augment``).
Augmentation = Literal["standard", "changer", "none"]
AUGMENTATIONS: tuple[Augmentation, ...] = get_args(Augmentation)


# albumentations ships no type information, so its classes are Any to mypy.
class PhotoMetricDistortion(A.ImageOnlyTransform):  # type: ignore[misc]
    """mmseg's photometric distortion of a uint8 RGB image.

    Steps, each applied with probability 0.5: brightness (add U(-delta, delta)), contrast
    (multiply by U(lower, upper)), saturation (scale the HSV S channel), hue (shift the OpenCV
    HSV hue, 0-179, by a random integer in [-delta, delta) modulo 180). Contrast runs either
    right after brightness or after hue, chosen at random. Values are clipped to 0-255 and
    truncated to uint8 after every step, as mmseg does.

    Args:
        brightness_delta: Largest brightness offset, in 0-255 units.
        contrast_range: Range of the contrast factor.
        saturation_range: Range of the saturation factor.
        hue_delta: Largest hue shift, in OpenCV hue units (half degrees).
        p: Probability of running the distortion at all.
    """

    class InitSchema(A.ImageOnlyTransform.InitSchema):  # type: ignore[misc]
        brightness_delta: float
        contrast_range: tuple[float, float]
        saturation_range: tuple[float, float]
        hue_delta: int

    def __init__(
        self,
        brightness_delta: float = 10,
        contrast_range: tuple[float, float] = (0.8, 1.2),
        saturation_range: tuple[float, float] = (0.8, 1.2),
        hue_delta: int = 10,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def get_params(self) -> dict[str, Any]:
        """Draw which steps run and their strengths."""
        rnd = self.py_random

        def maybe(value: Any) -> Any:
            return value if rnd.random() < 0.5 else None

        return {
            "brightness": maybe(rnd.uniform(-self.brightness_delta, self.brightness_delta)),
            "contrast_first": rnd.random() < 0.5,
            "contrast": maybe(rnd.uniform(*self.contrast_range)),
            "saturation": maybe(rnd.uniform(*self.saturation_range)),
            "hue": maybe(rnd.randrange(-self.hue_delta, self.hue_delta)),
        }

    def apply(
        self,
        img: np.ndarray,
        brightness: float | None = None,
        contrast_first: bool = True,
        contrast: float | None = None,
        saturation: float | None = None,
        hue: int | None = None,
        **params: Any,
    ) -> np.ndarray:
        """Distort ``img`` (uint8 ``[H, W, 3]`` RGB) with the drawn parameters."""
        if brightness is not None:
            img = _affine(img, 1.0, brightness)
        if contrast is not None and contrast_first:
            img = _affine(img, contrast, 0.0)
        if saturation is not None or hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            if saturation is not None:
                hsv[..., 1] = _affine(hsv[..., 1], saturation, 0.0)
            if hue is not None:
                hsv[..., 0] = (hsv[..., 0].astype(np.int32) + hue) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if contrast is not None and not contrast_first:
            img = _affine(img, contrast, 0.0)
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")


def _affine(values: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``values * alpha + beta`` clipped to 0-255 and truncated to uint8."""
    clipped: np.ndarray = np.clip(values.astype(np.float32) * alpha + beta, 0, 255)
    return clipped.astype(np.uint8)


class PairAugment:
    """Augment a (before, after, label) triple: shared geometry, per-date photometry.

    Args:
        geometric: Applied once per pair to ``image``, ``image2`` and ``mask``.
        photometric: Applied to each date separately (independent parameters).
        exchange_p: Probability of swapping the two dates (after the geometric step).

    Every call draws from generators seeded by a ``key``: the same key gives the same
    augmentation. The training data passes ``(seed, epoch, position)``, which makes the
    augmentation independent of DataLoader workers and of where a run was resumed. Without a
    key, calls follow a sequence seeded by ``torch.initial_seed()`` (so each worker of a seeded
    run draws its own reproducible sequence).
    """

    def __init__(
        self,
        geometric: A.Compose | None = None,
        photometric: A.Compose | None = None,
        exchange_p: float = 0.0,
    ) -> None:
        self.geometric = geometric
        self.photometric = photometric
        self.exchange_p = exchange_p
        self._calls = 0

    def _seed(self, key: Sequence[int]) -> np.random.Generator:
        """Seed each pipeline from ``key``; returns the generator of the time exchange.

        Each pipeline gets one generator shared by all its transforms (albumentations'
        ``set_random_seed`` would give every transform an identical stream, so e.g. the
        horizontal and vertical flips would always fire together).
        """
        seeds = np.random.SeedSequence([int(k) for k in key]).generate_state(3)
        for pipeline, state in ((self.geometric, seeds[1]), (self.photometric, seeds[2])):
            if pipeline is not None:
                pipeline.set_random_state(np.random.default_rng(state), random.Random(int(state)))
        return np.random.default_rng(seeds[0])

    def __call__(
        self,
        image1: np.ndarray,
        image2: np.ndarray,
        mask: np.ndarray,
        key: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augment uint8 ``[H, W, 3]`` images and a uint8 ``[H, W]`` label as ``key`` says."""
        if key is None:
            key = (torch.initial_seed(), self._calls)
            self._calls += 1
        exchange = self._seed(key)
        if self.geometric is not None:
            out = self.geometric(image=image1, image2=image2, mask=mask)
            image1, image2, mask = out["image"], out["image2"], out["mask"]
        if self.exchange_p > 0 and exchange.random() < self.exchange_p:
            image1, image2 = image2, image1
        if self.photometric is not None:
            image1 = self.photometric(image=image1)["image"]
            image2 = self.photometric(image=image2)["image"]
        return image1, image2, mask


def _rotate(limit: float, p: float) -> A.Rotate:
    """Rotation about the centre, bilinear for images (padding 0), nearest for the label."""
    return A.Rotate(
        limit=limit,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=IGNORE_INDEX,
        p=p,
    )


def _crop(crop_size: int | None) -> list[A.BasicTransform]:
    """A random crop (padding small images, label padding ignored), or nothing."""
    if crop_size is None:
        return []
    return [
        A.RandomCrop(
            height=crop_size,
            width=crop_size,
            pad_if_needed=True,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
        )
    ]


def _pair_compose(transforms: list[A.BasicTransform]) -> A.Compose:
    return A.Compose(transforms, additional_targets={"image2": "image"})


def build_augmentation(name: str, crop_size: int | None = None) -> PairAugment | None:
    """The training augmentation called ``name`` (``standard``, ``changer`` or ``none``).

    ``crop_size`` adds a random square crop (a no-op on images of exactly that size). Returns
    ``None`` when there is nothing to do.
    """
    if crop_size is not None and crop_size <= 0:
        raise ConfigError(f"data.crop_size must be a positive number of pixels, got {crop_size}")
    photometric = A.Compose([PhotoMetricDistortion()])
    match name:
        case "standard":
            geometric = [
                _rotate(180, p=0.5),
                *_crop(crop_size),
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
            ]
            return PairAugment(_pair_compose(geometric), photometric)
        case "changer":
            rot90_and_flip = A.Sequential(
                [
                    A.RandomRotate90(p=1.0),
                    A.OneOf([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)], p=1.0),
                ],
                p=0.25,
            )
            rotate_or_flip = A.OneOf([_rotate(20, p=0.5), rot90_and_flip, A.NoOp(p=0.25)], p=1.0)
            geometric = [rotate_or_flip, *_crop(crop_size)]
            return PairAugment(_pair_compose(geometric), photometric, exchange_p=0.5)
        case "none":
            crop = _crop(crop_size)
            return PairAugment(_pair_compose(crop)) if crop else None
        case _:
            raise ConfigError(f"unknown augmentation '{name}': use one of {list(AUGMENTATIONS)}")
