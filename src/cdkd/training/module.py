"""LightningModule for supervised stages: the baseline M_O and the CAR-partition teachers."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.loops.optimization.automatic import ClosureResult
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

from cdkd.errors import CdkdError, ConfigError
from cdkd.metrics import ChangeMetrics, EmptyPolicy
from cdkd.models import ChangeModel, create_model
from cdkd.ops import resize_logits
from cdkd.training.losses import build_loss
from cdkd.training.schedule import Decay, warmup_decay

log = logging.getLogger(__name__)

#: What a non-finite training loss does (see :class:`ChangeDetectionModule`).
NanPolicy = Literal["stop", "skip"]
NAN_POLICIES: tuple[NanPolicy, ...] = get_args(NanPolicy)


class NonFiniteLossError(CdkdError):
    """The training loss became NaN or infinite (``nan_policy=stop``)."""


class SkippedStep(Exception):
    """Ends a training step that every DDP process skips (``nan_policy=skip``) before any
    backward pass; :meth:`ChangeDetectionModule.optimizer_step` then makes no update.

    Lightning refuses a ``None`` training step under DDP, as processes that disagree would
    wait forever for each other's gradients; here all processes decide together.
    """


class ChangeDetectionModule(L.LightningModule):
    """Trains one change model with its task loss and validates with the paper's metrics.

    Only plain values are stored as hyper-parameters (never modules), so a checkpoint can be
    reloaded with :meth:`load_from_checkpoint` or read by ``create_model(name, weights=ckpt)``.

    Args:
        model: registry name of the network.
        model_kwargs: constructor overrides for :func:`cdkd.models.create_model`.
        weights: optional checkpoint loaded into the network before training.
        pretrained: start the pretrained parts from their released weights (see
            :func:`cdkd.models.create_model`).
        backbone_weights: local weight files of the pretrained parts (a path, or
            ``{part: path}``).
        loss: a loss name of :data:`cdkd.training.losses.LOSSES` (``ce``, ``ce_ohem``, ``bce``,
            ``bce_dice``, ``bcl``) or a mapping ``{kind: ..., <option>: ...}``.
        aux_weights: weights of the training-only auxiliary heads (deep supervision); when
            given, the network is built with ``aux_heads=True`` and must return as many.
        aux_loss: loss of the auxiliary heads (default: the main loss).
        optimizer: AdamW settings ``lr``, ``weight_decay``, ``betas``.
        scheduler: decay after the warm-up, ``linear`` or ``cosine``.
        max_steps: optimizer steps of the whole run (the schedule reaches 0 there).
        warmup_steps: linear warm-up length.
        warmup_start_lr: learning rate at step 0.
        empty_policy: per-image metric rule for absent classes (see :class:`ChangeMetrics`).
        nan_policy: what a non-finite training loss does: ``stop`` raises
            :class:`NonFiniteLossError` naming the step and its files (nothing is saved after
            it, so the checkpoints keep the last good state), ``skip`` gives that step no
            gradient and goes on. See :meth:`guard_loss` for when each is decided.
        meta: the checkpoint record, :meth:`cdkd.runs.meta.CheckpointMeta.to_hparams`.
        channels_last: keep weights and input images in channels-last memory format, which
            CUDA convolutions run faster in; ``None`` enables it on CUDA only.
        compile: compile the network with :func:`torch.compile` (the student's teachers too);
            the state dict keeps its keys, so checkpoints stay interchangeable.
    """

    def __init__(
        self,
        model: str,
        model_kwargs: Mapping[str, Any] | None = None,
        weights: str | None = None,
        pretrained: bool = False,
        backbone_weights: str | Mapping[str, str] | None = None,
        loss: str | Mapping[str, Any] = "ce",
        aux_weights: Sequence[float] = (),
        aux_loss: str | Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Decay = "linear",
        max_steps: int = 200_000,
        warmup_steps: int = 1000,
        warmup_start_lr: float = 1e-6,
        empty_policy: EmptyPolicy = "one",
        nan_policy: NanPolicy = "stop",
        meta: Mapping[str, Any] | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy '{nan_policy}' must be one of {NAN_POLICIES}")
        self.save_hyperparameters()
        self.nan_policy: NanPolicy = nan_policy
        kwargs = dict(model_kwargs or {})
        if aux_weights:
            kwargs["aux_heads"] = True
        self.net: ChangeModel = create_model(
            model,
            weights=weights,
            pretrained=pretrained,
            backbone_weights=backbone_weights,
            **kwargs,
        )
        self.criterion = build_loss(loss)
        self.aux_criterion = build_loss(aux_loss) if aux_loss is not None else self.criterion
        self.aux_weights = [float(w) for w in aux_weights]
        if self.criterion.out_channels != self.net.out_channels:
            raise ValueError(
                f"loss '{loss}' expects {self.criterion.out_channels} logit channel(s) but model "
                f"'{model}' has {self.net.out_channels}"
            )
        self.val_metrics = ChangeMetrics(empty_policy=empty_policy)
        if compile:
            self.net.compile()
        # Single process: the losses not yet checked (step, loss, file names), and whether the
        # gradients accumulated for the coming optimizer step are all from finite losses.
        self._unchecked: list[tuple[int, torch.Tensor, list[str]]] = []
        self._finite_step: torch.Tensor | None = None

    def uses_channels_last(self) -> bool:
        """Whether images and weights are kept channels-last on the current device."""
        choice = self.hparams.get("channels_last")
        return self.device.type == "cuda" if choice is None else bool(choice)

    def on_fit_start(self) -> None:
        if self.uses_channels_last():
            self.net.to(memory_format=torch.channels_last)
        trainer = self._trainer
        if trainer is None or self.nan_policy != "skip":
            return
        if trainer.world_size > 1 and trainer.accumulate_grad_batches > 1:
            raise ConfigError(
                "nan_policy=skip with several processes needs trainer.accumulate_grad_batches=1"
            )

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Lightning's step, except that a step all processes skipped updates nothing."""
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        except SkippedStep:
            # The loop reads the step's outcome from the closure: give it Lightning's own
            # "training_step returned None" result, as in a single process.
            optimizer_closure._result = ClosureResult(closure_loss=None)  # type: ignore[union-attr]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.uses_channels_last() and isinstance(batch, dict):
            for key in ("image1", "image2"):
                batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
        return batch

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(x1, x2)
        return logits

    def task_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Task loss of a batch (main head plus any auxiliary heads) and the main logits."""
        logits, aux = self.net.forward_with_aux(batch["image1"], batch["image2"])
        if len(aux) != len(self.aux_weights):
            raise ValueError(
                f"model '{self.hparams['model']}' returned {len(aux)} auxiliary outputs for "
                f"{len(self.aux_weights)} aux_weights"
            )
        loss = self.criterion(logits, batch["mask"])
        for weight, aux_logits in zip(self.aux_weights, aux, strict=True):
            loss = loss + weight * self.aux_criterion(aux_logits, batch["mask"])
        return loss, logits

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self.task_loss(batch)
        self.guard_loss(loss, batch)
        self.log("train/loss", loss, batch_size=batch["mask"].shape[0])
        return loss

    def guard_loss(self, loss: torch.Tensor, batch: Mapping[str, Any]) -> None:
        """Apply ``nan_policy`` to this step's loss.

        In a single process nothing here waits for the device: the loss is kept (on the
        device) with the step and the batch's file names and checked by
        :meth:`check_losses` every ``trainer.log_every_n_steps`` steps, before validation,
        before any checkpoint is written and at the end of training. ``stop`` then raises
        :class:`NonFiniteLossError` naming the first bad step and its files; the steps run
        since then never reach a checkpoint. ``skip`` logs each bad step there, and its
        gradients were already replaced by zeros on the device before the optimizer step
        (:meth:`on_before_optimizer_step`), so no NaN/Inf reaches the weights; AdamW still
        applies that step's weight decay and its momentum from earlier steps.

        Under DDP the processes decide together at every step (one collective, which waits
        for the device): when any of them has a non-finite loss, all skip the step before any
        update (or all stop), so none waits forever for the others' gradients.
        """
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            self._decide_together(loss, batch)
            return
        names = [str(n) for n in batch.get("name", [])]
        self._unchecked.append((self.global_step, loss.detach(), names))
        if self.nan_policy == "skip":
            finite = torch.isfinite(loss.detach()).all()
            previous = self._finite_step
            self._finite_step = finite if previous is None else previous & finite

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """``nan_policy=skip``: zero the gradients of a step with a non-finite loss, on the
        device (the decision never leaves it)."""
        finite, self._finite_step = self._finite_step, None
        if finite is None:
            return
        keep = finite.to(self.device)
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.masked_fill_(~keep, 0.0)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        # Lightning's logger connector sets this attribute; the Trainer class does not declare it.
        every: int = trainer.log_every_n_steps  # type: ignore[attr-defined]
        if len(self._unchecked) >= max(1, every):
            self.check_losses()

    def on_validation_start(self) -> None:
        self.check_losses()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_losses()

    def on_train_end(self) -> None:
        self.check_losses()

    def check_losses(self) -> None:
        """Read the kept losses (one wait for the device) and apply ``nan_policy`` to the
        non-finite ones: ``stop`` raises for the first, ``skip`` logs each."""
        unchecked, self._unchecked = self._unchecked, []
        if not unchecked:
            return
        values = torch.stack([loss.float() for _, loss, _ in unchecked]).cpu().tolist()
        for (step, _, names), value in zip(unchecked, values, strict=True):
            if math.isfinite(value):
                continue
            where = f"{value} on batch [{', '.join(names)}]"
            if self.nan_policy == "skip":
                log.warning("step %d: loss is %s, step skipped", step, where)
                continue
            raise NonFiniteLossError(
                f"step {step}: training loss is {where}; stopped with the checkpoints of the "
                "last good state (lower the learning rate, set trainer.gradient_clip_val, or "
                "nan_policy=skip)"
            )

    def _decide_together(self, loss: torch.Tensor, batch: Mapping[str, Any]) -> None:
        """The DDP path of :meth:`guard_loss`: all processes skip or stop together."""
        finite_here = bool(torch.isfinite(loss.detach()).all())
        if self.trainer.strategy.reduce_boolean_decision(finite_here, all=True):
            return
        names = ", ".join(str(n) for n in batch.get("name", []))
        where = (
            f"{loss.item()} on batch [{names}]"
            if not finite_here
            else "not finite on another process"
        )
        if self.nan_policy == "skip":
            log.warning("step %d: loss is %s, step skipped", self.global_step, where)
            raise SkippedStep
        raise NonFiniteLossError(
            f"step {self.global_step}: training loss is {where}; "
            "stopped with the checkpoints of the last good state (lower the learning rate, set "
            "trainer.gradient_clip_val, or nan_policy=skip)"
        )

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        logits = self(batch["image1"], batch["image2"])
        logits = resize_logits(logits, tuple(batch["mask"].shape[-2:]))
        self.val_metrics.update(self.net.predict(logits), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        result = self.val_metrics.compute()
        self.val_metrics.reset()
        per_image, pooled = result["per_image"], result["pooled"]
        logs = {f"val/{k}": v for k, v in per_image.items() if k.startswith("m")}
        logs.update({f"val/pooled_{k}": v for k, v in pooled.items() if k.startswith("m")})
        # The values are already gathered over all ranks; sync_dist only keeps Lightning quiet.
        self.log("val/mIoU", logs.pop("val/mIoU"), prog_bar=True, sync_dist=True)
        self.log_dict(logs, sync_dist=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        hparams = self.hparams
        opt_cfg = dict(hparams["optimizer"] or {})
        lr = float(opt_cfg.get("lr", 1e-3))
        optimizer = torch.optim.AdamW(
            parameter_groups(self.net, opt_cfg),
            lr=lr,
            betas=tuple(opt_cfg.get("betas", (0.9, 0.99))),
            weight_decay=float(opt_cfg.get("weight_decay", 0.01)),
        )
        factor = warmup_decay(
            lr,
            hparams["max_steps"],
            hparams["warmup_steps"],
            hparams["warmup_start_lr"],
            hparams["scheduler"],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def parameter_groups(net: torch.nn.Module, opt_cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters, with per-name LR and decay rules.

    ``opt_cfg["lr_mult"]`` maps a name fragment to a learning-rate multiplier (the first
    fragment contained in a parameter's name applies; e.g. ``{decode_head: 10}``) and
    ``opt_cfg["no_decay"]`` lists name fragments whose parameters get no weight decay (e.g.
    ``[norm, pos_block]``), as the reference configs' ``paramwise_cfg`` do. Frozen parameters
    are left out, so they get no optimizer state.
    """
    lr = float(opt_cfg.get("lr", 1e-3))
    decay = float(opt_cfg.get("weight_decay", 0.01))
    lr_mult = {str(k): float(v) for k, v in dict(opt_cfg.get("lr_mult") or {}).items()}
    no_decay = [str(f) for f in opt_cfg.get("no_decay") or []]
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        mult = next((m for fragment, m in lr_mult.items() if fragment in name), 1.0)
        decayed = not any(fragment in name for fragment in no_decay)
        groups.setdefault((mult, decayed), []).append(param)
    return [
        {"params": params, "lr": lr * mult, "weight_decay": decay if decayed else 0.0}
        for (mult, decayed), params in groups.items()
    ]
