"""Tests of ``cdkd.metrics``."""
