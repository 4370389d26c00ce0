"""Binary handoff format for hidden states between tiers (never pickle).

Layout, little-endian:

    offset  size      field
    0       4         magic b"DMHS"
    4       1         format version (1)
    5       1         value encoding: 0 fp32, 1 fp16, 2 int8 with one fp32 scale per token
    6       2         reserved (0)
    8       4         batch size B (uint32)
    12      4         hidden size H (uint32)
    16      4         next layer: the 1-based layer the receiver runs first (uint32)
    20      4*B       real-token count of each sample (uint32)
    ...     4*T       int8 only: per-token scales, fp32, T = sum of counts
    ...     T*H*v     values of the real tokens, sample after sample, token-major

Only real tokens travel (no padding); the receiver re-pads on the right and rebuilds the attention mask
from the counts. Right re-padding is exact because token positions are already baked into the states.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

MAGIC = b"DMHS"
VERSION = 1
CONTENT_TYPE = "application/x-dimee-hidden-states"
_HEADER = struct.Struct("<4sBBHIII")
ENCODINGS: dict[str, int] = {"fp32": 0, "fp16": 1, "int8": 2}
_NUMPY_DTYPES = {0: np.float32, 1: np.float16, 2: np.int8}
_BYTES_PER_VALUE = {0: 4, 1: 2, 2: 1}


class HandoffFormatError(ValueError):
    """A handoff body that is malformed, truncated, or does not fit the receiving tier."""


@dataclass
class Handoff:
    hidden: torch.Tensor  # [batch, max_len, hidden], fp32, zero-padded on the right
    attention_mask: torch.Tensor  # [batch, max_len], int64
    next_layer: int
    encoding: str


def header_size(batch: int) -> int:
    return _HEADER.size + 4 * batch


def payload_size(token_counts: list[int] | np.ndarray, hidden_size: int, encoding: str = "fp32") -> int:
    """Exact byte size of a handoff body, without building it (the cost model uses this)."""
    code = _encoding_code(encoding)
    counts = np.asarray(token_counts, dtype=np.int64)
    total = int(counts.sum())
    scales = 4 * total if code == 2 else 0
    return header_size(len(counts)) + scales + total * hidden_size * _BYTES_PER_VALUE[code]


def _encoding_code(encoding: str) -> int:
    if encoding not in ENCODINGS:
        raise HandoffFormatError(f"unknown handoff encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    return ENCODINGS[encoding]


def quantise_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-token int8: scale = max|x| / 127 per row; |error| <= scale / 2."""
    peak = np.abs(values).max(axis=1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    quantised = np.clip(np.rint(values / scales[:, None]), -127, 127).astype(np.int8)
    return quantised, scales


def encode_handoff(
    hidden: torch.Tensor, attention_mask: torch.Tensor, next_layer: int, encoding: str = "fp32"
) -> bytes:
    """Serialise the real tokens' hidden states of a batch."""
    code = _encoding_code(encoding)
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise HandoffFormatError(
            f"expected hidden [batch, seq, hidden] and mask [batch, seq], got {tuple(hidden.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    keep = attention_mask.bool()
    counts = keep.sum(dim=1).cpu().numpy().astype(np.uint32)
    tokens = hidden.detach()[keep].float().cpu().numpy()  # [T, H], sample after sample, in token order
    header = _HEADER.pack(MAGIC, VERSION, code, 0, hidden.shape[0], hidden.shape[2], next_layer)
    parts = [header, counts.astype("<u4").tobytes()]
    if code == 2:
        quantised, scales = quantise_int8(tokens)
        parts += [scales.astype("<f4").tobytes(), quantised.tobytes()]
    else:
        parts.append(tokens.astype(np.dtype(_NUMPY_DTYPES[code]).newbyteorder("<")).tobytes())
    return b"".join(parts)


def decode_handoff(
    body: bytes,
    hidden_size: int,
    expected_next_layer: int | None = None,
    max_batch: int = 256,
    max_seq_len: int = 512,
    allowed_encodings: tuple[str, ...] = tuple(ENCODINGS),
) -> Handoff:
    """Parse and validate a handoff body; every check names what was wrong."""
    if len(body) < _HEADER.size:
        raise HandoffFormatError(f"body of {len(body)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, code, _reserved, batch, hidden, next_layer = _HEADER.unpack_from(body)
    if magic != MAGIC:
        raise HandoffFormatError(f"not a DIMEE hidden-state body (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise HandoffFormatError(f"handoff format version {version} is not supported (this tier reads {VERSION})")
    names = {v: k for k, v in ENCODINGS.items()}
    if code not in names or names[code] not in allowed_encodings:
        raise HandoffFormatError(
            f"value encoding code {code} is not accepted here; this tier accepts {', '.join(allowed_encodings)}"
        )
    if not 1 <= batch <= max_batch:
        raise HandoffFormatError(f"batch size {batch} is outside 1..{max_batch}")
    if hidden != hidden_size:
        raise HandoffFormatError(f"hidden size {hidden} does not match this model's {hidden_size}")
    if expected_next_layer is not None and next_layer != expected_next_layer:
        raise HandoffFormatError(f"body continues at layer {next_layer} but this tier starts at layer {expected_next_layer}")
    counts_end = header_size(batch)
    if len(body) < counts_end:
        raise HandoffFormatError(f"body truncated: {len(body)} bytes, the token counts need {counts_end}")
    counts = np.frombuffer(body, dtype="<u4", count=batch, offset=_HEADER.size).astype(np.int64)
    if counts.min() < 1 or counts.max() > max_seq_len:
        raise HandoffFormatError(f"token counts must be within 1..{max_seq_len}, got {counts.min()}..{counts.max()}")
    expected = payload_size(counts, hidden, names[code])
    if len(body) != expected:
        raise HandoffFormatError(f"body is {len(body)} bytes but its header declares {expected}")
    total = int(counts.sum())
    offset = counts_end
    if code == 2:
        scales = np.frombuffer(body, dtype="<f4", count=total, offset=offset)
        offset += 4 * total
        values = np.frombuffer(body, dtype=np.int8, count=total * hidden, offset=offset).reshape(total, hidden)
        tokens = values.astype(np.float32) * scales[:, None]
    else:
        dtype = np.dtype(_NUMPY_DTYPES[code]).newbyteorder("<")
        tokens = np.frombuffer(body, dtype=dtype, count=total * hidden, offset=offset).reshape(total, hidden)
        tokens = tokens.astype(np.float32)
    if not np.isfinite(tokens).all():
        raise HandoffFormatError("hidden states contain NaN or infinity")
    max_len = int(counts.max())
    mask = torch.arange(max_len).unsqueeze(0) < torch.from_numpy(counts).unsqueeze(1)
    padded = torch.zeros((batch, max_len, hidden), dtype=torch.float32)
    padded[mask] = torch.from_numpy(np.ascontiguousarray(tokens))
    return Handoff(padded, mask.long(), int(next_layer), names[code])


# ---- token ids: what a tier receives at boundary 0 (before any layer ran) -----------------------------------
#
#     offset  size   field
#     0       4      magic b"DMTK"
#     4       1      format version (1)
#     5       3      reserved (0)
#     8       4      batch size B (uint32)
#     12      4      vocabulary size V the ids were made for (uint32): the receiver refuses another
#     16      4*B    token count of each sample (uint32)
#     ...     4*T    token ids, sample after sample (uint32, each < V)
#     ...     T      token type ids (uint8; zeros for models without them)
TOKENS_MAGIC = b"DMTK"
TOKENS_CONTENT_TYPE = "application/x-dimee-token-ids"
_TOKENS_HEADER = struct.Struct("<4sB3xII")


@dataclass
class TokenBatch:
    """Token ids of a batch, one tuple per sample (real tokens only), and their token type ids."""

    input_ids: list[tuple[int, ...]]
    token_type_ids: list[tuple[int, ...]]


def token_payload_size(token_counts: list[int] | np.ndarray) -> int:
    """Exact byte size of a token-id body (the cost model charges a boundary-0 hop with this)."""
    counts = np.asarray(token_counts, dtype=np.int64)
    return _TOKENS_HEADER.size + 4 * len(counts) + 5 * int(counts.sum())


def hop_payload_size(token_counts: list[int] | np.ndarray, boundary: int, hidden_size: int, encoding: str) -> int:
    """Bytes of a hop at `boundary`: token ids at 0, hidden states after layer `boundary` otherwise."""
    if boundary == 0:
        return token_payload_size(token_counts)
    return payload_size(token_counts, hidden_size, encoding)


def encode_tokens(
    input_ids: list[tuple[int, ...]] | list[list[int]],
    token_type_ids: list | None,
    vocab_size: int,
) -> bytes:
    """Serialise token ids (and type ids, zeros when None) of a batch."""
    if not input_ids:
        raise HandoffFormatError("cannot encode an empty batch of token ids")
    counts = np.array([len(seq) for seq in input_ids], dtype=np.int64)
    ids = np.concatenate([np.asarray(seq, dtype=np.int64) for seq in input_ids])
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise HandoffFormatError(f"token ids must lie in 0..{vocab_size - 1}")
    if token_type_ids is None:
        types = np.zeros(ids.size, dtype=np.uint8)
    else:
        types = np.concatenate([np.asarray(seq, dtype=np.int64) for seq in token_type_ids])
        if types.shape != ids.shape or (types.size and (types.min() < 0 or types.max() > 255)):
            raise HandoffFormatError("token type ids must match the token ids one for one and lie in 0..255")
    header = _TOKENS_HEADER.pack(TOKENS_MAGIC, VERSION, len(input_ids), int(vocab_size))
    return b"".join(
        [header, counts.astype("<u4").tobytes(), ids.astype("<u4").tobytes(), types.astype(np.uint8).tobytes()]
    )


def decode_tokens(body: bytes, vocab_size: int, max_batch: int = 256, max_seq_len: int = 512) -> TokenBatch:
    """Parse and validate a token-id body: magic, version, vocabulary, counts, exact length, id range."""
    if len(body) < _TOKENS_HEADER.size:
        raise HandoffFormatError(f"body of {len(body)} bytes is shorter than the {_TOKENS_HEADER.size}-byte header")
    magic, version, batch, vocab = _TOKENS_HEADER.unpack_from(body)
    if magic != TOKENS_MAGIC:
        raise HandoffFormatError(f"not a DIMEE token-id body (magic {magic!r}, expected {TOKENS_MAGIC!r})")
    if version != VERSION:
        raise HandoffFormatError(f"token-id format version {version} is not supported (this tier reads {VERSION})")
    if vocab != vocab_size:
        raise HandoffFormatError(f"token ids were made for a vocabulary of {vocab}; this model has {vocab_size}")
    if not 1 <= batch <= max_batch:
        raise HandoffFormatError(f"batch size {batch} is outside 1..{max_batch}")
    counts_end = _TOKENS_HEADER.size + 4 * batch
    if len(body) < counts_end:
        raise HandoffFormatError(f"body truncated: {len(body)} bytes, the token counts need {counts_end}")
    counts = np.frombuffer(body, dtype="<u4", count=batch, offset=_TOKENS_HEADER.size).astype(np.int64)
    if counts.min() < 1 or counts.max() > max_seq_len:
        raise HandoffFormatError(f"token counts must be within 1..{max_seq_len}, got {counts.min()}..{counts.max()}")
    expected = token_payload_size(counts)
    if len(body) != expected:
        raise HandoffFormatError(f"body is {len(body)} bytes but its header declares {expected}")
    total = int(counts.sum())
    ids = np.frombuffer(body, dtype="<u4", count=total, offset=counts_end).astype(np.int64)
    types = np.frombuffer(body, dtype=np.uint8, count=total, offset=counts_end + 4 * total).astype(np.int64)
    if ids.max() >= vocab_size:
        raise HandoffFormatError(f"token id {int(ids.max())} is outside this model's vocabulary of {vocab_size}")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return TokenBatch(
        [tuple(ids[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])],
        [tuple(types[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])],
    )
