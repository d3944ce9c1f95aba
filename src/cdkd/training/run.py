"""The training entry: compose data, module, callbacks, loggers and trainer from a Hydra config."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import shutil
import subprocess
import sys
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import Accelerator, AcceleratorRegistry
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from cdkd.data.datamodule import process_batch_size
from cdkd.data.io import check_label_threshold
from cdkd.data.transforms import AUGMENTATIONS
from cdkd.errors import CdkdError, ConfigError, DataError, brief
from cdkd.files import write_json_atomic, write_text_atomic
from cdkd.inference.evaluate import evaluate
from cdkd.metrics import EMPTY_POLICIES
from cdkd.models.pretrained import random_parts, resolve_all
from cdkd.partition import PartitionScheme
from cdkd.training.callbacks import AtomicCheckpointIO, PreemptionCheckpoint, RngStateCallback
from cdkd.training.checkpoints import load_network, read_hparams, teacher_paths
from cdkd.training.distill import DistillationModule
from cdkd.training.losses import AVERAGES, DICE_KINDS, LOSSES
from cdkd.training.module import NAN_POLICIES, ChangeDetectionModule
from cdkd.training.schedule import Schedule, resolve_schedule, trainer_overrides

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", True, False)
# Outputs of a run that a fresh start must not mix with (moved aside, never deleted).
RUN_OUTPUTS = ("best.ckpt", "last.ckpt", "metrics.json", "provenance.json", "eval")
# Distributions whose versions every run records.
RECORDED_PACKAGES = (
    "cdkd",
    "torch",
    "lightning",
    "timm",
    "segmentation-models-pytorch",
    "albumentations",
    "torchmetrics",
    "numpy",
)


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
    if cfg.stage.kind not in ("train", "distill"):
        raise ConfigError(f"stage '{cfg.stage.name}': kind '{cfg.stage.kind}' is not train/distill")
    if cfg.stage.kind == "distill" and number(cfg, "distill.lambda", float) < 0:
        raise ConfigError(f"distill.lambda = {cfg.distill['lambda']} must be >= 0")
    for key in ("max_steps", "distill_max_steps", "warmup_steps", "val_every"):
        if number(cfg, f"schedule.{key}", int) < (1 if key != "warmup_steps" else 0):
            raise ConfigError(f"schedule.{key} = {cfg.schedule[key]} is out of range")
    trainer_overrides(cfg)


def uses_gpu(cfg: DictConfig) -> bool:
    """Whether the configured trainer will run on a CUDA device."""
    return torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")


def resolve_precision(cfg: DictConfig) -> str:
    """``auto`` precision: bf16 mixed precision on CUDA, full precision elsewhere."""
    precision = str(cfg.trainer.precision)
    if precision != "auto":
        return precision
    return "bf16-mixed" if uses_gpu(cfg) else "32-true"


def _plain(value: Any) -> Any:
    """A config value as plain Python (mappings and lists converted, scalars unchanged)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def resolve_world_size(cfg: DictConfig) -> int:
    """Processes the configured trainer runs: its devices, as Lightning resolves them, x nodes.

    ``trainer.devices`` may be a count, ``-1`` or ``"auto"`` (every device of the accelerator),
    a list of indices or a string of them (``"0,1"``); ``accelerator: auto`` and ``gpu`` pick
    what Lightning picks. Lightning's own device parsing does the counting.
    """
    flag = cfg.trainer.get("accelerator", "auto")
    flag = instantiate(flag) if OmegaConf.is_dict(flag) else flag
    devices = _plain(cfg.trainer.get("devices", "auto"))
    accelerator = type(flag) if isinstance(flag, Accelerator) else _accelerator_class(str(flag))
    try:
        if devices == "auto":
            count = accelerator.auto_device_count()
        else:
            count = len(accelerator.get_parallel_devices(accelerator.parse_devices(devices)))
    except (MisconfigurationException, TypeError, ValueError) as exc:
        raise ConfigError(f"trainer.devices = {devices!r}: {brief(exc)}") from exc
    nodes = number(cfg, "trainer.num_nodes", int)
    if count < 1 or nodes < 1:
        raise ConfigError(f"trainer.devices = {devices!r}, trainer.num_nodes = {nodes}: no process")
    return count * nodes


