"""Multi-teacher knowledge distillation (MTKD): the student stage.

Each training sample is routed, by the CAR of its *augmented* ground-truth label (ignore
pixels excluded), to the teacher of its CAR partition (``distill.routing=car``, the paper; the
other routings are in :mod:`cdkd.training.routing`). Every teacher runs at most once per step
on just the samples routed to it, frozen and in inference mode; the student is trained with

    loss = task_loss + lambda * MSE(student head logits, teacher head logits)

the MSE taken on raw logits at the student head's native resolution and averaged over
elements (``distill.loss=mse``, the paper; the other losses are in
:mod:`cdkd.training.distill_losses`). With ``distill.loss=feature`` the teachers hand over the
feature maps entering their heads instead of their logits, and the student's feature map,
through a learnable 1x1-conv adapter when the widths differ (FitNets' regressor, kept on this
module and never in the student network, so the exported student has exactly the zoo model's
weights), regresses them (:func:`align_features`).

Routing indices are computed on the host before the batch is moved to the device, and the loss
is checked and logged without reading it back (see
:meth:`~cdkd.training.module.ChangeDetectionModule.guard_loss`), so a single-process step
needs no device-to-host synchronisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn

from cdkd.models import ChangeModel
from cdkd.models.checkpoint import load_network, read_hparams
from cdkd.ops import resize_logits
from cdkd.partition import PartitionScheme
from cdkd.training.checkpoints import load_teacher
from cdkd.training.distill_losses import (
    DistillLoss,
    FeatureNorm,
    check_distill_loss,
    check_feature_norm,
    distill_loss,
)
from cdkd.training.module import ChangeDetectionModule
from cdkd.training.routing import CarRule, Plan, Routing, check_car_rule, check_routing, plan

#: The key of ``teachers`` that names the one teacher of ``distill.routing=single``.
SINGLE = "all"


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


def feature_adapter(student_channels: int, teacher_channels: int) -> nn.Conv2d | None:
    """FitNets' regressor from the student's feature width to the teacher's: a 1x1 conv, or
    ``None`` (the identity, no parameters) when the widths agree."""
    if student_channels == teacher_channels:
        return None
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


def align_features(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    adapter: nn.Module | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring the student's feature map into the teacher's: the adapter (when the widths
    differ), then a bilinear resize to the teacher's grid (when the grids differ)."""
    if adapter is not None:
        student_features = adapter(student_features)
    size = (teacher_features.shape[-2], teacher_features.shape[-1])
    return resize_logits(student_features, size), teacher_features


