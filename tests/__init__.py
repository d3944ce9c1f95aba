"""cdkd's test suite: one folder per package area, shared fixtures and helpers at the top."""
