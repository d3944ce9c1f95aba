"""The model zoo: every network takes two images and returns raw change logits."""

from cdkd.models.base import ChangeModel
from cdkd.models.registry import (
    ModelInfo,
    create_model,
    get_entry,
    list_models,
    register_model,
)

__all__ = ["ChangeModel", "ModelInfo", "create_model", "get_entry", "list_models", "register_model"]
