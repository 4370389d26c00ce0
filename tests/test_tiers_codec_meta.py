"""The handoff message: the codec's metadata section (round trip, every refusal) and the torch-free encode path
that a client without torch (the ONNX mobile client) uses."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tiers import (
    HandoffFormatError,
    HandoffMeta,
    decode_hidden_message,
    decode_meta,
    decode_token_message,
    encode_handoff,
    encode_hidden_message,
    encode_meta,
    encode_token_message,
    meta_size,
)


def _meta(n: int = 2, k: int = 2, c: int = 3, features: bool = True, distortions: bool = True) -> HandoffMeta:
    rng = np.random.default_rng(0)
    return HandoffMeta.build(
        rng.normal(size=(n, k, c)).astype(np.float32),
        budget_ms=1234.5,
        force_tier="cloud",
        features=rng.normal(size=(n, 8)).astype(np.float32) if features else None,
        distortions=["clean", "typo_swap"][:n] if distortions else None,
    )


def test_meta_round_trip_exact_size_and_fields():
    for features in (False, True):
        for distortions in (False, True):
            meta = _meta(features=features, distortions=distortions)
            raw = encode_meta(meta)
            names = list(meta.distortions) if distortions else None
            assert len(raw) == meta_size(2, 2, 3, 8 if features else 0, names)
            back, end = decode_meta(raw + b"payload")
            assert end == len(raw)
            np.testing.assert_array_equal(back.prior_logits, meta.prior_logits)
            assert back.budget_ms == 1234.5 and back.force_tier == "cloud" and back.distortions == meta.distortions
            if features:
                np.testing.assert_array_equal(back.features, meta.features)
            else:
                assert back.features is None and back.feature_array() is None


def test_hidden_and_token_messages_round_trip():
    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    meta = _meta()
    body = encode_hidden_message(hidden * mask[..., None], mask, 3, meta, "fp16")
    assert body[len(encode_meta(meta)) :] == encode_handoff(hidden * mask[..., None], mask, 3, "fp16")
    back, handoff = decode_hidden_message(body, 8, expected_next_layer=3)
    assert handoff.attention_mask.tolist() == mask.tolist() and back.n == 2
    token_meta = HandoffMeta.build(np.zeros((1, 0, 2)), 50, None)
    back, tokens = decode_token_message(encode_token_message([[2, 5, 3]], None, 10, token_meta), 10)
    assert tokens.input_ids == [(2, 5, 3)] and back.prior_exits == 0 and back.force_tier is None


def _mutated(raw: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r[:20], "shorter"),
        (lambda r: b"XXXX" + r[4:], "not a DIMEE handoff"),
        (lambda r: _mutated(r, 4, "<B", 2), "version"),
        (lambda r: _mutated(r, 5, "<B", 7), "forced tier code"),
        (lambda r: _mutated(r, 6, "<B", 8), "flags"),
        (lambda r: _mutated(r, 8, "<d", float("nan")), "budget"),
        (lambda r: _mutated(r, 8, "<d", 0.0), "budget"),
        (lambda r: _mutated(r, 16, "<I", 0), "samples"),
        (lambda r: _mutated(r, 16, "<I", 10**6), "samples"),
        (lambda r: _mutated(r, 24, "<I", 0), "shapes"),
        (lambda r: _mutated(r, 28, "<I", 0), "shapes"),  # features flagged, width 0
        (lambda r: _mutated(r, 32, "<I", 10**9), "limit"),
        (lambda r: _mutated(r, 32, "<I", 40), "declares"),
        (lambda r: r[:-3], "truncated"),
        (lambda r: _mutated(r, 36, "<f", float("inf")), "NaN or infinity"),
        (lambda r: r[: len(r) - 6] + b"\x05ty!ps", "distortion type"),
    ],
)
def test_meta_refusals_name_the_fault(mutate, message):
    raw = encode_meta(_meta())
    with pytest.raises(HandoffFormatError, match=message):
        decode_meta(mutate(raw), max_batch=16, max_bytes=4096)


def test_message_refuses_a_bare_payload_and_a_sample_count_mismatch():
    hidden, mask = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(HandoffFormatError, match="X-DIMEE-Meta"):
        decode_hidden_message(encode_handoff(hidden, mask, 3), 8)
    one = HandoffMeta.build(np.zeros((1, 2, 3)), 10, None)
    with pytest.raises(HandoffFormatError, match="declares 1 samples"):
        decode_hidden_message(encode_meta(one) + encode_handoff(hidden, mask, 3), 8)


def test_meta_construction_refuses_bad_values():
    with pytest.raises(HandoffFormatError, match="NaN"):
        HandoffMeta.build(np.full((1, 1, 2), np.nan), 10, None)
    with pytest.raises(HandoffFormatError, match="forced tier"):
        HandoffMeta.build(np.zeros((1, 1, 2)), 10, "moon")
    with pytest.raises(HandoffFormatError, match="distortion types for"):
        HandoffMeta.build(np.zeros((2, 1, 2)), 10, None, distortions=["clean"])
    with pytest.raises(HandoffFormatError, match="features must be"):
        HandoffMeta.build(np.zeros((2, 1, 2)), 10, None, features=np.zeros((3, 4)))


def test_codec_encodes_without_torch():
    """A client without torch imports the codec and encodes a whole message from numpy arrays."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        from tiers import HandoffMeta, encode_hidden_message, decode_meta
        from tiers.codec import payload_size
        hidden = np.ones((1, 3, 4), np.float32); mask = np.array([[1, 1, 0]])
        meta = HandoffMeta.build(np.zeros((1, 2, 2), np.float32), 100.0, None)
        body = encode_hidden_message(hidden, mask, 3, meta, "int8")
        _, start = decode_meta(body)
        assert len(body) - start == payload_size([2], 4, "int8")
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_group_size_keeps_the_metadata_section_within_the_receivers_limit():
    from tiers import handoff_group_size

    # 2 prior exits x 2 classes + a 384-wide routing feature = 388 floats = 1552 bytes per sample
    size = handoff_group_size(64 * 1024, 64, 2, 2, 384)
    assert size == (64 * 1024 - meta_size(0, 0, 0)) // 1552 == 42
    assert meta_size(size, 2, 2, 384) <= 64 * 1024 < meta_size(size + 1, 2, 2, 384)
    assert handoff_group_size(64 * 1024, 64, 2, 2) == 64  # no features: max_texts binds
    assert handoff_group_size(1024, 64, 2, 2, 4096) == 1  # never zero


def test_a_distortion_name_with_a_trailing_newline_is_refused():
    with pytest.raises(HandoffFormatError, match="distortion type"):
        HandoffMeta.build(np.zeros((1, 1, 2), np.float32), 100.0, None, distortions=["clean\n"])
