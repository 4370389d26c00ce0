"""Sliced vs one-pass equivalence on the real encoder, through the byte codec, and the handoff's byte overhead.

For every tier plan, the three parts are loaded from a saved checkpoint with `load_tier_part` (each reads only
its own weights) and chained mobile -> bytes -> edge -> bytes -> cloud with `encode_handoff`/`decode_handoff`,
for each handoff encoding (fp32, fp16, int8). The exit logits are compared with the one-pass `EarlyExitModel`
on real SST-2 validation sentences, batched in file order (so batches mix lengths and carry padding).
The exit heads are random (seeded): the invariant is about the computation, not about accuracy.

Payload overhead: for typical SST-2 batch sizes, the exact body size (`payload_size`, checked against
`len(encode_handoff(...))`) against the floor tokens x hidden x bytes-per-value (real tokens only).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/slicing_codec.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from glue_eval.tasks import get_task
from glue_eval.training import Encoded, pad_batch
from tiers import (
    ENCODINGS,
    EarlyExitModel,
    TierPlan,
    decode_handoff,
    encode_handoff,
    load_tier_part,
    payload_size,
    resolve_encoder,
    run_three_tiers,
    slice_model,
)
from tiers.codec import header_size

REPO = Path(__file__).resolve().parent.parent
BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}


def command_line() -> str:
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(str(REPO)) else sys.executable
    return "HF_HUB_OFFLINE=1 " + shlex.join([exe, *sys.argv])


def read_sentences(path: Path, n: int | None) -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows if n is None else rows[:n]
    return [r["sentence"] for r in rows], np.array([r["label"] for r in rows])


def encode(tokenizer, sentences: list[str], max_length: int) -> Encoded:
    enc = tokenizer(sentences, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
    return Encoded(enc["input_ids"], types, np.zeros(len(sentences), dtype=np.int64))


@torch.no_grad()
def chain_through_codec(parts: dict, batch: dict, encoding: str, hidden_size: int) -> tuple[torch.Tensor, list[int]]:
    """mobile -> bytes -> edge -> bytes -> cloud; returns [batch, L, C] and the two bodies' sizes."""
    mobile = parts["mobile"].run_from_ids(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    body1 = encode_handoff(mobile.hidden, mobile.attention_mask, parts["edge"].first_layer, encoding)
    h1 = decode_handoff(body1, hidden_size, expected_next_layer=parts["edge"].first_layer)
    edge = parts["edge"].run_hidden(h1.hidden, h1.attention_mask)
    body2 = encode_handoff(edge.hidden, edge.attention_mask, parts["cloud"].first_layer, encoding)
    h2 = decode_handoff(body2, hidden_size, expected_next_layer=parts["cloud"].first_layer)
    cloud = parts["cloud"].run_hidden(h2.hidden, h2.attention_mask)
    return torch.cat([mobile.exit_logits, edge.exit_logits, cloud.exit_logits], dim=1), [len(body1), len(body2)]


def pad_batch_to(batch: dict, length: int, pad_id: int) -> dict:
    extra = length - batch["input_ids"].shape[1]
    if extra <= 0:
        return batch
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
    return {k: torch.nn.functional.pad(v, (0, extra), value=fill[k]) for k, v in batch.items()}


def equivalence(
    model, checkpoint: Path, encoded: Encoded, plans: list[TierPlan], batch_size: int, pad_id: int, max_length: int
) -> dict:
    hidden_size = int(model.config.hidden_size)
    batches = [np.arange(s, min(s + batch_size, len(encoded))) for s in range(0, len(encoded), batch_size)]
    padded = [pad_batch(encoded, rows, pad_id) for rows in batches]
    with torch.no_grad():
        reference = torch.cat([model(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in padded])
        # Scale of ordinary fp32 noise: the same one-pass model with every batch padded to max_length.
        full = [pad_batch_to(b, max_length, pad_id) for b in padded]
        padded_full = torch.cat([model(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in full])
    out = {
        "one_pass_padded_to_max_length_vs_dynamic_max_abs_diff": float((padded_full - reference).abs().max()),
        "reference_logit_abs_max": float(reference.abs().max()),
        "reference_logit_abs_median": float(reference.abs().median()),
        "reference_top2_margin_median": float((reference[..., 0] - reference[..., 1]).abs().median()),
        "plans": [],
    }
    n_items = reference.shape[0] * reference.shape[1]
    for plan in plans:
        record = {"plan": plan.spec, "layers": {t: list(plan.layer_range(t)) for t in ("mobile", "edge", "cloud")}}
        # In-memory slicing, no bytes: isolates the slicing from the codec.
        shared = slice_model(model, plan)
        with torch.no_grad():
            in_memory = torch.cat(
                [run_three_tiers(shared, b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in padded]
            )
        record["in_memory_no_codec"] = {"max_abs_diff": float((in_memory - reference).abs().max())}
        started = time.perf_counter()
        parts = {tier: load_tier_part(checkpoint, plan, tier) for tier in ("mobile", "edge", "cloud")}
        record["load_parts_seconds"] = round(time.perf_counter() - started, 3)
        record["param_counts"] = {t: sum(p.numel() for p in parts[t].parameters()) for t in parts}
        for encoding in ENCODINGS:
            chained, sizes = [], []
            for b in padded:
                logits, body_sizes = chain_through_codec(parts, b, encoding, hidden_size)
                chained.append(logits)
                sizes.append(body_sizes)
            chained = torch.cat(chained)
            diff = (chained - reference).abs()
            per_exit = diff.amax(dim=(0, 2))
            disagree = chained.argmax(-1) != reference.argmax(-1)
            record[encoding] = {
                "max_abs_diff": float(diff.max()),
                "max_abs_diff_per_exit": [float(v) for v in per_exit],
                "max_abs_diff_over_max_abs_logit": float(diff.max() / reference.abs().max()),
                "argmax_disagreements": int(disagree.sum()),
                "argmax_disagreements_per_exit": [int(v) for v in disagree.sum(0)],
                "argmax_compared": int(n_items),
                "handoff_bytes_total": int(np.sum(sizes)),
            }
        out["plans"].append(record)
    return out


def payload_overheads(model, tokenizer, sentences: list[str], batch_sizes: list[int], max_length: int, pad_id: int) -> dict:
    """Body bytes vs the floor, over consecutive batches of the sentences, per batch size and encoding."""
    hidden_size = int(model.config.hidden_size)
    encoded = encode(tokenizer, sentences, max_length)
    result = {"hidden_size": hidden_size, "n_sentences": len(encoded), "token_count_median": float(np.median(encoded.lengths)),
              "token_count_mean": float(np.mean(encoded.lengths)), "token_count_max": int(encoded.lengths.max()),
              "by_batch_size": []}
    for bs in batch_sizes:
        batches = [np.arange(s, s + bs) for s in range(0, len(encoded) - bs + 1, bs)]
        entry = {"batch_size": bs, "batches": len(batches), "header_bytes": header_size(bs)}
        tokens = np.array([encoded.lengths[rows].sum() for rows in batches])
        entry["tokens_per_batch_median"] = float(np.median(tokens))
        for encoding in ENCODINGS:
            sizes, floors, padded_sizes = [], [], []
            checked = 0
            for rows in batches:
                counts = encoded.lengths[rows]
                size = payload_size(counts, hidden_size, encoding)
                if checked < 3:  # the formula against a real body built from real hidden states
                    b = pad_batch(encoded, rows, pad_id)
                    with torch.no_grad():
                        hidden = model.embed(b["input_ids"], b["token_type_ids"])
                    assert len(encode_handoff(hidden, b["attention_mask"], 2, encoding)) == size
                    checked += 1
                sizes.append(size)
                floors.append(int(counts.sum()) * hidden_size * BYTES_PER_VALUE[encoding])
                padded_sizes.append(len(rows) * int(counts.max()) * hidden_size * BYTES_PER_VALUE[encoding])
            sizes, floors, padded_sizes = map(np.array, (sizes, floors, padded_sizes))
            overhead = 100.0 * (sizes - floors) / floors
            header_only = 100.0 * header_size(bs) / floors  # int8: its per-token fp32 scales left out
            entry[encoding] = {
                "bytes_median": float(np.median(sizes)),
                "floor_bytes_median": float(np.median(floors)),
                "overhead_pct_median": round(float(np.median(overhead)), 4),
                "overhead_pct_max": round(float(overhead.max()), 4),
                "header_only_overhead_pct_median": round(float(np.median(header_only)), 4),
                "header_only_overhead_pct_max": round(float(header_only.max()), 4),
                "padded_tensor_bytes_median": float(np.median(padded_sizes)),
                "bytes_vs_padded_tensor_median": round(float(np.median(sizes / padded_sizes)), 4),
                "size_checked_against_encode_handoff": checked,
            }
        result["by_batch_size"].append(entry)
    return result


@torch.no_grad()
def codec_timing(model, encoded: Encoded, batch_size: int, pad_id: int, repeats: int) -> dict:
    """Median encode and decode time of one batch's handoff after layer 2 (first batch of the data)."""
    hidden_size = int(model.config.hidden_size)
    b = pad_batch(encoded, np.arange(min(batch_size, len(encoded))), pad_id)
    hidden, _ = model.run_layers(model.embed(b["input_ids"], b["token_type_ids"]), b["attention_mask"], 1, 2)
    out = {"batch_size": int(b["input_ids"].shape[0]), "repeats": repeats}
    for encoding in ENCODINGS:
        enc_t, dec_t = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            body = encode_handoff(hidden, b["attention_mask"], 3, encoding)
            t1 = time.perf_counter()
            decode_handoff(body, hidden_size, 3)
            t2 = time.perf_counter()
            enc_t.append(t1 - t0)
            dec_t.append(t2 - t1)
        out[encoding] = {"encode_ms_median": round(1000 * float(np.median(enc_t)), 3),
                         "decode_ms_median": round(1000 * float(np.median(dec_t)), 3), "bytes": len(body)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "glue" / "sst2" / "validation.jsonl"),
                        help="SST-2 validation JSON lines (field 'sentence')")
    parser.add_argument("--model", default="minilm-offline", help="encoder: 'minilm-offline', a hub name or a folder")
    parser.add_argument("--n", type=int, default=256, help="sentences for the equivalence check")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--plans", default="2,4;1,5;3,6;1,2;5,6", help="tier plans 'm,e' separated by ';'")
    parser.add_argument("--payload-batch-sizes", default="1,8,32")
    parser.add_argument("--payload-n", type=int, default=None, help="sentences for the payload figures (default all)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random exit heads")
    parser.add_argument("--codec-repeats", type=int, default=20)
    parser.add_argument("--out", default=str(REPO / "results" / "slicing_codec.json"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    encoder = resolve_encoder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    torch.manual_seed(args.seed)
    model = EarlyExitModel.from_encoder(encoder, get_task("sst2").num_labels).eval()
    pad_id = tokenizer.pad_token_id or 0
    plans = [TierPlan.parse(spec, model.num_layers) for spec in args.plans.split(";") if spec.strip()]
    sentences, _ = read_sentences(Path(args.data), args.n)
    encoded = encode(tokenizer, sentences, args.max_length)
    all_sentences, _ = read_sentences(Path(args.data), args.payload_n)

    with tempfile.TemporaryDirectory(prefix="dimee-bench-") as tmp:
        checkpoint = model.save_pretrained(Path(tmp) / "ckpt", tokenizer=tokenizer)
        eq = equivalence(model, checkpoint, encoded, plans, args.batch_size, pad_id, args.max_length)
    payload = payload_overheads(model, tokenizer, all_sentences, [int(x) for x in args.payload_batch_sizes.split(",")],
                                args.max_length, pad_id)
    timing = codec_timing(model, encoded, args.batch_size, pad_id, args.codec_repeats)

    result = {
        "command": command_line(),
        "encoder": args.model,
        "encoder_path": encoder,
        "num_layers": model.num_layers,
        "hidden_size": int(model.config.hidden_size),
        "exit_heads": f"random init, torch.manual_seed({args.seed})",
        "data": args.data,
        "n_sentences": len(encoded),
        "batch_size": args.batch_size,
        "batches": int(np.ceil(len(encoded) / args.batch_size)),
        "padding_fraction": round(float(1 - encoded.lengths.sum() / sum(
            len(r) * encoded.lengths[r].max() for r in
            [np.arange(s, min(s + args.batch_size, len(encoded))) for s in range(0, len(encoded), args.batch_size)])), 4),
        "parts_loaded_with": "tiers.load_tier_part from a save_pretrained checkpoint",
        "target": {"fp32_max_abs_diff": 1e-5, "payload_overhead_pct": 2.0},
        "equivalence": eq,
        "payload": payload,
        "codec_timing": timing,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()}",
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{len(encoded)} SST-2 validation sentences, batches of {args.batch_size}, padding {result['padding_fraction']:.1%}; "
          f"reference |logit| max {eq['reference_logit_abs_max']:.3f}")
    print(f"one-pass model, batches padded to {args.max_length} vs dynamic padding (ordinary fp32 noise): "
          f"{eq['one_pass_padded_to_max_length_vs_dynamic_max_abs_diff']:.2e}")
    print(f"{'plan':>5} {'no codec':>10} " + " ".join(f"{e + ' diff':>11} {e + ' flips':>10}" for e in ENCODINGS))
    for rec in eq["plans"]:
        cells = " ".join(f"{rec[e]['max_abs_diff']:>11.2e} {rec[e]['argmax_disagreements']:>4}/{rec[e]['argmax_compared']:<5}"
                         for e in ENCODINGS)
        print(f"{rec['plan']:>5} {rec['in_memory_no_codec']['max_abs_diff']:>10.2e} {cells}")
    print("payload overhead vs tokens x hidden x bytes/value (median/max %; int8 counts its per-token scales, "
          "header-only in brackets):")
    for entry in payload["by_batch_size"]:
        cells = "  ".join(f"{e} {entry[e]['overhead_pct_median']:.3f}/{entry[e]['overhead_pct_max']:.3f}" for e in ENCODINGS)
        cells += f" [{entry['int8']['header_only_overhead_pct_median']:.3f}/{entry['int8']['header_only_overhead_pct_max']:.3f}]"
        print(f"  batch {entry['batch_size']:>3} ({entry['batches']} batches, median {entry['tokens_per_batch_median']:.0f} tokens): {cells}")
    print(f"wrote {out} in {result['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
