"""The interface every change-detection network in the zoo implements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn


class ChangeModel(nn.Module):
    """A bi-temporal change-detection network.

    ``forward(x1, x2)`` takes two normalised ``[B, 3, H, W]`` images and returns raw logits
    ``[B, C, h, w]`` at the head's native resolution (the training module resizes them for the
    loss and the prediction). ``C`` is :attr:`out_channels`: 2 for (unchanged, changed) logits
    trained with cross-entropy, 1 for a single change logit trained with BCE.

    Subclasses that carry training-only auxiliary heads build them only when constructed with
    ``aux_heads=True``, keep them in attributes named ``aux_*`` and return their logits from
    :meth:`forward_with_aux`; so the parameter count of a default-built model is the inference
    network's, and a checkpoint trained with the heads loads into the network without them.
    """

    out_channels: int = 2
    #: What the head's raw output measures. Two networks' raw outputs are only compared
    #: directly (e.g. for distillation) when this and the channel count agree; "distance"
    #: marks a metric-learning head (STANet) whose output is not a logit.
    output_space: ClassVar[str] = "logits"
    #: Dotted name of the submodule whose (first) input is the feature map; each network sets it.
    feature_module: ClassVar[str] = ""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_with_aux(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Main logits plus the logits of any auxiliary (deep-supervision) heads."""
        return self(x1, x2), []

    def feature_input(self, args: tuple[Any, ...]) -> torch.Tensor:
        """The feature map among the feature module's positional inputs: the first."""
        features: torch.Tensor = args[0]
        return features

    @property
    def feature_channels(self) -> int:
        """Width ``C_f`` of the feature map: the input width of the feature module's first
        convolution (a network whose feature module has none overrides this)."""
        module = self.get_submodule(self._feature_module_name())
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            raise TypeError(f"{type(self).__name__}: no convolution in '{self.feature_module}'")
        return conv.in_channels

    def _feature_module_name(self) -> str:
        if not self.feature_module:
            raise TypeError(f"{type(self).__name__} names no feature_module")
        return self.feature_module

    @contextmanager
    def capture_features(self) -> Iterator[list[torch.Tensor]]:
        """Collect the feature map of every forward run inside the ``with`` block.

        Yields a list that receives the feature module's input at each of its calls, in
        order; a forward that also computes auxiliary logits with the same module (e.g.
        ChangeStar's reverse direction) computes the main logits first, so the first entry
        of a forward is the main head's.
        """
        captured: list[torch.Tensor] = []

        def grab(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(self.feature_input(args))

        module = self.get_submodule(self._feature_module_name())
        handle = module.register_forward_pre_hook(grab)
        try:
            yield captured
        finally:
            handle.remove()

    def forward_features(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, logits)`` of one forward: the head's input and ``forward(x1, x2)``."""
        with self.capture_features() as captured:
            logits = self(x1, x2)
        if len(captured) != 1:
            raise RuntimeError(
                f"{type(self).__name__}: '{self.feature_module}' ran {len(captured)} times "
                "in one forward"
            )
        return captured[0], logits

    def change_logit(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-odds of change ``[B, 1, h, w]``: positive means "changed".

        For a 2-channel head this is ``logit_changed - logit_unchanged`` (so thresholding at 0
        equals the argmax, ties going to "unchanged"); for a 1-channel head it is the logit.
        """
        if logits.shape[1] == 2:
            return logits[:, 1:2] - logits[:, 0:1]
        return logits

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Binary change map ``[B, h, w]`` (bool) from the head's logits."""
        return self.change_logit(logits)[:, 0] > 0

    @classmethod
    def config_for_weights(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Constructor overrides needed to load ``state_dict`` (e.g. an authors' release format)."""
        return {}

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a foreign checkpoint's keys onto this model's; identity for our own format."""
        return state_dict
