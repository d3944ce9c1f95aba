"""Tests of ``cdkd.inference``."""
