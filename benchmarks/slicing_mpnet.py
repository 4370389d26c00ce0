"""Slicing equality on the real 12-layer encoder (mpnet-offline, MPNet with relative position bias).

The reference is the encoder's own one-pass forward (`MPNetModel(...)`, which computes the position bias once
inside `MPNetEncoder.forward`), with the (random, seeded) exit heads applied to its hidden states. Against it:
the layer-by-layer runner (`EarlyExitModel.forward`), the three parts sliced in memory, and the parts loaded
from a checkpoint with `load_tier_part` chained over the handoff codec's bytes (fp32, fp16, int8), each tier
recomputing the bias from the hidden state it receives. Also fp16 weights end to end (one-pass fp16 vs sliced
fp16), and the largest |hidden state| at each boundary (the services refuse > 1e4; fp16 overflows at 65504).
Shares its scaffolding (sentences, tokenising, the codec chain) with benchmarks/slicing_codec.py.

    bash scripts/setup_mpnet.sh   # once
    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/slicing_mpnet.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slicing_codec import REPO, chain_through_codec, command_line, encode, read_sentences  # noqa: E402

from glue_eval.training import pad_batch  # noqa: E402
from tiers import ENCODINGS, EarlyExitModel, TierPlan, default_plan, load_tier_part, resolve_encoder, slice_model  # noqa: E402


@torch.no_grad()
def one_pass(model: EarlyExitModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit logits on the encoder's own forward pass, and its last hidden state."""
    out = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    mask = batch["attention_mask"]
    logits = torch.stack([head(out.hidden_states[i + 1], mask) for i, head in enumerate(model.exits)], dim=1)
    return logits, out.last_hidden_state


