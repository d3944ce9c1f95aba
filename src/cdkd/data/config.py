"""The datamodule of a composed config (training, evaluation and analysis build it alike)."""

from __future__ import annotations

import copy
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from cdkd.data.datamodule import ChangeDataModule
from cdkd.errors import ConfigError


def datamodule_from_config(cfg: DictConfig, **overrides: Any) -> ChangeDataModule:
    """The datamodule of ``cfg.data``, without ``data.pretrained`` (a setting for the model).

    ``overrides`` replace keys of ``cfg.data`` (e.g. ``bucket=None`` for the whole dataset).
    """
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg.data):
        cfg.data.pop("pretrained", None)
    datamodule = instantiate(cfg.data, **overrides)
    if not isinstance(datamodule, ChangeDataModule):
        raise ConfigError(
            f"data._target_ = {cfg.data.get('_target_')!r} builds a "
            f"{type(datamodule).__name__}, not a cdkd.data.ChangeDataModule"
        )
    return datamodule
