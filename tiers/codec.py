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

A handoff between tiers is a *message*: a metadata section (prior exits' logits, deadline budget, forcing,
routing features, distortion types; layout below `HandoffMeta`) followed by one payload, hidden states (above)
or token ids (`encode_tokens`). `encode_hidden_message` / `decode_hidden_message` and `encode_token_message` /
`decode_token_message` are the pairs every sender and receiver uses (the services, and clients without torch:
this module imports torch only to build the decoded tensors).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch only where tensors are built: a client can encode with numpy alone
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
    hidden: "torch.Tensor"  # [batch, max_len, hidden], fp32, zero-padded on the right
    attention_mask: "torch.Tensor"  # [batch, max_len], int64
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


def _as_numpy(values: Any, dtype: type | None = None) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array, without importing torch."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        if dtype is not None and values.dtype.is_floating_point:
            values = values.float()
        values = values.numpy()
    return np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)


def encode_handoff(hidden: Any, attention_mask: Any, next_layer: int, encoding: str = "fp32") -> bytes:
    """Serialise the real tokens' hidden states of a batch (torch tensors or numpy arrays, [B, S, H] and
    [B, S]); the payload alone: between tiers it travels after a metadata section (`encode_hidden_message`)."""
    code = _encoding_code(encoding)
    states = _as_numpy(hidden, np.float32)
    mask = _as_numpy(attention_mask)
    if states.ndim != 3 or mask.shape != states.shape[:2]:
        raise HandoffFormatError(
            f"expected hidden [batch, seq, hidden] and mask [batch, seq], got {tuple(states.shape)} and "
            f"{tuple(mask.shape)}"
        )
    keep = mask.astype(bool)
    counts = keep.sum(axis=1).astype(np.uint32)
    tokens = states[keep]  # [T, H], sample after sample, in token order
    header = _HEADER.pack(MAGIC, VERSION, code, 0, states.shape[0], states.shape[2], next_layer)
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
    import torch  # deferred: encoding needs numpy only

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


# ---- the metadata section: what travels with every handoff beside its payload -------------------------------
#
#     offset  size      field
#     0       4         magic b"DMMD"
#     4       1         metadata version (1)
#     5       1         forced tier: 0 none, 1 mobile, 2 edge, 3 cloud
#     6       1         flags: bit 0 routing features present, bit 1 distortion types present
#     7       1         reserved (0)
#     8       8         budget: how long the sender waits for the answer, ms (float64, 0 < budget <= 3.6e6)
#     16      4         samples n (uint32; the payload's batch size)
#     20      4         prior exits k: exits 1..k were computed before the boundary (uint32; 0 for token ids)
#     24      4         labels per exit c (uint32)
#     28      4         routing feature width d (uint32; 0 without features)
#     32      4         section size in bytes, this header included (uint32)
#     36      4*n*k*c   prior logits, float32 [n, k, c]
#     ...     4*n*d     routing features, float32 [n, d] (flag bit 0 only)
#     ...     variable  distortion types (flag bit 1 only): per sample, a uint8 length 1..64 and that many
#                       ASCII bytes matching DISTORTION_NAME
#
# Every number is finite; the section's size is exact; the payload follows it directly.
META_MAGIC = b"DMMD"
META_VERSION = 1
_META_HEADER = struct.Struct("<4sBBBBdIIIII")
FORCE_TIERS: tuple[str, ...] = ("mobile", "edge", "cloud")  # tiers.plan.TIERS, codes 1..3 (0: not forced)
MAX_BUDGET_MS = 3_600_000.0
MAX_META_WIDTH = 65_536  # largest c, d or k accepted (a model's labels, hidden size, layers)
#: A distortion type's name as it travels between tiers (the receiving tier checks it against its experts).
DISTORTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")  # used with fullmatch (no trailing newline)
_FEATURES, _DISTORTIONS = 1, 2


