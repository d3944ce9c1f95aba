"""Tests of ``cdkd.models``."""
