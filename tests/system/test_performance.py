"""The GPU-path options keep results: channels-last and compiled models, the loader worker count."""

from __future__ import annotations

import pytest
import torch

from cdkd.data import datamodule
from cdkd.data.datamodule import resolve_num_workers
from cdkd.errors import ConfigError
from cdkd.models import create_model

MODELS = ("fc_siam_diff", "tinycd")


def inputs(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, size, size, generator=gen), torch.randn(
        2, 3, size, size, generator=gen
    )


@pytest.mark.parametrize("model", MODELS)
def test_channels_last_gives_the_same_logits(model: str) -> None:
    torch.manual_seed(0)
    net = create_model(model).eval()
    x1, x2 = inputs()
    with torch.inference_mode():
        expected = net(x1, x2)
        net = net.to(memory_format=torch.channels_last)
        cl = torch.channels_last
        got = net(x1.to(memory_format=cl), x2.to(memory_format=cl))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_compiled_model_gives_the_same_logits(model: str) -> None:
    torch.manual_seed(0)
    net = create_model(model).eval()
    x1, x2 = inputs()
    with torch.inference_mode():
        expected = net(x1, x2)
        got = torch.compile(net)(x1, x2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("cpus", "local", "workers"), [(2, None, 1), (16, None, 8), (16, "4", 3)])
def test_auto_workers_leave_a_cpu_to_each_process(
    monkeypatch: pytest.MonkeyPatch, cpus: int, local: str | None, workers: int
) -> None:
    monkeypatch.setattr(datamodule, "available_cpus", lambda: cpus)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert resolve_num_workers("auto") == workers
    assert resolve_num_workers(3) == 3


@pytest.mark.parametrize("value", [-1, "many", 1.5])
def test_bad_worker_count_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="num_workers"):
        resolve_num_workers(value)