@dataclass(frozen=True)
class HandoffMeta:
    """What the receiving tier needs beside the payload: the logits of exits 1..prior_exits [n, k, c] (so its
    policy sees exits 1..k as it was fitted), the sender's deadline budget, forcing, routing features [n, d]
    (only for a policy fitted on them) and each sample's distortion type (only with expert exits; absent:
    every sample clean). Checked on construction: shapes agree, numbers finite, names well-formed."""

    prior_logits: np.ndarray
    budget_ms: float
    force_tier: str | None = None
    features: np.ndarray | None = None
    distortions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        prior = np.ascontiguousarray(self.prior_logits, dtype=np.float32)
        if prior.ndim != 3 or prior.shape[0] < 1 or prior.shape[2] < 1:
            raise HandoffFormatError(f"prior logits must be [n >= 1, exits, labels >= 1], got {list(prior.shape)}")
        if max(prior.shape[1:]) > MAX_META_WIDTH:
            raise HandoffFormatError(f"prior logits {list(prior.shape)} exceed {MAX_META_WIDTH} exits or labels")
        if not np.isfinite(prior).all():
            raise HandoffFormatError("prior logits contain NaN or infinity")
        object.__setattr__(self, "prior_logits", prior)
        budget = float(self.budget_ms)
        if not (math.isfinite(budget) and 0 < budget <= MAX_BUDGET_MS):
            raise HandoffFormatError(f"budget {budget} ms is outside (0, {MAX_BUDGET_MS:g}]")
        object.__setattr__(self, "budget_ms", budget)
        if self.force_tier is not None and self.force_tier not in FORCE_TIERS:
            raise HandoffFormatError(f"forced tier {self.force_tier!r} is none of {', '.join(FORCE_TIERS)}")
        if self.features is not None:
            features = np.ascontiguousarray(self.features, dtype=np.float32)
            if features.ndim != 2 or features.shape[0] != self.n or not 1 <= features.shape[1] <= MAX_META_WIDTH:
                raise HandoffFormatError(f"features must be [{self.n}, 1..{MAX_META_WIDTH}], got {list(features.shape)}")
            if not np.isfinite(features).all():
                raise HandoffFormatError("features contain NaN or infinity")
            object.__setattr__(self, "features", features)
        if self.distortions is not None:
            names = tuple(str(name) for name in self.distortions)
            if len(names) != self.n:
                raise HandoffFormatError(f"{len(names)} distortion types for {self.n} samples")
            bad = [name for name in names if not DISTORTION_NAME.fullmatch(name)]
            if bad:
                raise HandoffFormatError(f"distortion type {bad[0][:80]!r} does not match {DISTORTION_NAME.pattern}")
            object.__setattr__(self, "distortions", names)

    @classmethod
    def build(
        cls,
        prior: np.ndarray,
        budget_ms: float,
        force_tier: str | None,
        features: np.ndarray | None = None,
        distortions: list[str] | None = None,
    ) -> "HandoffMeta":
        return cls(prior, budget_ms, force_tier, features, None if distortions is None else tuple(distortions))

    @property
    def n(self) -> int:
        return int(self.prior_logits.shape[0])

    @property
    def prior_exits(self) -> int:
        return int(self.prior_logits.shape[1])

    @property
    def num_labels(self) -> int:
        return int(self.prior_logits.shape[2])

    @property
    def feature_dim(self) -> int | None:
        return None if self.features is None else int(self.features.shape[1])

    def logits(self) -> np.ndarray:
        """The prior logits [n, prior_exits, num_labels], float32."""
        return self.prior_logits

    def feature_array(self) -> np.ndarray | None:
        """Routing features [n, feature_dim] (float64), or None when none travel with this handoff."""
        return None if self.features is None else self.features.astype(np.float64)


