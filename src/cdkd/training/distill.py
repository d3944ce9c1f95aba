"""Multi-teacher knowledge distillation (MTKD): the student stage.

Each training sample is routed, by the CAR of its *augmented* ground-truth label (ignore
pixels excluded), to the teacher of its CAR partition. Every teacher runs once per step on
just the samples routed to it, frozen and in inference mode; the student is trained with

    loss = task_loss + lambda * MSE(student head logits, teacher head logits)

the MSE taken on raw logits at the student head's native resolution and averaged over
elements. Routing indices are computed on the host before the batch is moved to the device,
and the loss is checked and logged without reading it back (see
:meth:`~cdkd.training.module.ChangeDetectionModule.guard_loss`), so a single-process step
needs no device-to-host synchronisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from cdkd.models import ChangeModel
from cdkd.models.checkpoint import read_hparams
from cdkd.ops import resize_logits
from cdkd.partition import PartitionScheme, bucket_of, change_area_ratio
from cdkd.training.checkpoints import load_teacher
from cdkd.training.module import ChangeDetectionModule

#: How a training sample's CAR picks its teacher: ``paper``, changed / valid pixels with
#: ``CAR <= th`` in the lower bucket (equation (3), as partitioning and O-P); ``official``, the
#: official code's training-time rule: every non-zero label pixel (rotation padding included)
#: counts as change and ``CAR < th`` is in the lower bucket.
CarRule = Literal["paper", "official"]
CAR_RULES: tuple[CarRule, ...] = get_args(CarRule)


def check_car_rule(car_rule: str) -> CarRule:
    """Return ``car_rule`` if it is in :data:`CAR_RULES`; raise ``ValueError`` if not."""
    if car_rule not in CAR_RULES:
        raise ValueError(f"distill.car_rule '{car_rule}' must be one of {CAR_RULES}")
    return car_rule


def route(
    mask: torch.Tensor, thresholds: Sequence[float], car_rule: CarRule = "paper"
) -> tuple[torch.Tensor, list[int]]:
    """Order the batch by CAR bucket (see :data:`CAR_RULES`): ``(order, counts)``.

    ``order`` lists sample positions grouped by bucket (stable within a bucket) and
    ``counts[k]`` is the number of samples in bucket ``k``, as Python ints so that splitting
    ``order`` on the device needs no synchronisation.
    """
    if car_rule == "official":
        car = (mask.flatten(1) > 0).float().mean(1)
        buckets = torch.bucketize(car, torch.as_tensor(thresholds, dtype=car.dtype), right=True)
    else:
        buckets = bucket_of(change_area_ratio(mask), thresholds)
    order = torch.argsort(buckets, stable=True)
    counts = torch.bincount(buckets, minlength=len(thresholds) + 1).tolist()
    return order, counts


def align_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student: ChangeModel,
    teacher: ChangeModel,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring teacher logits into the student's space for the MSE.

    Heads of the same width and output space are compared as they are. Otherwise (a
    1-channel head against a 2-channel head, or a distance map against logits) both sides
    become change log-odds (``logit_changed - logit_unchanged`` for two channels, ``distance -
    1`` for STANet). Teacher logits are resized to the student head's resolution.
    """
    same_space = student.output_space == teacher.output_space
    if teacher_logits.shape[1] != student_logits.shape[1] or not same_space:
        student_logits = student.change_logit(student_logits)
        teacher_logits = teacher.change_logit(teacher_logits)
    size = (student_logits.shape[-2], student_logits.shape[-1])
    return student_logits, resize_logits(teacher_logits, size)


