"""The mobile tier on ONNX Runtime: equality with torch, speed (batch 1 and 8, one thread), int8 accuracy, sizes.

    flock /tmp/dimee-heavy.lock env HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python benchmarks/deploy_mobile.py \
        --run runs/deploy-sst2 --out results/deploy.json --md results/deploy.md

Exports the run's mobile tier twice (`tiers.export.export_mobile`: fp32, and int8 with --quantize), then on the
SST-2 validation texts (../shared/glue/sst2/validation.jsonl, tokenised by the exported tokenizer.json):
- equality: ONNX fp32 vs the torch mobile part (`tiers.load_tier_part`, what the served mobile tier runs), every
  output (exit logits, hidden state after m, embedding feature), all texts at batch 1 and in batches of 8;
- speed: the same texts through torch eager fp32, ONNX Runtime fp32 and int8, one thread each
  (torch.set_num_threads(1), intra_op_num_threads=1), batch 1 and batch 8, in one run, rounds interleaved;
- accuracy of mobile's exits on all validation texts for the three, and how often the run's policy takes
  another decision on the device with int8 logits than with fp32 (`services.device.MobileClient.decide`);
- sizes: the ONNX files and the torch part's fp32 weights.
Speed targets live here, never in tests: TARGET_INT8_SPEEDUP at batch 1, accuracy within TARGET_ACCURACY_POINTS.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tiers import load_tier_part, read_run_info
from tiers.export import MobileGraph, export_mobile
from services.device import MobileClient

TARGET_INT8_SPEEDUP = 2.0  # ONNX Runtime int8 vs torch eager fp32, batch 1
TARGET_ACCURACY_POINTS = 1.0  # int8 within this many points of fp32 on SST-2 validation


def read_texts(path: Path) -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["sentence"] for r in rows], np.array([int(r["label"]) for r in rows])


def batches(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(i, min(i + size, n)) for i in range(0, n, size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/deploy-sst2")
    parser.add_argument("--data", default="../shared/glue/sst2/validation.jsonl")
    parser.add_argument("--export-dir", default=None, help="where the two folders go (default <run>-device{,-int8})")
    parser.add_argument("--speed-texts", type=int, default=256, help="texts timed per configuration and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="results/deploy.json")
    parser.add_argument("--md", default="results/deploy.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    base = Path(args.export_dir) if args.export_dir else run.parent
    folders = {"fp32": base / f"{run.name}-device", "int8": base / f"{run.name}-device-int8"}
    export_s = {}
    for kind, folder in folders.items():
        t0 = time.perf_counter()
        export_mobile(run, folder, quantize=None if kind == "fp32" else "int8")
        export_s[kind] = time.perf_counter() - t0
    clients = {kind: MobileClient(folder, threads=1) for kind, folder in folders.items()}
    info = read_run_info(run)
    part = load_tier_part(run, info.plan, "mobile").eval()
    graph = MobileGraph(part, "token_type_ids" in clients["fp32"].inputs).eval()
    texts, labels = read_texts(Path(args.data))
    ids, types = clients["fp32"].tokenize(texts)
    lengths = np.array([len(s) for s in ids])
    n = len(texts)

    def feeds(rows: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
        return [ids[i] for i in rows], [types[i] for i in rows]

    def torch_run(rows: np.ndarray):
        sel_ids, sel_types = feeds(rows)
        width = max(len(s) for s in sel_ids)
        x = torch.full((len(rows), width), clients["fp32"].pad_id, dtype=torch.long)
        m = torch.zeros_like(x)
        t = torch.zeros_like(x)
        for r, (s, k) in enumerate(zip(sel_ids, sel_types)):
            x[r, : len(s)] = torch.tensor(s)
            m[r, : len(s)] = 1
            t[r, : len(k)] = torch.tensor(k)
        with torch.no_grad():
            logits, hidden, feature = graph(x, m, t)
        return logits.numpy(), hidden.numpy(), feature.numpy(), m.numpy()

    def onnx_run(kind: str, rows: np.ndarray):
        return clients[kind].run_model(*feeds(rows))

    # ---- equality and accuracy: every text, batch 1 and batch 8 ------------------------------------------
    diffs = {}
    logits_by = {}
    for size in (1, 8):
        worst = {"exit_logits": 0.0, "hidden": 0.0, "feature": 0.0}
        collected = {"torch": [], "fp32": [], "int8": []}
        for rows in batches(n, size):
            ref = torch_run(rows)
            got = onnx_run("fp32", rows)
            q = onnx_run("int8", rows)
            mask = ref[3].astype(bool)
            worst["exit_logits"] = max(worst["exit_logits"], float(np.abs(ref[0] - got[0]).max()))
            worst["hidden"] = max(worst["hidden"], float(np.abs(ref[1] - got[1])[mask].max()))
            worst["feature"] = max(worst["feature"], float(np.abs(ref[2] - got[2]).max()))
            collected["torch"].append(ref[0])
            collected["fp32"].append(got[0])
            collected["int8"].append(q[0])
        diffs[f"batch_{size}"] = worst
        logits_by[size] = {k: np.concatenate(v) for k, v in collected.items()}
    m = info.plan.mobile_end
    accuracy = {
        kind: {f"exit_{j}": round(float((logits_by[8][kind][:, j - 1].argmax(-1) == labels).mean() * 100), 2) for j in range(1, m + 1)}
        for kind in ("torch", "fp32", "int8")
    }
    agree = {
        f"exit_{j}": round(float((logits_by[8]["int8"][:, j - 1].argmax(-1) == logits_by[8]["fp32"][:, j - 1].argmax(-1)).mean() * 100), 2)
        for j in range(1, m + 1)
    }
    int8_logit_diff = float(np.abs(logits_by[8]["int8"] - logits_by[8]["fp32"]).max())
    decisions = {}
    features = {}
    for kind in ("fp32", "int8"):
        acts, deps, feats = [], [], []
        for rows in batches(n, 8):
            logits, _, feature, _ = onnx_run(kind, rows)
            a, d = clients[kind].decide(logits, feature)
            acts.append(a)
            deps.append(d)
        decisions[kind] = (np.concatenate(acts), np.concatenate(deps))
    same = (decisions["fp32"][0] == decisions["int8"][0]) & (decisions["fp32"][1] == decisions["int8"][1])
    local = {k: float((v[0] > 0).mean() * 100) for k, v in decisions.items()}

    # ---- speed: same texts, one thread, rounds interleaved ------------------------------------------------
    timed = np.arange(min(args.speed_texts, n))
    configs = {
        "torch_fp32": torch_run,
        "onnx_fp32": lambda rows: onnx_run("fp32", rows),
        "onnx_int8": lambda rows: onnx_run("int8", rows),
    }
    per_text_ms: dict[str, dict[str, list[float]]] = {c: {"batch_1": [], "batch_8": []} for c in configs}
    for size in (1, 8):
        groups = batches(timed.size, size)
        for name, fn in configs.items():  # warm-up
            for rows in groups[:8]:
                fn(rows)
        for _ in range(args.rounds):
            for name, fn in configs.items():
                t0 = time.perf_counter()
                for rows in groups:
                    fn(rows)
                per_text_ms[name][f"batch_{size}"].append((time.perf_counter() - t0) * 1000 / timed.size)
    speed = {
        name: {b: round(statistics.median(v), 4) for b, v in runs.items()} for name, runs in per_text_ms.items()
    }
    ratios = {
        b: {
            "onnx_fp32_vs_torch": round(speed["torch_fp32"][b] / speed["onnx_fp32"][b], 2),
            "onnx_int8_vs_torch": round(speed["torch_fp32"][b] / speed["onnx_int8"][b], 2),
            "onnx_int8_vs_onnx_fp32": round(speed["onnx_fp32"][b] / speed["onnx_int8"][b], 2),
        }
        for b in ("batch_1", "batch_8")
    }
    torch_bytes = sum(p.numel() * p.element_size() for p in part.parameters())
    sizes = {
        "torch_mobile_part_fp32_weights": int(torch_bytes),
        "onnx_fp32": (folders["fp32"] / "mobile.onnx").stat().st_size,
        "onnx_int8": (folders["int8"] / "mobile.onnx").stat().st_size,
        "folder_fp32": sum(f.stat().st_size for f in folders["fp32"].iterdir()),
        "folder_int8": sum(f.stat().st_size for f in folders["int8"].iterdir()),
    }
    import onnxruntime

    drop = accuracy["fp32"][f"exit_{m}"] - accuracy["int8"][f"exit_{m}"]
    result = {
        "command": (
            f"flock /tmp/dimee-heavy.lock env HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python benchmarks/deploy_mobile.py --run {args.run} "
            f"--out {args.out} --md {args.md}"
        ),
        "run": str(run),
        "plan": info.plan.spec,
        "texts": n,
        "token_lengths": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "speed_texts": int(timed.size),
        "rounds": args.rounds,
        "threads": 1,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
        "export_seconds": {k: round(v, 1) for k, v in export_s.items()},
        "max_abs_diff_onnx_fp32_vs_torch": diffs,
        "max_abs_diff_int8_vs_fp32_logits": int8_logit_diff,
        "accuracy_validation": accuracy,
        "int8_label_agreement_with_fp32_%": agree,
        "policy_decisions_same_int8_vs_fp32_%": round(float(same.mean() * 100), 2),
        "answered_on_device_%": {k: round(v, 2) for k, v in local.items()},
        "ms_per_text_median": speed,
        "speedup": ratios,
        "sizes_bytes": sizes,
        "targets": {
            "int8_speedup_batch_1": TARGET_INT8_SPEEDUP,
            "int8_speedup_batch_1_met": ratios["batch_1"]["onnx_int8_vs_torch"] >= TARGET_INT8_SPEEDUP,
            "int8_accuracy_points": TARGET_ACCURACY_POINTS,
            "int8_accuracy_drop_points_exit_m": round(drop, 2),
            "int8_accuracy_met": abs(drop) <= TARGET_ACCURACY_POINTS,
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.md).write_text(render(result, m))
    print(json.dumps(result, indent=2))


def render(r: dict, m: int) -> str:
    d, s, x, a, z = r["max_abs_diff_onnx_fp32_vs_torch"], r["ms_per_text_median"], r["speedup"], r["accuracy_validation"], r["sizes_bytes"]
    t = r["targets"]
    lines = [
        "# Deployment: the mobile tier on ONNX Runtime",
        "",
        f"Run `{r['run']}` (the SST-2 4k demo run: `dimee demo`, seed 0; MiniLM, 6 layers, plan {r['plan']}: the mobile part is the embeddings, "
        f"layers 1..{m} and exits 1..{m}). {r['texts']} SST-2 validation texts, {r['token_lengths']['min']}.."
        f"{r['token_lengths']['max']} tokens (median {r['token_lengths']['median']:g}), tokenised by the exported "
        f"tokenizer.json. torch {r['versions']['torch']}, onnxruntime {r['versions']['onnxruntime']}, one thread each. "
        "One run on a shared 2-core machine: the ratios carry over, the milliseconds do not.",
        "",
        "Edge and cloud scaled out on Ray Serve (requests/s and p50/p99 at 32 clients with 1 and 2 edge replicas, "
        "and the replica-kill run) are in [`deploy_ray.md`](deploy_ray.md) (`benchmarks/ray_serve_bench.py`).",
        "",
        "```bash",
        r["command"],
        "```",
        "",
        "## Equality: ONNX fp32 vs the torch mobile part (max absolute difference over all texts)",
        "",
        "| batch | exit logits | hidden after m (real tokens) | embedding feature |",
        "|---|---|---|---|",
    ]
    for b in ("batch_1", "batch_8"):
        lines.append(f"| {b[6:]} | {d[b]['exit_logits']:.2e} | {d[b]['hidden']:.2e} | {d[b]['feature']:.2e} |")
    lines += [
        "",
        f"## Speed: ms per text, median of {r['rounds']} rounds over the same {r['speed_texts']} texts",
        "",
        "| batch | torch eager fp32 | ONNX Runtime fp32 | ONNX Runtime int8 | fp32 speed-up | int8 speed-up (vs torch) |",
        "|---|---|---|---|---|---|",
    ]
    for b in ("batch_1", "batch_8"):
        lines.append(
            f"| {b[6:]} | {s['torch_fp32'][b]:.3f} | {s['onnx_fp32'][b]:.3f} | {s['onnx_int8'][b]:.3f} | "
            f"{x[b]['onnx_fp32_vs_torch']:.2f}x | {x[b]['onnx_int8_vs_torch']:.2f}x |"
        )
    lines += [
        "",
        f"Target (issue 15): int8 >= {t['int8_speedup_batch_1']:g}x torch eager fp32 at batch 1: "
        f"{'met' if t['int8_speedup_batch_1_met'] else 'missed'} ({x['batch_1']['onnx_int8_vs_torch']:.2f}x).",
        "",
        "## Accuracy on SST-2 validation (mobile's exits)",
        "",
        "| exit | torch fp32 | ONNX fp32 | ONNX int8 | int8 label = fp32 label |",
        "|---|---|---|---|---|",
    ]
    for j in range(1, m + 1):
        k = f"exit_{j}"
        lines.append(f"| {j} | {a['torch'][k]:.2f} | {a['fp32'][k]:.2f} | {a['int8'][k]:.2f} | {r['int8_label_agreement_with_fp32_%'][k]:.2f}% |")
    lines += [
        "",
        f"Target: int8 within {t['int8_accuracy_points']:g} point of fp32 at exit {m}: "
        f"{'met' if t['int8_accuracy_met'] else 'missed'} (drop {t['int8_accuracy_drop_points_exit_m']:+.2f} points). "
        f"Largest int8 - fp32 logit difference: {r['max_abs_diff_int8_vs_fp32_logits']:.3f}. The run's policy "
        f"(policy.json) takes the same decision on the device for {r['policy_decisions_same_int8_vs_fp32_%']:.2f}% "
        f"of the texts with int8 logits as with fp32 (answered on the device: fp32 {r['answered_on_device_%']['fp32']:.2f}%, "
        f"int8 {r['answered_on_device_%']['int8']:.2f}%).",
        "",
        "## Sizes",
        "",
        "| what | bytes | MB |",
        "|---|---|---|",
    ]
    names = {
        "torch_mobile_part_fp32_weights": "torch mobile part, fp32 weights",
        "onnx_fp32": "mobile.onnx fp32",
        "onnx_int8": "mobile.onnx int8",
        "folder_fp32": "device folder, fp32 (model, tokenizer.json, run.json, policy.json, device.json)",
        "folder_int8": "device folder, int8",
    }
    for key, label in names.items():
        lines.append(f"| {label} | {z[key]} | {z[key] / 1e6:.1f} |")
    lines += ["", f"Export took {r['export_seconds']['fp32']:g} s (fp32) and {r['export_seconds']['int8']:g} s (int8, with the check).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
