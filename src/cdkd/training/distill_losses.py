"""Distillation losses (``distill.loss``), on student and target logits ``[B, C, H, W]``
(``feature``: on feature maps).

For the logit losses both sides are at the student head's resolution and in the same space (see
:func:`~cdkd.training.distill.align_logits`). ``T`` is ``distill.temperature``. A 1-channel
head carries the change log-odds ``z``; the class distribution of a pixel is then
``[1 - p, p]`` with ``p = sigmoid(z / T)``, the softmax of ``[0, z] / T``.

- ``mse`` (the paper): ``mean((s - t)^2)`` over all elements, on raw logits.
- ``kl``: pixel-wise ``KL(softmax(t / T) || softmax(s / T))`` over the classes, averaged over
  pixels and scaled by ``T^2`` (Hinton et al., "Distilling the knowledge in a neural
  network", 2015).
- ``cwd``: channel-wise distillation (Shu et al., "Channel-wise knowledge distillation for
  dense prediction", ICCV 2021): each channel's logits become a distribution over the ``H*W``
  positions, ``softmax(x_c / T)``; the loss is ``T^2 * KL(teacher || student)`` summed over
  positions and averaged over channels and samples. A 1-channel head is its one change
  log-odds channel.
- ``dist``: DIST (Huang et al., "Knowledge distillation from a stronger teacher", NeurIPS
  2022) on the class probabilities ``P = softmax(x / T)``: ``inter = 1 - pearson(P_s, P_t)``
  over the classes of each pixel, averaged over pixels; ``intra = 1 - pearson`` over the
  pixels of each sample, per class, averaged over classes and samples; the loss is
  ``T^2 * (beta * inter + gamma * intra)``.
- ``feature``: hint-based feature distillation after FitNets (Romero et al., "FitNets: hints
  for thin deep nets", ICLR 2015): the student's feature map entering its head
  (:meth:`~cdkd.models.ChangeModel.forward_features`), through a learnable 1x1-conv regressor
  when its width differs from the teacher's and bilinearly resized to the teacher's grid (see
  :func:`~cdkd.training.distill.align_features`), regresses the teacher's. With
  ``feature_norm=none`` the loss is ``mean((r(s) - t)^2)`` over samples, channels and
  positions (FitNets' squared L2 hint loss, averaged so that its scale does not grow with the
  width or the grid, like ``mse`` on logits). With ``feature_norm=l2`` each position's
  feature vector is first divided by its L2 norm over the channels on both sides, and the
  loss is ``mean over positions of ||r(s)^ - t^||^2 = 2 - 2 cos(r(s), t)``, in ``[0, 4]``:
  networks of different families produce features of very different magnitudes (ReLU maps
  versus layer-normalised tokens), and the normalised form matches directions only, so that
  one ``lambda`` means the same across teachers.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

#: ``distill.loss``: see the module docstring.
DistillLoss = Literal["mse", "kl", "cwd", "dist", "feature"]
DISTILL_LOSSES: tuple[DistillLoss, ...] = get_args(DistillLoss)
#: ``distill.feature_norm`` of the ``feature`` loss: see the module docstring.
FeatureNorm = Literal["none", "l2"]
FEATURE_NORMS: tuple[FeatureNorm, ...] = get_args(FeatureNorm)
#: Keeps Pearson's correlation finite for a constant vector.
_EPS = 1e-8


def check_distill_loss(loss: str) -> DistillLoss:
    """Return ``loss`` if it is in :data:`DISTILL_LOSSES`; raise ``ValueError`` if not."""
    if loss not in DISTILL_LOSSES:
        raise ValueError(f"distill.loss '{loss}' must be one of {DISTILL_LOSSES}")
    return loss


def check_feature_norm(norm: str) -> FeatureNorm:
    """Return ``norm`` if it is in :data:`FEATURE_NORMS`; raise ``ValueError`` if not."""
    if norm not in FEATURE_NORMS:
        raise ValueError(f"distill.feature_norm '{norm}' must be one of {FEATURE_NORMS}")
    return norm


def class_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits over the classes: a 1-channel change log-odds ``z`` becomes ``[0, z]``."""
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Pixel-wise KL(teacher || student) over the classes, ``T^2``-scaled, mean over pixels."""
    log_s = F.log_softmax(class_logits(student) / temperature, dim=1)
    log_t = F.log_softmax(class_logits(teacher) / temperature, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(1)
    return kl.mean() * temperature**2


def cwd_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Channel-wise KL(teacher || student) of spatial softmaxes, ``T^2``-scaled (CWD)."""
    log_s = F.log_softmax(student.flatten(2) / temperature, dim=2)
    log_t = F.log_softmax(teacher.flatten(2) / temperature, dim=2)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(2)
    return kl.mean() * temperature**2


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """``1 - pearson(a, b)`` along ``dim``."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    norms = torch.linalg.vector_norm(a, dim=dim) * torch.linalg.vector_norm(b, dim=dim)
    cos: torch.Tensor = (a * b).sum(dim) / (norms + _EPS)
    return 1.0 - cos


def dist_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """DIST: inter-class (per pixel) plus intra-class (per class over a sample's pixels)."""
    p_s = F.softmax(class_logits(student) / temperature, dim=1).flatten(2)  # [B, C, HW]
    p_t = F.softmax(class_logits(teacher) / temperature, dim=1).flatten(2)
    inter = _pearson_distance(p_s, p_t, dim=1).mean()
    intra = _pearson_distance(p_s, p_t, dim=2).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def feature_loss(
    student: torch.Tensor, teacher: torch.Tensor, norm: FeatureNorm = "none"
) -> torch.Tensor:
    """FitNets' hint loss between aligned feature maps, plain or direction-only (``l2``)."""
    if norm == "l2":
        student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
        return (student - teacher).square().sum(1).mean()
    return F.mse_loss(student, teacher)


def distill_loss(
    kind: DistillLoss,
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    feature_norm: FeatureNorm = "none",
) -> torch.Tensor:
    """The ``kind`` loss between aligned student and target maps (computed in float32)."""
    student, teacher = student.float(), teacher.float()
    if kind == "feature":
        return feature_loss(student, teacher, feature_norm)
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "kl":
        return kl_loss(student, teacher, temperature)
    if kind == "cwd":
        return cwd_loss(student, teacher, temperature)
    return dist_loss(student, teacher, temperature, beta, gamma)
