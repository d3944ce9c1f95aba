"""Converters from other projects' checkpoint layouts to cdkd's state-dict keys."""