def _accelerator_class(flag: str) -> type[Accelerator]:
    """Lightning's accelerator for ``trainer.accelerator``, choosing for ``auto`` and ``gpu``."""
    choices = {"auto": ("tpu", "mps", "cuda", "cpu"), "gpu": ("mps", "cuda")}.get(flag, (flag,))
    if flag not in ("auto", "gpu") and flag not in AcceleratorRegistry:
        raise ConfigError(
            f"trainer.accelerator = {flag!r}: use auto, gpu or one of {list(AcceleratorRegistry)}"
        )
    for name in choices:
        accelerator = AcceleratorRegistry[name]["accelerator"]
        if accelerator.is_available():
            return accelerator
    raise ConfigError(f"trainer.accelerator = {flag!r}: no such device is available here")


def instantiate_datamodule(cfg: DictConfig, **overrides: Any) -> Any:
    """The datamodule of ``cfg.data``, without ``data.pretrained`` (a setting for the model)."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg.data):
        cfg.data.pop("pretrained", None)
    return instantiate(cfg.data, **overrides)


def pretrained_files(cfg: DictConfig) -> dict[str, Path]:
    """The weight file of each pretrained part the run starts from, found before data is read.

    The student starts from M_O and ``model.weights`` replaces every weight, so neither loads
    pretrained parts. On a real dataset, a part that the reference recipe starts pretrained
    but that stays random is logged as a warning.
    """
    model = cfg.model
    if cfg.stage.kind == "distill" or model.weights is not None:
        return {}
    files = resolve_all(model.name, bool(model.pretrained), _plain(model.get("backbone_weights")))
    if cfg.data.get("synthetic") is None:
        for part in random_parts(model.name, files):
            log.warning(
                "%s: %s (%s %s) starts from random weights, but the reference recipe loads them; "
                "set model.pretrained=true or model.backbone_weights",
                model.name,
                part.name,
                part.module,
                part.tag.replace(":", " "),
            )
    return files


def build_module(
    cfg: DictConfig, schedule: Schedule, files: Mapping[str, Path] | None = None
) -> ChangeDetectionModule:
    """The LightningModule of the configured stage, with provenance recorded in its hparams.

    ``files`` are the pretrained parts' weight files (:func:`pretrained_files`).
    """
    files = dict(files or {})
    model = cfg.model
    meta = {
        "stage": cfg.stage.name,
        "bucket": cfg.stage.bucket,
        "data": cfg.data.name,
        "normalize": _plain(model.normalize),
        "partition": _plain(cfg.partition),
    }
    common: dict[str, Any] = {
        "model": model.name,
        "model_kwargs": _plain(model.kwargs),
        "weights": model.weights,
        "pretrained": bool(files) and bool(model.pretrained),
        "backbone_weights": {part: str(path) for part, path in files.items()} or None,
        "loss": _plain(model.loss),
        "aux_weights": list(model.get("aux_weights") or []),
        "aux_loss": _plain(model.get("aux_loss")),
        "optimizer": _plain(model.optimizer),
        "scheduler": model.scheduler,
        "max_steps": schedule.max_steps,
        "warmup_steps": schedule.warmup_steps,
        "empty_policy": cfg.empty_policy,
        "nan_policy": cfg.nan_policy,
        "channels_last": cfg.get("channels_last"),
        "compile": bool(cfg.get("compile", False)),
        "meta": meta,
    }
    if cfg.stage.kind != "distill":
        return ChangeDetectionModule(**common)
    distill = cfg.distill
    teachers = teacher_paths(
        distill.teacher_dir,
        cfg.partition.teacher_stages,
        cfg.partition.run_suffix,
        distill.teachers,
    )
    try:
        return DistillationModule(
            init=str(distill.init),
            teachers={bucket: str(path) for bucket, path in teachers.items()},
            distill_lambda=float(distill["lambda"]),
            partition=meta["partition"],
            teacher_model=distill.teacher_model,
            car_rule=distill.get("car_rule", "paper"),
            **common,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


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


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to continue from, by ``ckpt_path`` and ``resume``.

    An explicit ``ckpt_path`` wins. ``resume=auto`` (default) continues from
    ``run_dir/last.ckpt`` when it exists; ``resume=true`` requires it; ``resume=false``
    starts afresh. A fresh start moves the outputs of an earlier run aside (to
    ``run_dir/superseded/<time>/``) so old and new checkpoints and metrics never mix.
    """
    if cfg.ckpt_path is not None:
        path = str(cfg.ckpt_path)
    else:
        last = run_dir / "last.ckpt"
        if cfg.resume is True and not last.is_file():
            raise ConfigError(f"{last}: resume=true but there is no checkpoint to resume from")
        path = str(last) if cfg.resume is not False and last.is_file() else None
    if path is not None:
        read_hparams(path, expected_model=cfg.model.name)  # one-line error if corrupt or foreign
        log.info("resuming from %s", path)
        return path
    stale = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if stale and rank_zero_only.rank == 0:  # other DDP ranks see the same decision
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = run_dir / "superseded" / stamp
        target.mkdir(parents=True)
        for item in stale:
            shutil.move(item, target / item.name)
        log.warning("fresh start: moved the earlier run's outputs to %s", target)
    return None


