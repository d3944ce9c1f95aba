"""Whole-system tests: the pipeline end to end, tools as processes, speed, several devices."""
