"""Which teacher distils which training sample, and with what weight (``distill.routing``).

A plan is computed on the host from the labels, before the batch is moved to the device: for
each teacher ``k``, ``counts[k]`` entries of ``order`` (sample positions, grouped by teacher)
and, for the weighted routings, ``weights`` (one per entry of ``order``). A sample's target is
the weighted sum of its teachers' (aligned) logits; the weights of a sample sum to 1.

- ``car`` (the paper): the teacher of the sample's CAR bucket, weight 1.
- ``soft``: as ``car``, except that a sample whose CAR lies within ``width`` of a threshold
  ``th`` gets the blend ``w * T_lower + (1 - w) * T_upper`` of the two neighbouring teachers
  with ``w = 0.5 - (car - th) / (2 * width)``: 0.5 at ``th``, 1 at ``th - width``, 0 at
  ``th + width`` (where the blend is the hard assignment again). Near two thresholds (a width
  larger than half their gap), the nearest one blends.
- ``single``: one teacher for every sample, weight 1.
- ``ensemble``: every teacher on every sample, weighted by ``exp(-d_k / tau)`` normalised over
  the teachers, ``d_k`` the distance from the sample's CAR to bucket ``k``'s CAR interval
  (0 inside it): the own bucket's teacher weighs most, the others fade with distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch

from cdkd.partition import bucket_of, change_area_ratio

#: How a training sample's CAR picks its teacher: ``paper``, changed / valid pixels with
#: ``CAR <= th`` in the lower bucket (equation (3), as partitioning and O-P); ``official``, the
#: official code's training-time rule: every non-zero label pixel (rotation padding included)
#: counts as change and ``CAR < th`` is in the lower bucket.
CarRule = Literal["paper", "official"]
CAR_RULES: tuple[CarRule, ...] = get_args(CarRule)
#: ``distill.routing``: see the module docstring.
Routing = Literal["car", "soft", "single", "ensemble"]
ROUTINGS: tuple[Routing, ...] = get_args(Routing)

#: A routing plan: ``(order, counts, weights)``; ``weights`` is ``None`` when every entry
#: weighs 1 and every sample appears once (``car``, ``single``).
Plan = tuple[torch.Tensor, list[int], torch.Tensor | None]


def check_car_rule(car_rule: str) -> CarRule:
    """Return ``car_rule`` if it is in :data:`CAR_RULES`; raise ``ValueError`` if not."""
    if car_rule not in CAR_RULES:
        raise ValueError(f"distill.car_rule '{car_rule}' must be one of {CAR_RULES}")
    return car_rule


def check_routing(routing: str) -> Routing:
    """Return ``routing`` if it is in :data:`ROUTINGS`; raise ``ValueError`` if not."""
    if routing not in ROUTINGS:
        raise ValueError(f"distill.routing '{routing}' must be one of {ROUTINGS}")
    return routing


def sample_car(mask: torch.Tensor, car_rule: CarRule = "paper") -> torch.Tensor:
    """CAR of each label of ``mask`` ``[B, H, W]`` under ``car_rule``."""
    if car_rule == "official":
        return (mask.flatten(1) > 0).float().mean(1)
    return change_area_ratio(mask)


def car_buckets(car: torch.Tensor, thresholds: Sequence[float], car_rule: CarRule) -> torch.Tensor:
    """Bucket of each CAR: ``CAR <= th`` is lower (``paper``), ``CAR < th`` (``official``)."""
    if car_rule == "official":
        bounds = torch.as_tensor(thresholds, dtype=car.dtype)
        return torch.bucketize(car, bounds, right=True)
    return bucket_of(car, thresholds)


def route(
    mask: torch.Tensor, thresholds: Sequence[float], car_rule: CarRule = "paper"
) -> tuple[torch.Tensor, list[int]]:
    """Order the batch by CAR bucket (see :data:`CAR_RULES`): ``(order, counts)``.

    ``order`` lists sample positions grouped by bucket (stable within a bucket) and
    ``counts[k]`` is the number of samples in bucket ``k``, as Python ints so that splitting
    ``order`` on the device needs no synchronisation.
    """
    buckets = car_buckets(sample_car(mask, car_rule), thresholds, car_rule)
    order = torch.argsort(buckets, stable=True)
    counts = torch.bincount(buckets, minlength=len(thresholds) + 1).tolist()
    return order, counts


def teacher_weights(
    car: torch.Tensor,
    thresholds: Sequence[float],
    routing: Routing,
    car_rule: CarRule = "paper",
    soft_width: float = 0.02,
    ensemble_tau: float = 0.05,
) -> torch.Tensor:
    """The weight of each teacher for each sample, ``[B, K]`` (rows sum to 1), on the host.

    Computed in ``car``'s dtype, so that a CAR on a threshold falls where :func:`route` puts it.
    """
    k = len(thresholds) + 1
    if routing == "ensemble":
        bounds = torch.tensor([0.0, *thresholds, 1.0], dtype=car.dtype)
        below, above = (bounds[:-1] - car[:, None]).clamp_min(0), (car[:, None] - bounds[1:])
        return torch.softmax(-(below + above.clamp_min(0)) / ensemble_tau, dim=1)
    if routing == "single":
        return torch.ones(car.shape[0], 1, dtype=car.dtype)
    weights = torch.zeros(car.shape[0], k, dtype=car.dtype)
    weights[torch.arange(car.shape[0]), car_buckets(car, thresholds, car_rule)] = 1.0
    if routing == "soft" and thresholds:
        th = torch.as_tensor(thresholds, dtype=car.dtype)
        nearest = (car[:, None] - th).abs().argmin(1)
        offset = car - th[nearest]
        near = offset.abs() < soft_width
        rows, lower = torch.nonzero(near).flatten(), nearest[near]
        w = 0.5 - offset[near] / (2 * soft_width)
        weights[rows] = 0.0
        weights[rows, lower] = w
        weights[rows, lower + 1] = 1.0 - w
    return weights


def plan(
    mask: torch.Tensor,
    thresholds: Sequence[float],
    routing: Routing = "car",
    car_rule: CarRule = "paper",
    soft_width: float = 0.02,
    ensemble_tau: float = 0.05,
) -> Plan:
    """The routing plan of a batch of labels (see the module docstring)."""
    if routing == "car":
        order, counts = route(mask, thresholds, car_rule)
        return order, counts, None
    car = sample_car(mask, car_rule)
    weights = teacher_weights(car, thresholds, routing, car_rule, soft_width, ensemble_tau)
    if routing == "single":
        return torch.arange(car.shape[0]), [car.shape[0]], None
    served = weights.t() > 0  # [K, B]: teacher k serves sample i
    order = torch.nonzero(served)[:, 1]  # grouped by teacher, ascending sample position
    counts = served.sum(1).tolist()
    return order, counts, weights.t()[served].float()
