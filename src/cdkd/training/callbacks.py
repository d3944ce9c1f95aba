"""Lightning plugins and callbacks that keep long runs safe: atomic checkpoints, resumable
random state, and a checkpoint on pre-emption (SIGTERM)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cdkd.files import atomic_path
from cdkd.runs.layout import RunFolder

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint once, straight into a temporary file beside the target, syncs
    it and renames it.

    A kill in the middle of a write leaves the previous checkpoints intact (and at worst a
    stray hidden ``.*.tmp`` file), never a truncated checkpoint that a later resume or
    evaluation would trust. Unlike Lightning's own writer, nothing is staged in memory or
    in the system temporary folder, which on cluster nodes is often too small for a
    checkpoint with optimizer state. A full disk is one :class:`~cdkd.files.WriteError`.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            torch.save(checkpoint, fh)


class RngStateCallback(Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) random states in every checkpoint and
    restores them on resume, so random draws of the model (e.g. dropout) continue as in an
    uninterrupted run. (The training order and augmentation need no state: see
    :mod:`cdkd.data.sampler`.)

    The states are applied when training starts, not when the checkpoint is read: Lightning
    draws random numbers while it restores and sets up the loops, which an uninterrupted run
    never does. The NumPy state is stored as tensors and plain numbers so that checkpoints
    stay loadable with ``torch.load(weights_only=True)``.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": {
                "kind": str(kind),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None

    @staticmethod
    def _restore(state_dict: dict[str, Any]) -> None:
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
        np_state = state_dict["numpy"]
        np.random.set_state(
            (
                np_state["kind"],
                np_state["keys"].numpy().astype(np.uint32),
                np_state["pos"],
                np_state["has_gauss"],
                np_state["gauss"],
            )
        )
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class PreemptionCheckpoint(Callback):
    """On SIGTERM (a cluster's pre-emption notice) save the run layout's last checkpoint.

    Lightning turns SIGTERM into :class:`SIGTERMException` at the next batch end; this saves
    the state reached then. The best checkpoint is left alone: an interrupted state was never
    validated. Other exceptions (e.g. a non-finite loss) save nothing, so the last checkpoint
    keeps the last good state.
    """

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.dirpath is None:
            return
        path = RunFolder(Path(checkpoint.dirpath)).last
        trainer.save_checkpoint(path)
        log.warning("SIGTERM at step %d: saved %s", trainer.global_step, path)


class FinalValidation(Callback):
    """Validate (and so checkpoint) at the last step when the schedule does not end on a
    validation step.

    Lightning validates every ``val_check_interval`` steps and stops at ``max_steps``: a run of
    7 steps validated every 3 would end with its last checkpoint at step 6 and never score its
    final weights. Asking the trainer to stop at the last step makes Lightning run the
    validation it runs before any early stop, and the checkpoint callback saves after it.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True
