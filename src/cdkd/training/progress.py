"""The training progress bar: runs are counted in optimizer steps, so it shows steps."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, its description counting steps towards the schedule's end.

    Every stage ends after ``max_steps`` optimizer steps with no epoch limit, for which
    Lightning's own description reads ``Epoch 14/-2``; this one reads ``step 2800/4000 (epoch
    14)`` and follows every step (Lightning writes the description once per epoch).
    """

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        description = f"step {trainer.global_step}{total} (epoch {current_epoch})"
        width = len(self.validation_description)
        return f"{description:{width}}" if width > len(description) else description

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.is_disabled or self.progress is None or self.train_progress_bar_id is None:
            return
        description = self._get_train_description(trainer.current_epoch)
        if self.theme.description:
            description = f"[{self.theme.description}]{description}"
        self.progress.update(self.train_progress_bar_id, description=description)
