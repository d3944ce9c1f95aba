"""Lightning modules and the training loop for every stage."""

from cdkd.training.module import ChangeDetectionModule

__all__ = ["ChangeDetectionModule"]
