"""Tests of ``cdkd.training``."""
