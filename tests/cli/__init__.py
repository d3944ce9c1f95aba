"""Tests of ``cdkd.cli``."""
