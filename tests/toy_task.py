"""A separable toy SST-2 task and a tiny random-init encoder folder, for tests that train for real.

Sentences are drawn from the tiny tokenizer's words (tests.factories.WORDS): a positive sentence holds one or
two of POSITIVE, a negative one of NEGATIVE, around neutral filler; so one token decides the label, and a tiny
random-init BERT learns it in a few dozen steps. Written as `<data_dir>/sst2/{train,validation}.jsonl`, the
layout `glue_eval.data` reads offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import tiny_bert_config
from tests.factories import tiny_tokenizer

POSITIVE = ("good", "great", "fun", "brilliant", "funny")
NEGATIVE = ("bad", "awful", "boring", "dull", "sad")
FILLER = ("the", "a", "film", "movie", "plot", "story", "acting", "cast", "scene", "music", "was", "is", "it", "this")


def toy_sentences(n: int, seed: int) -> list[dict]:
    """n rows {"sentence", "label", "idx"}, labels balanced and shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    rows = []
    for i, label in enumerate(labels):
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 8))))
        cue = POSITIVE if label == 1 else NEGATIVE
        for _ in range(int(rng.integers(1, 3))):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(cue)))
        rows.append({"sentence": " ".join(words), "label": int(label), "idx": i})
    return rows


def write_toy_glue(data_dir: Path, n_train: int = 400, n_validation: int = 120) -> Path:
    folder = Path(data_dir) / "sst2"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("validation", n_validation, 2)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for row in toy_sentences(n, seed):
                f.write(json.dumps(row) + "\n")
    return Path(data_dir)


def write_tiny_encoder(folder: Path, num_layers: int = 4, seed: int = 0, extra_words=()) -> Path:
    """A random-init BERT encoder and the tiny tokenizer (plus `extra_words`) saved in HF format (what --model
    accepts)."""
    import torch
    from transformers import AutoModel

    tokenizer = tiny_tokenizer(extra_words)
    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_bert_config(num_layers=num_layers, vocab=len(tokenizer)), add_pooling_layer=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
