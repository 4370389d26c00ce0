"""The choices of the expert-exit commands, apart from the expert code: the command line builds its parser from
them without importing torch."""

from __future__ import annotations

EXPERT_TYPES: tuple[str, ...] = ("char_swap", "char_drop", "char_insert", "keyboard", "word_dropout", "case_punct")
DETECTOR_FEATURES: tuple[str, ...] = ("text", "text+embedding", "text+mobile")
MODES: tuple[str, ...] = ("standard", "detector", "true_type")
POLICY_NAMES: tuple[str, ...] = ("threshold", "entropy", "patience", "dimee", "dimee-edge")  # report.tunable_policies
TRAIN_SOURCES: tuple[str, ...] = ("train", "calibration")