class DistillationModule(ChangeDetectionModule):
    """The MTKD student: a :class:`ChangeDetectionModule` plus frozen CAR-routed teachers.

    The teachers are deliberately not sub-modules: they are neither saved in the student's
    checkpoints (the run records their paths and SHA-256 in its checkpoint metadata), nor
    handed to the optimizer, nor wrapped by DDP (each rank holds a replica), and Lightning's
    ``train()`` calls leave them in eval mode.

    Args:
        init: M_O checkpoint the student starts from (all weights, strictly).
        teachers: checkpoint of each bucket's teacher, in the order of ``partition.buckets``.
        distill_lambda: weight of the distillation term (0 trains on the task loss alone).
        teacher_model: registry name of the teachers (defaults to the student's).
        partition: the CAR scheme ``{name, thresholds, buckets}`` used for routing.
        car_rule: how a sample's CAR is computed and compared for routing (:data:`CAR_RULES`).
        **kwargs: the arguments of :class:`ChangeDetectionModule`.
    """

    def __init__(
        self,
        init: str,
        teachers: Mapping[str, str],
        distill_lambda: float,
        partition: Mapping[str, Any],
        teacher_model: str | None = None,
        car_rule: CarRule = "paper",
        **kwargs: Any,
    ) -> None:
        if distill_lambda < 0:
            raise ValueError(f"distill.lambda must be >= 0, got {distill_lambda}")
        car_rule = check_car_rule(car_rule)  # a config value: refused before any file is read
        model = kwargs["model"]
        read_hparams(init, expected_model=model)
        super().__init__(**{**kwargs, "weights": init})
        self.car_rule = car_rule
        self.distill_lambda = float(distill_lambda)
        self.scheme = PartitionScheme.create(
            partition["name"], partition["thresholds"], partition["buckets"]
        )
        missing = [b for b in self.scheme.buckets if b not in teachers]
        if missing:
            raise ValueError(f"no teacher checkpoint for bucket(s) {missing}")
        teacher_model = teacher_model or model
        self.teachers: list[ChangeModel] = [
            load_teacher(teachers[b], teacher_model, self.scheme, b).eval().requires_grad_(False)
            for b in self.scheme.buckets
        ]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        for teacher in self.teachers:
            teacher.to(self.device)
            if self.uses_channels_last():
                teacher.to(memory_format=torch.channels_last)
            if self.hparams.get("compile"):
                teacher.compile()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and isinstance(batch, dict):
            batch["route_order"], batch["route_counts"] = route(
                batch["mask"], self.scheme.thresholds, self.car_rule
            )
        return batch

    def distillation_loss(
        self, batch: Mapping[str, Any], student_logits: torch.Tensor
    ) -> torch.Tensor:
        """MSE between student logits and the logits of each sample's routed teacher."""
        order: torch.Tensor | None = batch.get("route_order")
        counts: list[int] = batch.get("route_counts", [])
        if order is None:
            order, counts = route(batch["mask"], self.scheme.thresholds, self.car_rule)
            order = order.to(student_logits.device)
        x1, x2 = batch["image1"], batch["image2"]
        student_parts, teacher_parts = [], []
        for k, idx in enumerate(torch.split(order, counts)):
            if counts[k] == 0:
                continue
            with torch.inference_mode():
                target = self.teachers[k](x1.index_select(0, idx), x2.index_select(0, idx))
            s, t = align_logits(
                student_logits.index_select(0, idx), target.clone(), self.net, self.teachers[k]
            )
            student_parts.append(s)
            teacher_parts.append(t)
        student_all, teacher_all = torch.cat(student_parts), torch.cat(teacher_parts)
        return F.mse_loss(student_all.float(), teacher_all.float())

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        task, logits = self.task_loss(batch)
        size = batch["mask"].shape[0]
        lam = self.distill_lambda
        loss = task
        kd = None
        if lam > 0:
            kd = self.distillation_loss(batch, logits)
            loss = task + lam * kd
        self.guard_loss(loss, batch)
        if kd is not None:
            self.log("train/distill", kd, batch_size=size)
        self.log("train/task", task, batch_size=size)
        self.log("train/loss", loss, batch_size=size)
        return loss