@torch.no_grad()
def sliced(parts: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """mobile -> edge -> cloud in memory: logits, cloud's last hidden state, max |hidden| at the two boundaries."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    mobile = parts["mobile"].run_from_ids(ids, mask)
    edge = parts["edge"].run_hidden(mobile.hidden, mask)
    cloud = parts["cloud"].run_hidden(edge.hidden, mask)
    real = mask.bool()
    peaks = [float(mobile.hidden[real].abs().max()), float(edge.hidden[real].abs().max())]
    return torch.cat([mobile.exit_logits, edge.exit_logits, cloud.exit_logits], dim=1), cloud.hidden, peaks


def _diff(got: list[torch.Tensor], want: list[torch.Tensor], masks: list[torch.Tensor] | None = None) -> dict:
    if masks is None:
        d = torch.cat([(g.float() - w.float()).abs().flatten(1).amax(1) for g, w in zip(got, want)])
        per_exit = torch.stack([(g.float() - w.float()).abs().amax(dim=(0, 2)) for g, w in zip(got, want)]).amax(0)
        flips = sum(int((g.argmax(-1) != w.argmax(-1)).sum()) for g, w in zip(got, want))
        return {"max_abs_diff": float(d.max()), "max_abs_diff_per_exit": [float(v) for v in per_exit], "argmax_flips": flips}
    d = max(float((g.float() - w.float())[m.bool()].abs().max()) for g, w, m in zip(got, want, masks))
    return {"max_abs_diff": d}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "glue" / "sst2" / "validation.jsonl"))
    parser.add_argument("--model", default="mpnet-offline")
    parser.add_argument("--n", type=int, default=128, help="sentences (file order, so batches mix lengths)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--plans", default="4,8;2,6;6,10;1,11", help="tier plans 'm,e' separated by ';' (first: default)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fp16-weights", action="store_true", help="skip the fp16-weights comparison")
    parser.add_argument("--out", default=str(REPO / "results" / "slicing_mpnet.json"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    encoder = resolve_encoder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    torch.manual_seed(args.seed)
    model = EarlyExitModel.from_encoder(encoder, 2).eval()
    pad_id = tokenizer.pad_token_id or 0
    plans = [TierPlan.parse(s, model.num_layers) for s in args.plans.split(";") if s.strip()]
    sentences, _ = read_sentences(Path(args.data), args.n)
    encoded = encode(tokenizer, sentences, args.max_length)
    rows = [np.arange(s, min(s + args.batch_size, len(encoded))) for s in range(0, len(encoded), args.batch_size)]
    batches = [pad_batch(encoded, r, pad_id) for r in rows]
    masks = [b["attention_mask"] for b in batches]
    hidden_size = int(model.config.hidden_size)

    reference = [one_pass(model, b) for b in batches]
    ref_logits, ref_final = [r[0] for r in reference], [r[1] for r in reference]
    with torch.no_grad():
        runner = [model(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in batches]
    result = {
        "command": command_line(),
        "encoder": args.model,
        "encoder_path": encoder,
        "architecture": type(model.encoder).__name__,
        "adapter": type(model.adapter).__name__,
        "num_layers": model.num_layers,
        "hidden_size": hidden_size,
        "parameters": sum(p.numel() for p in model.encoder.parameters()),
        "default_plan": default_plan(model.num_layers).spec,
        "exit_heads": f"random init, torch.manual_seed({args.seed})",
        "data": args.data,
        "n_sentences": len(encoded),
        "batch_size": args.batch_size,
        "token_count_max": int(encoded.lengths.max()),
        "reference": "the encoder's own forward (MPNetModel, position bias inside MPNetEncoder.forward) + exit heads",
        "reference_logit_abs_max": float(max(r.abs().max() for r in ref_logits)),
        "reference_hidden_abs_max": float(max(h[m.bool()].abs().max() for h, m in zip(ref_final, masks))),
        "target": {"fp32_max_abs_diff": 1e-5},
        "layer_by_layer_runner_fp32": _diff(runner, ref_logits),
        "plans": [],
    }
    with tempfile.TemporaryDirectory(prefix="dimee-mpnet-") as tmp:
        checkpoint = model.save_pretrained(Path(tmp) / "ckpt", tokenizer=tokenizer)
        for plan in plans:
            record = {"plan": plan.spec, "layers": {t: list(plan.layer_range(t)) for t in ("mobile", "edge", "cloud")}}
            out = [sliced(slice_model(model, plan), b) for b in batches]
            record["in_memory_fp32"] = {
                "logits": _diff([o[0] for o in out], ref_logits),
                "last_hidden_state": _diff([o[1] for o in out], ref_final, masks),
            }
            record["hidden_abs_max_at_boundaries"] = {
                f"after_layer_{plan.mobile_end}": max(o[2][0] for o in out),
                f"after_layer_{plan.edge_end}": max(o[2][1] for o in out),
            }
            parts = {t: load_tier_part(checkpoint, plan, t) for t in ("mobile", "edge", "cloud")}
            record["position_bias_table_per_tier"] = {t: list(parts[t].extras["position_bias"].relative_attention_bias.weight.shape) for t in parts}
            for encoding in ENCODINGS:
                chained = [chain_through_codec(parts, b, encoding, hidden_size)[0] for b in batches]
                record[f"from_disk_over_bytes_{encoding}"] = _diff(chained, ref_logits)
            result["plans"].append(record)
            print(f"plan {plan.spec}: in memory {record['in_memory_fp32']['logits']['max_abs_diff']:.2e} "
                  f"(hidden {record['in_memory_fp32']['last_hidden_state']['max_abs_diff']:.2e}); over bytes "
                  + ", ".join(f"{e} {record[f'from_disk_over_bytes_{e}']['max_abs_diff']:.2e}" for e in ENCODINGS), flush=True)
    if not args.no_fp16_weights:
        half = model.half()
        plan = plans[0]
        try:
            ref16 = [one_pass(half, b) for b in batches]
            out16 = [sliced(slice_model(half, plan), b) for b in batches]
            result["fp16_weights"] = {
                "plan": plan.spec,
                "sliced_fp16_vs_one_pass_fp16": {
                    "logits": _diff([o[0] for o in out16], [r[0] for r in ref16]),
                    "last_hidden_state": _diff([o[1] for o in out16], [r[1] for r in ref16], masks),
                },
                "one_pass_fp16_vs_one_pass_fp32": {
                    "logits": _diff([r[0] for r in ref16], ref_logits),
                    "last_hidden_state": _diff([r[1] for r in ref16], ref_final, masks),
                },
            }
        except RuntimeError as err:  # a CPU kernel without half support
            result["fp16_weights"] = {"skipped": f"{type(err).__name__}: {err}"}
        print("fp16 weights:", json.dumps(result["fp16_weights"])[:300], flush=True)
    result.update(
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        machine=f"{platform.machine()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()}",
        wall_seconds=round(time.perf_counter() - started, 1),
    )
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"runner {result['layer_by_layer_runner_fp32']['max_abs_diff']:.2e}; wrote {out_path} in {result['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
