"""Fixtures of the data tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.factories import write_pair


@pytest.fixture
def pair_writer() -> Callable[..., None]:
    """The :func:`write_pair` helper, for tests that need labels with exact contents."""
    return write_pair
