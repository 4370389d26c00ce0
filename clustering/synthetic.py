"""Hand-made cached logits with known difficulty groups, for tests and examples (no model involved).

Each group of samples is right from exit ``correct_from`` on (confident there), and before that its top
output is a wrong class with a weaker margin ``early_margin`` (how confident the early exits look), unless
the sample is drawn (``early_correct_prob``) to be right early too, at the same weak margin. Regression
(``n_classes=1``): right exits are within a few hundredths of the label; wrong ones are 1..2 off, with the
sign alternating from exit to exit, so wrong exits disagree with each other (low agreement confidence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Group:
    size: int
    correct_from: int  # first exit that is right; num_layers + 1 means never
    early_margin: float = 0.3
    early_correct_prob: float = 0.0


@dataclass
class SyntheticExits:
    logits: np.ndarray  # [n, L, C]
    labels: np.ndarray  # [n]
    groups: np.ndarray  # [n], index into the group list
    embeddings: np.ndarray  # [n, d], group centre + noise (a stand-in for the embedding-layer feature)


def make_exit_logits(
    groups: Sequence[Group],
    num_layers: int = 6,
    n_classes: int = 3,
    confident_margin: float = 4.0,
    noise: float = 0.3,
    embedding_dim: int = 8,
    seed: int = 0,
    centre_seed: int = 0,
) -> SyntheticExits:
    """Build logits [n, L, C] (C = 1: regression values on a 0-5 scale) group by group. The groups'
    embedding centres depend on `centre_seed` only, so splits drawn with different `seed`s share them."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(centre_seed).normal(0.0, 3.0, size=(len(groups), embedding_dim))
    parts, labels, ids, embeddings = [], [], [], []
    for index, group in enumerate(groups):
        n = group.size
        exit_no = np.arange(1, num_layers + 1)[None, :]
        early_right = rng.random(n) < group.early_correct_prob
        right = (exit_no >= group.correct_from) | early_right[:, None]  # [n, L]
        strong = exit_no >= group.correct_from
        if n_classes == 1:
            y = rng.uniform(0.0, 5.0, size=n)
            # wrong exits are off by 1..2 with alternating sign, so consecutive wrong exits disagree
            signs = rng.choice([-1.0, 1.0], size=(n, 1)) * (-1.0) ** np.arange(num_layers)[None, :]
            offsets = rng.uniform(1.0, 2.0, size=(n, num_layers)) * signs
            values = y[:, None] + np.where(right, rng.normal(0.0, noise * 0.1, size=(n, num_layers)), offsets)
            block = values[:, :, None]
        else:
            y = rng.integers(0, n_classes, size=n)
            wrong = (y + rng.integers(1, n_classes, size=n)) % n_classes
            top = np.where(right, y[:, None], wrong[:, None])  # [n, L]
            size = np.where(strong, confident_margin, group.early_margin)
            block = rng.normal(0.0, noise, size=(n, num_layers, n_classes))
            np.put_along_axis(
                block, top[:, :, None], np.take_along_axis(block, top[:, :, None], axis=2) + size[:, :, None], axis=2
            )
        parts.append(block)
        labels.append(y)
        ids.append(np.full(n, index))
        embeddings.append(centres[index] + rng.normal(0.0, 1.0, size=(n, embedding_dim)))
    return SyntheticExits(
        logits=np.concatenate(parts).astype(np.float64),
        labels=np.concatenate(labels),
        groups=np.concatenate(ids),
        embeddings=np.concatenate(embeddings),
    )