class DistillationModule(ChangeDetectionModule):
    """The MTKD student: a :class:`ChangeDetectionModule` plus frozen CAR-routed teachers.

    The teachers are deliberately not sub-modules: they are neither saved in the student's
    checkpoints (the run records their paths and SHA-256 in its checkpoint metadata), nor
    handed to the optimizer, nor wrapped by DDP (each rank holds a replica), and Lightning's
    ``train()`` calls leave them in eval mode.

    The ``feature`` loss's adapter (built when the student's and the teachers' feature widths
    differ) is, on the contrary, a sub-module of this module, beside the network: it is saved
    under ``feature_adapter.*`` next to ``net.*`` (a resumed run restores it), trained by the
    optimizer, and ignored by every reader of the network, which takes only ``net.*``
    (:func:`cdkd.models.convert.formats.read_checkpoint`).

    Args:
        init: M_O checkpoint the student starts from (all weights, strictly).
        teachers: checkpoint of each bucket's teacher, in the order of ``partition.buckets``;
            for ``routing="single"``, ``{"all": checkpoint}`` (any checkpoint of
            ``teacher_model``, M_O itself for self-distillation).
        distill_lambda: weight of the distillation term (0 trains on the task loss alone).
        teacher_model: registry name of the teachers (defaults to the student's).
        partition: the CAR scheme ``{name, thresholds, buckets}`` used for routing.
        car_rule: how a sample's CAR is computed and compared for routing
            (:data:`~cdkd.training.routing.CAR_RULES`).
        distill_loss: the distillation loss (:data:`~cdkd.training.distill_losses.DistillLoss`).
        routing: which teachers distil which sample (:data:`~cdkd.training.routing.Routing`).
        temperature: ``T`` of the ``kl``, ``cwd`` and ``dist`` losses.
        soft_width: CAR distance to a threshold within which ``soft`` routing blends.
        ensemble_tau: CAR distance scale of the ``ensemble`` routing's weights.
        dist_beta: weight of DIST's inter-class term.
        dist_gamma: weight of DIST's intra-class term.
        feature_norm: the ``feature`` loss's normalisation
            (:data:`~cdkd.training.distill_losses.FeatureNorm`).
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
        distill_loss: DistillLoss = "mse",
        routing: Routing = "car",
        temperature: float = 1.0,
        soft_width: float = 0.02,
        ensemble_tau: float = 0.05,
        dist_beta: float = 1.0,
        dist_gamma: float = 1.0,
        feature_norm: FeatureNorm = "none",
        **kwargs: Any,
    ) -> None:
        if distill_lambda < 0:
            raise ValueError(f"distill.lambda must be >= 0, got {distill_lambda}")
        for key, value in (
            ("temperature", temperature),
            ("soft_width", soft_width),
            ("ensemble_tau", ensemble_tau),
        ):
            if not value > 0:
                raise ValueError(f"distill.{key} must be > 0, got {value}")
        # config values: refused before any file is read
        car_rule, routing = check_car_rule(car_rule), check_routing(routing)
        distill_loss = check_distill_loss(distill_loss)
        feature_norm = check_feature_norm(feature_norm)
        model = kwargs["model"]
        read_hparams(init, expected_model=model)
        super().__init__(**{**kwargs, "weights": init})
        self.car_rule = car_rule
        self.distill_lambda = float(distill_lambda)
        self.loss_kind: DistillLoss = distill_loss
        self.routing: Routing = routing
        self.temperature, self.soft_width = float(temperature), float(soft_width)
        self.ensemble_tau = float(ensemble_tau)
        self.dist_beta, self.dist_gamma = float(dist_beta), float(dist_gamma)
        self.feature_norm: FeatureNorm = feature_norm
        self.scheme = PartitionScheme.create(
            partition["name"], partition["thresholds"], partition["buckets"]
        )
        teacher_model = teacher_model or model
        if routing == "single":
            if SINGLE not in teachers:
                raise ValueError(f"routing=single needs distill.teachers={{{SINGLE}: PATH}}")
            loaded = [load_network(teachers[SINGLE], expected_model=teacher_model)]
        else:
            missing = [b for b in self.scheme.buckets if b not in teachers]
            if missing:
                raise ValueError(f"no teacher checkpoint for bucket(s) {missing}")
            loaded = [
                load_teacher(teachers[b], teacher_model, self.scheme, b)
                for b in self.scheme.buckets
            ]
        self.teachers: list[ChangeModel] = [t.eval().requires_grad_(False) for t in loaded]
        #: FitNets' regressor of the ``feature`` loss (``None``: same widths, or no such loss).
        self.feature_adapter: nn.Conv2d | None = None
        if distill_loss == "feature" and self.distill_lambda > 0:
            widths = {t.feature_channels for t in self.teachers}
            if len(widths) != 1:
                raise ValueError(f"the teachers' feature maps differ in width: {sorted(widths)}")
            self.feature_adapter = feature_adapter(self.net.feature_channels, widths.pop())

    def on_fit_start(self) -> None:
        super().on_fit_start()
        for teacher in self.teachers:
            teacher.to(self.device)
            if self.uses_channels_last():
                teacher.to(memory_format=torch.channels_last)
            if self.hparams.get("compile"):
                teacher.compile()

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """The network's optimizer and schedule, the feature adapter (if any) trained with them
        at the base learning rate and weight decay."""
        config = super().configure_optimizers()
        if self.feature_adapter is None:
            return config
        optimizer = config["optimizer"]
        optimizer.add_param_group({"params": list(self.feature_adapter.parameters())})
        # The schedule is rebuilt over every group; the network's groups keep their base rates.
        schedule = config["lr_scheduler"]
        assert isinstance(schedule, dict)
        scheduler = schedule["scheduler"]
        assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
        schedule["scheduler"] = torch.optim.lr_scheduler.LambdaLR(
            optimizer, scheduler.lr_lambdas[0]
        )
        return config

    def route_batch(self, mask: torch.Tensor) -> Plan:
        """The routing plan of a batch's labels (:func:`cdkd.training.routing.plan`)."""
        return plan(
            mask,
            self.scheme.thresholds,
            self.routing,
            self.car_rule,
            self.soft_width,
            self.ensemble_tau,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and isinstance(batch, dict):
            order, counts, weights = self.route_batch(batch["mask"])
            batch["route_order"], batch["route_counts"] = order, counts
            if weights is not None:
                batch["route_weights"] = weights
        return batch

    def teacher_target(self, k: int, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Teacher ``k``'s logits, or for the ``feature`` loss its feature map."""
        teacher = self.teachers[k]
        if self.loss_kind == "feature":
            return teacher.forward_features(x1, x2)[0]
        target: torch.Tensor = teacher(x1, x2)
        return target

    def align(
        self, student: torch.Tensor, target: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Student output and teacher ``k``'s target in one space (logits or features)."""
        if self.loss_kind == "feature":
            return align_features(student, target, self.feature_adapter)
        return align_logits(student, target, self.net, self.teachers[k])

    def distillation_loss(
        self, batch: Mapping[str, Any], student_output: torch.Tensor
    ) -> torch.Tensor:
        """The distillation loss between the student's output and each sample's routed target.

        ``student_output``: the student's logits, or for the ``feature`` loss its feature
        map. Each teacher runs once, on the samples it serves. With one teacher per sample
        (``car``, ``single``) the target is that teacher's logits (features); otherwise it is
        the weighted sum of the serving teachers' aligned logits (features).
        """
        order: torch.Tensor | None = batch.get("route_order")
        counts: list[int] = batch.get("route_counts", [])
        weights: torch.Tensor | None = batch.get("route_weights")
        if order is None:
            order, counts, weights = self.route_batch(batch["mask"])
            order = order.to(student_output.device)
            weights = None if weights is None else weights.to(student_output.device)
        x1, x2 = batch["image1"], batch["image2"]
        student_parts, teacher_parts, index_parts = [], [], []
        for k, idx in enumerate(torch.split(order, counts)):
            if counts[k] == 0:
                continue
            with torch.inference_mode():
                target = self.teacher_target(k, x1.index_select(0, idx), x2.index_select(0, idx))
            s, t = self.align(student_output.index_select(0, idx), target.clone(), k)
            student_parts.append(s)
            teacher_parts.append(t)
            index_parts.append(idx)
        if weights is None:
            student_all, teacher_all = torch.cat(student_parts), torch.cat(teacher_parts)
        else:
            student_all = self.align(student_output, teacher_parts[0], 0)[0]
            weighted = torch.cat(teacher_parts).float() * weights.view(-1, 1, 1, 1)
            teacher_all = torch.zeros_like(student_all, dtype=torch.float32)
            teacher_all = teacher_all.index_add(0, torch.cat(index_parts), weighted)
        return distill_loss(
            self.loss_kind,
            student_all,
            teacher_all,
            self.temperature,
            self.dist_beta,
            self.dist_gamma,
            self.feature_norm,
        )

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        if self.loss_kind == "feature":
            with self.net.capture_features() as captured:
                task, _ = self.task_loss(batch)
            student = captured[0]  # the main head's (see ChangeModel.capture_features)
        else:
            task, student = self.task_loss(batch)
        size = batch["mask"].shape[0]
        lam = self.distill_lambda
        loss = task
        kd = None
        if lam > 0:
            kd = self.distillation_loss(batch, student)
            loss = task + lam * kd
        self.guard_loss(loss, batch)
        if kd is not None:
            self.log("train/distill", kd, batch_size=size)
        self.log("train/task", task, batch_size=size)
        self.log("train/loss", loss, batch_size=size)
        return loss
