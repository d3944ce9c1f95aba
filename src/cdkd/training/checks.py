"""Checks of a training configuration and its splits, before anything is written."""

from __future__ import annotations

from typing import Any, Literal, get_args

from omegaconf import DictConfig, OmegaConf

from cdkd.data.io import check_label_threshold
from cdkd.data.transforms import AUGMENTATIONS
from cdkd.errors import ConfigError, DataError
from cdkd.metrics import EMPTY_POLICIES
from cdkd.partition import PartitionScheme
from cdkd.training.distill_losses import check_distill_loss, check_feature_norm
from cdkd.training.losses import AVERAGES, DICE_KINDS, LOSSES
from cdkd.training.module import NAN_POLICIES
from cdkd.training.routing import check_car_rule, check_routing
from cdkd.training.schedule import DECAYS, trainer_overrides

#: ``resume``: continue from the last checkpoint when there is one (``auto``), always, or never.
ResumeMode = Literal["auto", True, False]
RESUME_MODES: tuple[ResumeMode, ...] = get_args(ResumeMode)
#: ``stage.kind``: a supervised stage (M_O or a teacher) or the distilled student.
StageKind = Literal["train", "distill"]
STAGE_KINDS: tuple[StageKind, ...] = get_args(StageKind)


def number(cfg: DictConfig, key: str, kind: type[int] | type[float]) -> Any:
    """``cfg.<key>`` as an int or float, or a one-line error naming the key (``None`` stays)."""
    value = OmegaConf.select(cfg, key)
    if value is None:
        return None
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError) as exc:
        wanted = "an integer" if kind is int else "a number"
        raise ConfigError(f"{key} = {value!r} is not {wanted}") from exc


def check_config(cfg: DictConfig) -> None:
    """Reject inconsistent or out-of-range settings before any data is read (one line each)."""
    number(cfg, "seed", int)
    if cfg.empty_policy not in EMPTY_POLICIES:
        raise ConfigError(f"empty_policy '{cfg.empty_policy}' must be one of {EMPTY_POLICIES}")
    if cfg.nan_policy not in NAN_POLICIES:
        raise ConfigError(f"nan_policy '{cfg.nan_policy}' must be one of {NAN_POLICIES}")
    if cfg.resume not in RESUME_MODES:
        raise ConfigError(f"resume '{cfg.resume}' must be auto, true or false")
    model = cfg.model
    if "encoder_weights" in (model.get("kwargs") or {}):
        raise ConfigError(
            "model.kwargs.encoder_weights was replaced by model.backbone_weights (a path, or "
            "{encoder: PATH, side: PATH} for BAN)"
        )
    if model.scheduler not in DECAYS:
        raise ConfigError(f"model.scheduler '{model.scheduler}' must be one of {DECAYS}")
    if number(cfg, "model.optimizer.lr", float) <= 0:
        raise ConfigError(f"model.optimizer.lr = {model.optimizer.lr} must be > 0")
    if number(cfg, "data.batch_size", int) < 1:
        raise ConfigError(f"data.batch_size = {cfg.data.batch_size} must be >= 1")
    for key in ("loss", "aux_loss"):
        spec = model.get(key)
        kind = spec if isinstance(spec, str) or spec is None else spec.get("kind", "ce")
        if kind is not None and kind not in LOSSES:
            raise ConfigError(f"model.{key}: unknown loss '{kind}'; use one of {sorted(LOSSES)}")
        for option, allowed in (("dice", DICE_KINDS), ("average", AVERAGES)):
            value = None if isinstance(spec, str) or spec is None else spec.get(option)
            if value is not None and value not in allowed:
                raise ConfigError(f"model.{key}.{option}: unknown '{value}'; use one of {allowed}")
    check_label_threshold(OmegaConf.select(cfg, "data.label_threshold"))
    if cfg.data.augment not in AUGMENTATIONS:
        raise ConfigError(
            f"data.augment: unknown augmentation '{cfg.data.augment}'; use one of "
            f"{list(AUGMENTATIONS)}"
        )
    clip = number(cfg, "trainer.gradient_clip_val", float)
    if clip is not None and clip <= 0:
        raise ConfigError(f"trainer.gradient_clip_val = {clip} must be > 0 (or null)")
    scheme = PartitionScheme.from_config(cfg.partition)
    if cfg.stage.bucket is not None:
        try:
            scheme.index(cfg.stage.bucket)
        except ValueError as exc:
            raise ConfigError(f"stage '{cfg.stage.name}': {exc}") from exc
    if cfg.stage.kind not in STAGE_KINDS:
        raise ConfigError(f"stage '{cfg.stage.name}': kind '{cfg.stage.kind}' is not train/distill")
    if cfg.stage.kind == "distill":
        if number(cfg, "distill.lambda", float) < 0:
            raise ConfigError(f"distill.lambda = {cfg.distill['lambda']} must be >= 0")
        check_distill_options(cfg)
    for key in ("max_steps", "distill_max_steps", "warmup_steps", "val_every"):
        if number(cfg, f"schedule.{key}", int) < (1 if key != "warmup_steps" else 0):
            raise ConfigError(f"schedule.{key} = {cfg.schedule[key]} is out of range")
    trainer_overrides(cfg)