def meta_size(n: int, prior_exits: int, num_labels: int, feature_dim: int = 0, distortions: list[str] | None = None) -> int:
    """Exact byte size of a metadata section (senders size their groups with it)."""
    names = 0 if distortions is None else sum(1 + len(name) for name in distortions)
    return _META_HEADER.size + 4 * n * (prior_exits * num_labels + feature_dim) + names


def handoff_group_size(
    max_meta_bytes: int,
    max_texts: int,
    prior_exits: int,
    num_labels: int,
    feature_dim: int = 0,
    longest_distortion: int | None = None,
) -> int:
    """Most samples one handoff request may carry so that its metadata section stays within the receiver's
    `max_meta_bytes` (prior logits and routing features grow with the group) and its `max_texts`; every sender
    (a served tier, the device client) sizes its groups with this."""
    per_sample = meta_size(1, prior_exits, num_labels, feature_dim) - meta_size(0, 0, 0)
    if longest_distortion is not None:
        per_sample += 1 + longest_distortion
    room = max(1, (max_meta_bytes - meta_size(0, 0, 0)) // max(1, per_sample))
    return int(min(room, max_texts))


def encode_meta(meta: HandoffMeta) -> bytes:
    """The metadata section of `meta` (layout above)."""
    flags = (_FEATURES if meta.features is not None else 0) | (_DISTORTIONS if meta.distortions is not None else 0)
    force = 0 if meta.force_tier is None else FORCE_TIERS.index(meta.force_tier) + 1
    width = meta.feature_dim or 0
    size = meta_size(meta.n, meta.prior_exits, meta.num_labels, width, None if meta.distortions is None else list(meta.distortions))
    parts = [
        _META_HEADER.pack(
            META_MAGIC, META_VERSION, force, flags, 0, meta.budget_ms, meta.n, meta.prior_exits, meta.num_labels,
            width, size,
        ),
        meta.prior_logits.astype("<f4", copy=False).tobytes(),
    ]  # fmt: skip
    if meta.features is not None:
        parts.append(meta.features.astype("<f4", copy=False).tobytes())
    for name in meta.distortions or ():
        raw = name.encode("ascii")
        parts += [bytes([len(raw)]), raw]
    return b"".join(parts)


def decode_meta(body: bytes, max_batch: int = 256, max_bytes: int = 1 << 20) -> tuple[HandoffMeta, int]:
    """Parse and validate the metadata section at the start of `body`; returns it and where the payload starts."""
    if len(body) < _META_HEADER.size:
        raise HandoffFormatError(f"body of {len(body)} bytes is shorter than the {_META_HEADER.size}-byte metadata header")
    magic, version, force, flags, reserved, budget, n, k, c, d, size = _META_HEADER.unpack_from(body)
    if magic in (MAGIC, TOKENS_MAGIC):
        raise HandoffFormatError(
            f"body starts with its payload ({magic!r}): a handoff starts with its metadata section ({META_MAGIC!r}); "
            "the metadata no longer travels in an X-DIMEE-Meta header"
        )
    if magic != META_MAGIC:
        raise HandoffFormatError(f"not a DIMEE handoff (magic {magic!r}, expected {META_MAGIC!r})")
    if version != META_VERSION:
        raise HandoffFormatError(f"metadata version {version} is not supported (this tier reads {META_VERSION})")
    if reserved or flags & ~(_FEATURES | _DISTORTIONS) or force > len(FORCE_TIERS):
        raise HandoffFormatError(f"metadata header has unknown flags {flags}, forced tier code {force} or reserved {reserved}")
    if not 1 <= n <= max_batch:
        raise HandoffFormatError(f"metadata declares {n} samples, outside 1..{max_batch}")
    if c < 1 or max(k, c, d) > MAX_META_WIDTH or (d == 0) == bool(flags & _FEATURES):
        raise HandoffFormatError(f"metadata shapes out of range: {k} prior exits, {c} labels, feature width {d}")
    fixed = meta_size(n, k, c, d)
    names_room = (1 + 64) * n if flags & _DISTORTIONS else 0
    if size > max_bytes:
        raise HandoffFormatError(f"metadata section of {size} bytes exceeds this tier's limit of {max_bytes}")
    if not fixed <= size <= fixed + names_room or (size > fixed) != bool(flags & _DISTORTIONS):
        raise HandoffFormatError(f"metadata section declares {size} bytes; its shapes need {fixed}")
    if len(body) < size:
        raise HandoffFormatError(f"body truncated: {len(body)} bytes, the metadata section needs {size}")
    offset = _META_HEADER.size
    prior = np.frombuffer(body, dtype="<f4", count=n * k * c, offset=offset).reshape(n, k, c)
    offset += 4 * n * k * c
    features = None
    if d:
        features = np.frombuffer(body, dtype="<f4", count=n * d, offset=offset).reshape(n, d)
        offset += 4 * n * d
    distortions = None
    if flags & _DISTORTIONS:
        names = []
        for _ in range(n):
            length = body[offset] if offset < size else 0
            raw = bytes(body[offset + 1 : offset + 1 + length])
            if not 1 <= length <= 64 or offset + 1 + length > size:
                raise HandoffFormatError("metadata distortion types are truncated or of a bad length")
            names.append(raw.decode("ascii", errors="replace"))
            offset += 1 + length
        if offset != size:
            raise HandoffFormatError(f"metadata section declares {size} bytes but holds {offset}")
        distortions = tuple(names)
    meta = HandoffMeta(prior, budget, FORCE_TIERS[force - 1] if force else None, features, distortions)
    return meta, size


def encode_hidden_message(
    hidden: Any, attention_mask: Any, next_layer: int, meta: HandoffMeta, encoding: str = "fp32"
) -> bytes:
    """A whole hidden-state handoff (Content-Type CONTENT_TYPE): metadata section, then `encode_handoff`."""
    return encode_meta(meta) + encode_handoff(hidden, attention_mask, next_layer, encoding)


def decode_hidden_message(
    body: bytes,
    hidden_size: int,
    expected_next_layer: int | None = None,
    max_batch: int = 256,
    max_seq_len: int = 512,
    allowed_encodings: tuple[str, ...] = tuple(ENCODINGS),
    max_meta_bytes: int = 1 << 20,
) -> tuple[HandoffMeta, Handoff]:
    """Parse and validate a hidden-state handoff; the metadata must describe as many samples as the payload."""
    meta, start = decode_meta(body, max_batch, max_meta_bytes)
    handoff = decode_handoff(body[start:], hidden_size, expected_next_layer, max_batch, max_seq_len, allowed_encodings)
    if handoff.hidden.shape[0] != meta.n:
        raise HandoffFormatError(f"metadata declares {meta.n} samples but the payload holds {handoff.hidden.shape[0]}")
    return meta, handoff


def encode_token_message(
    input_ids: list[tuple[int, ...]] | list[list[int]], token_type_ids: list | None, vocab_size: int, meta: HandoffMeta
) -> bytes:
    """A whole token-id handoff (Content-Type TOKENS_CONTENT_TYPE): metadata section, then `encode_tokens`."""
    return encode_meta(meta) + encode_tokens(input_ids, token_type_ids, vocab_size)


def decode_token_message(
    body: bytes, vocab_size: int, max_batch: int = 256, max_seq_len: int = 512, max_meta_bytes: int = 1 << 20
) -> tuple[HandoffMeta, TokenBatch]:
    """Parse and validate a token-id handoff; the metadata must describe as many samples as the payload."""
    meta, start = decode_meta(body, max_batch, max_meta_bytes)
    tokens = decode_tokens(body[start:], vocab_size, max_batch, max_seq_len)
    if len(tokens.input_ids) != meta.n:
        raise HandoffFormatError(f"metadata declares {meta.n} samples but the payload holds {len(tokens.input_ids)}")
    return meta, tokens