def finished_run(
    run_dir: Path, ckpt_path: str | None, schedule: Schedule, needs_test: bool = False
) -> dict[str, Any] | None:
    """The recorded results when this run already reached its last step and was evaluated.

    So a re-launched stage, pipeline or multirun sweep skips members that are done instead
    of evaluating them again; ``None`` means there is work left (``needs_test``: also when
    the recorded results lack the test split, e.g. a student of the pipeline's grid).
    """
    metrics_file = run_dir / "metrics.json"
    if ckpt_path != str(run_dir / "last.ckpt") or not metrics_file.is_file():
        return None
    step = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    if step < schedule.max_steps:
        return None
    try:
        recorded = json.loads(metrics_file.read_text())
        results = {"val/mIoU": recorded["val"]["per_image"]["mIoU"], "skipped": True}
        results["best_checkpoint"] = recorded["checkpoint"]
        if "test" in recorded:
            results["test/mIoU"] = recorded["test"]["per_image"]["mIoU"]
        elif needs_test:
            return None
    except (ValueError, KeyError, TypeError):
        log.warning("%s is not a run summary of this version: evaluating again", metrics_file)
        return None
    return results


def git_state() -> dict[str, Any] | None:
    """Commit and dirtiness of the git checkout the package runs from (None if not one)."""
    package = Path(__file__).resolve().parents[1]
    try:
        top = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
        if len(top) != 2 or not package.is_relative_to(Path(top[0]).resolve()):
            return None
        status = subprocess.run(
            ["git", "-C", top[0], "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": top[1], "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that determine a run's numbers."""
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_provenance(
    run_dir: Path, datamodule: Any, module: ChangeDetectionModule, resumed_from: str | None
) -> None:
    """Record what this start of the run depends on in ``run_dir/provenance.json``.

    Code (git commit and dirtiness), package versions, the command line, the CAR index
    checksums of every split and, for the student, the SHA-256 of M_O and the teachers.
    Earlier starts of the same run (before a resume) are kept under ``previous``.
    """
    path = run_dir / "provenance.json"
    record: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "resumed_from": resumed_from,
        "config": "config.yaml",
        "git": git_state(),
        "versions": package_versions(),
        "car_index_sha256": {
            split: _checksum(datamodule, split) for split in ("train", "val", "test")
        },
        "teacher_sha256": _plain(module.hparams.get("teacher_sha256")),
        "init_sha256": module.hparams.get("init_sha256"),
    }
    previous: list[Any] = []
    if resumed_from is not None and path.is_file():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
            previous = [*earlier.pop("previous", []), earlier]
        except (ValueError, AttributeError):
            log.warning("%s: unreadable, starting a new provenance record", path)
    write_json_atomic(path, {**record, "previous": previous})


def _checksum(datamodule: Any, split: str) -> str | None:
    """CAR index checksum of a split, or None when the run has no such split."""
    try:
        return datamodule.index_checksum(split)
    except DataError:
        return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one stage as configured; returns the best validation metrics (and test, if run)."""
    check_config(cfg)
    files = pretrained_files(cfg)  # a missing weight file stops the run before anything is written
    # Lightning prints through its own handler; stop a second copy via Hydra's root handler.
    logging.getLogger("lightning.pytorch").propagate = False
    # The run folder always holds config.yaml before the first checkpoint: expected, not news.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # The module's batch hooks are meant to run (the datamodule defines none).
    warnings.filterwarnings("ignore", message=r"You have overridden `on_.*_batch_transfer`")
    # Lightning's own use of a torch API that torch deprecated; nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    log.info("seed %d", cfg.seed)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    world = resolve_world_size(cfg)
    process_batch_size(int(cfg.data.batch_size), world)  # refuses an uneven split up front
    ckpt_path = resume_checkpoint(cfg, run_dir)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = instantiate_datamodule(cfg)
    check_splits(cfg, datamodule)
    schedule = resolve_schedule(cfg, datamodule, world)
    finished = finished_run(run_dir, ckpt_path, schedule, bool(cfg.test_after_fit))
    if finished is not None:
        log.info("%s: already finished (delete metrics.json or resume=false to redo)", run_dir)
        return finished
    module = build_module(cfg, schedule, files)
    if rank_zero_only.rank == 0:
        write_provenance(run_dir, datamodule, module, ckpt_path)
    loggers = [instantiate(lg) for lg in cfg.logger.values() if lg is not None]
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks += [RngStateCallback(), PreemptionCheckpoint()]
    if not loggers:  # a learning-rate monitor has nowhere to write without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    extra: dict[str, Any] = {}
    if cfg.trainer.get("gradient_clip_val") is None and cfg.model.get("grad_clip") is not None:
        extra["gradient_clip_val"] = float(cfg.model.grad_clip)  # the model's own recipe
    if not uses_gpu(cfg) and cfg.trainer.get("sync_batchnorm"):
        extra["sync_batchnorm"] = False  # SyncBatchNorm exists only for CUDA devices
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        **extra,
        max_steps=schedule.max_steps,
        val_check_interval=min(schedule.val_every, schedule.max_steps),
        precision=resolve_precision(cfg),
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    if trainer.world_size != world:  # e.g. a launcher's environment with other process counts
        raise ConfigError(
            f"trainer: Lightning runs {trainer.world_size} processes but trainer.devices x "
            f"trainer.num_nodes give {world}; make them agree"
        )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException as exc:
        raise CdkdError(
            f"{run_dir}: stopped by SIGTERM at step {trainer.global_step}; last.ckpt holds that "
            "state, run the same command again to resume"
        ) from exc

    ckpt_cb = trainer.checkpoint_callback
    best_path = getattr(ckpt_cb, "best_model_path", "") or ""
    best_score = getattr(ckpt_cb, "best_model_score", None)
    results: dict[str, Any] = {
        "val/mIoU": float(best_score) if best_score is not None else float("nan"),
        "best_checkpoint": best_path,
    }
    if best_path and trainer.is_global_zero:
        splits = ("val", "test") if cfg.test_after_fit else ("val",)
        summary = evaluate_best(cfg, datamodule, best_path, run_dir, splits)
        if "test" in summary:
            results["test/mIoU"] = summary["test"]["per_image"]["mIoU"]
    return results


def evaluate_best(
    cfg: DictConfig,
    datamodule: Any,
    best_path: str,
    run_dir: Path,
    splits: tuple[str, ...] = ("val", "test"),
) -> dict[str, Any]:
    """Score the best checkpoint on val (what selected it) and test; write ``metrics.json``.

    Each split's full results (metrics, per-image CSV) go to ``run_dir/eval/<split>/``; the
    run's ``metrics.json`` summarises the splits and records the checksums of the CAR
    indexes of the data it saw. ``test_after_fit=false`` leaves test out (``splits=("val",)``),
    so a run chosen among others on validation is never scored on test before the choice.
    """
    net = load_network(best_path, expected_model=cfg.model.name)
    device = "cuda" if uses_gpu(cfg) else "cpu"
    summary: dict[str, Any] = {"checkpoint": str(best_path), "stage": cfg.stage.name}
    for split in splits:
        datamodule.setup("test" if split == "test" else "validate")
        result = evaluate(
            net,
            datamodule.dataloader(split),
            run_dir / "eval" / split,
            device=device,
            empty_policy=cfg.empty_policy,
            extra={"split": split, "checkpoint": str(best_path)},
        )
        summary[split] = {k: result[k] for k in ("count", "per_image", "pooled")}
    summary["car_index_sha256"] = {
        split: _checksum(datamodule, split) for split in ("train", "val", "test")
    }
    write_json_atomic(run_dir / "metrics.json", summary)
    return summary
