"""Turning user text into model input, refusing what the model cannot take (no silent truncation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only to pad the batch: the checks below also serve the device client (no torch)
    import torch


class TextInputError(ValueError):
    """Empty text, text longer than the model takes, or mismatched text pairs."""


def check_texts(texts: Sequence[str], text_pairs: Sequence[str] | None) -> None:
    """Refuse no text, blank text, and a pair task's second texts that do not match the first one for one."""
    if not texts:
        raise TextInputError("no text given")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise TextInputError(f"{len(texts)} texts but {len(text_pairs)} second texts; pair tasks need one each")
    for i, text in enumerate([*texts, *(text_pairs or [])]):
        if not isinstance(text, str) or not text.strip():
            raise TextInputError(f"text {i % len(texts)} is empty; send at least one word")


def check_lengths(lengths: Sequence[int], max_tokens: int) -> None:
    """Refuse a text over `max_tokens` tokens (never truncated silently)."""
    too_long = [(i, n) for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        i, n = too_long[0]
        raise TextInputError(
            f"text {i} is {n} tokens long, over this model's maximum of {max_tokens}; shorten it or split it"
        )


def tokenize_for_inference(
    tokenizer,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None,
    max_tokens: int,
) -> dict[str, torch.Tensor]:
    """Tokenise a batch right-padded to its longest member; every text must fit in `max_tokens` tokens."""
    import torch

    check_texts(texts, text_pairs)
    encoded = tokenizer(list(texts), list(text_pairs) if text_pairs is not None else None, truncation=False)
    check_lengths([len(ids) for ids in encoded["input_ids"]], max_tokens)
    batch = tokenizer.pad(encoded, padding=True, return_tensors="pt")
    if "token_type_ids" not in batch:
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