def check_distill_options(cfg: DictConfig) -> None:
    """The student's loss, routing and their parameters (one line each)."""
    distill = cfg.distill
    try:
        check_car_rule(str(distill.get("car_rule", "paper")))
        check_distill_loss(str(distill.get("loss") or "mse"))
        check_feature_norm(str(distill.get("feature_norm") or "none"))
        routing = check_routing(str(distill.get("routing") or "car"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    for key in ("temperature", "soft_width", "ensemble_tau"):
        value = number(cfg, f"distill.{key}", float)
        if value is not None and value <= 0:
            raise ConfigError(f"distill.{key} = {value} must be > 0")
    for key in ("dist_beta", "dist_gamma"):
        number(cfg, f"distill.{key}", float)
    single = distill.get("single_teacher")
    if single not in (None, "init"):
        raise ConfigError(f"distill.single_teacher '{single}' must be init or null")
    teachers = dict(distill.get("teachers") or {})
    if routing == "single" and single is None and set(teachers) != {"all"}:
        raise ConfigError(
            "distill.routing=single takes distill.teachers={all: PATH} "
            f"(or distill.single_teacher=init), not {sorted(teachers) or 'none'}"
        )


def check_splits(cfg: DictConfig, datamodule: Any) -> None:
    """Model selection must only ever see the validation split.

    The checkpoint monitor and the sweepers' metric must be validation metrics, and the
    validation and test splits must not share a file (same folder, a symlink to it, or
    overlapping pairs): each is a :class:`ConfigError`, not a warning.
    """
    for key, metric in (
        ("callbacks.model_checkpoint.monitor", cfg.callbacks.model_checkpoint.monitor),
        ("optimized_metric", cfg.optimized_metric),
    ):
        if not str(metric).startswith("val/"):
            raise ConfigError(f"{key} = '{metric}': model selection must use a val/ metric")
    splits = cfg.data.splits
    if str(splits.val) == str(splits.test):
        raise ConfigError(f"data.splits: val and test are both '{splits.val}'")
    datamodule.setup("fit")
    try:
        datamodule.setup("test")
    except DataError:
        if cfg.test_after_fit:
            raise
        return  # no usable test split (and none is evaluated): nothing to overlap with
    test_files = {s.image1.resolve(): s.image1 for s in datamodule.samples("test")}
    shared = [s.image1 for s in datamodule.samples("val") if s.image1.resolve() in test_files]
    if shared:
        raise ConfigError(
            f"{shared[0]}: the validation split shares {len(shared)} pair(s) with the test "
            "split; model selection on test data is not allowed"
        )
