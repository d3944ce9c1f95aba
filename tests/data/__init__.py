"""Tests of ``cdkd.data`` (and of the CAR partition rule, ``cdkd.partition``)."""
