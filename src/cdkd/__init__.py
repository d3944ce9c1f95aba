"""cdkd: change detection with CAR-partitioned multi-teacher knowledge distillation."""

__version__ = "0.1.0"
