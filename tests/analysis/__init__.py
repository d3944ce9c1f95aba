"""Tests of ``cdkd.analysis``."""
