"""cdkd: change detection with CAR-partitioned multi-teacher knowledge distillation."""

from cdkd.version import package_version

__version__ = package_version()
