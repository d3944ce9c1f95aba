"""Run folders: where each stage's outputs live (:mod:`.layout`), what a checkpoint records
about its training (:mod:`.meta`), and one writer per folder (:mod:`.lock`)."""
