"""Served vs evaluated, per answer, for every policy: offline (cached logits), in-process, three uvicorn services.

For each policy of the report (fitted on the run's calibration split, saved as the run's policy.json), the
first N validation texts are answered three ways:

1. offline: ``policy.predict_outcome`` on the run's cached validation logits, each answer costed with
   ``CostModel.path_costs`` (token counts from the cache);
2. in-process: ``tiers.run_routed`` on the same token ids through parts loaded with ``load_tier_part``;
3. served: the three tier services (real uvicorn processes on loopback), one text per request sequentially
   (batch 1), then all texts from 32 concurrent clients.

Per answer the exit, route, label and normalised cost are compared with the offline answer (the cached
logits come from a padded batch, the served ones from the tier's own batches, so a decision within float
noise of a threshold could differ: each mismatch is counted, not hidden). The compute saved by early exit
inside a tier is the layers run per 1,000 samples by the cascade policy against what the same answers cost
when every tier visited runs all its layers (the services before routes).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/routing.py --run runs/bench-sst2 --n 500
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import asyncio
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
from transformers import AutoTokenizer

from clustering import (
    AllCloudPolicy,
    AllEdgePolicy,
    AllMobilePolicy,
    DimeePolicy,
    ExitPolicy,
    PatiencePolicy,
    ThresholdPolicy,
)
from glue_eval.data import load_glue_split
from glue_eval.tasks import get_task
from services import start_all
from tiers import TIERS, hop_payload_size, load_tier_part, read_cached_split, read_run_info, run_routed, token_payload_size
from tiers.run import POLICY_FILE

REPO = Path(__file__).resolve().parent.parent


def policies(plan, cost) -> dict[str, Callable[[], ExitPolicy]]:
    """The report's policy families at one setting each (knobs chosen in fit, on the calibration split)."""
    return {
        "all-mobile": lambda: AllMobilePolicy(plan, cost),
        "all-edge": lambda: AllEdgePolicy(plan, cost),
        "all-cloud": lambda: AllCloudPolicy(plan, cost),
        "threshold": lambda: ThresholdPolicy(plan, cost, criterion="confidence", max_drop=0.005),
        "entropy": lambda: ThresholdPolicy(plan, cost, criterion="entropy", max_drop=0.005),
        "patience": lambda: PatiencePolicy(plan, cost, max_drop=0.005),
        "dimee": lambda: DimeePolicy(plan, cost, mu=0.05),
        "dimee-embedding": lambda: DimeePolicy(plan, cost, mu=0.05, feature="embedding"),
        "dimee-cascade": lambda: DimeePolicy(plan, cost, mu=0.05, decision_exits="all"),
        "dimee-entry": lambda: DimeePolicy(plan, cost, mu=0.05, decision_exits="all", entry="embedding"),
    }


def command_line() -> str:
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(str(REPO)) else sys.executable
    return "HF_HUB_OFFLINE=1 " + shlex.join([exe, os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def validation_texts(info, n: int) -> tuple[list[str], list[str] | None]:
    """The first n validation texts, in the order the run cached their logits."""
    data = load_glue_split(get_task(info.task), "validation")
    fields = list(info.text_fields)
    first = [str(v) for v in data[fields[0]][:n]]
    second = [str(v) for v in data[fields[1]][:n]] if len(fields) > 1 else None
    return first, second


def tokenize(tokenizer, texts: list[str], pairs: list[str] | None) -> tuple[list[tuple], list[tuple] | None]:
    """As the mobile service tokenises: special tokens, no truncation, no padding."""
    enc = tokenizer(texts, pairs, add_special_tokens=True, truncation=False, padding=False, return_attention_mask=False)
    types = enc.get("token_type_ids")
    return [tuple(s) for s in enc["input_ids"]], None if types is None else [tuple(t) for t in types]


def offline_answers(policy: ExitPolicy, split, n: int, hidden: int) -> list[dict]:
    outcome = policy.predict_outcome(split.logits[:n], None if split.embedding is None else split.embedding[:n])
    table = policy.cost_model_.path_costs(
        policy.plan_, list(outcome.table.paths), token_counts=split.token_counts[:n], hidden_size=hidden
    )
    rows = np.arange(n)
    costs = table[rows, outcome.routes, outcome.depths - 1]
    labels = split.logits[rows, outcome.exits - 1].argmax(axis=1)
    return [
        {"exit": int(e), "route": r, "label": int(l), "cost": float(c), "depth": int(d)}
        for e, r, l, c, d in zip(outcome.exits, outcome.route_labels(), labels, costs, outcome.depths)
    ]


def inprocess_answers(policy: ExitPolicy, parts, ids, types, plan, cost) -> tuple[list[dict], float]:
    start = time.perf_counter()
    answers = run_routed(parts, lambda seen, tier, depth, feats: policy.step(seen, tier, depth, feats), ids, types)
    seconds = time.perf_counter() - start
    out = []
    for answer, seq in zip(answers, ids):
        hidden = parts["mobile"].hidden_size
        hops = {
            f"{a.tier}_{b.tier}": hop_payload_size([len(seq)], b.entry, hidden, "fp32")
            for a, b in zip(answer.stops[:-1], answer.stops[1:])
        }
        breakdown = cost.route_breakdown(plan, answer.stops, hops, reference_bytes=token_payload_size([len(seq)]))
        out.append(
            {
                "exit": answer.exit,
                "route": ">".join(s.label() for s in answer.stops),
                "label": int(np.argmax(answer.logits)),
                "cost": float(breakdown["normalised"]),
            }
        )
    return out, seconds


def served_one(prediction: dict) -> dict:
    return {
        "exit": int(prediction["exit"]),
        "route": ">".join(prediction["route"]),
        "label": int(prediction["label"]) if prediction["label"] is not None else None,
        "cost": float(prediction["cost"]["normalised"]),
        "degraded": bool(prediction["degraded"]),
    }


def served_sequential(url: str, texts: list[str], pairs: list[str] | None) -> list[dict]:
    out = []
    with httpx.Client(timeout=60) as client:
        for i, text in enumerate(texts):
            body = {"text": text} if pairs is None else {"text": text, "text_pair": pairs[i]}
            response = client.post(f"{url}/v1/classify", json=body)
            response.raise_for_status()
            out.append(served_one(response.json()["predictions"][0]))
    return out


def served_concurrent(url: str, texts: list[str], pairs: list[str] | None, clients: int) -> list[dict]:
    async def main() -> list[dict]:
        results: list[dict | None] = [None] * len(texts)
        queue = list(range(len(texts)))
        async with httpx.AsyncClient(timeout=120) as client:

            async def worker() -> None:
                while queue:
                    i = queue.pop()
                    body = {"text": texts[i]} if pairs is None else {"text": texts[i], "text_pair": pairs[i]}
                    response = await client.post(f"{url}/v1/classify", json=body)
                    response.raise_for_status()
                    results[i] = served_one(response.json()["predictions"][0])

            await asyncio.gather(*(worker() for _ in range(clients)))
        return [r for r in results if r is not None]

    return asyncio.run(main())


def compare(reference: list[dict], other: list[dict]) -> dict:
    fields = ("exit", "route", "label")
    mismatched = [i for i, (a, b) in enumerate(zip(reference, other)) if any(a[f] != b[f] for f in fields)]
    bad = set(mismatched)
    same = [i for i in range(len(reference)) if i not in bad]
    cost_diff = max((abs(reference[i]["cost"] - other[i]["cost"]) for i in same), default=0.0)
    return {
        "n": len(other),
        "mismatches": len(mismatched),
        "first_mismatches": [{"i": i, "offline": reference[i], "other": other[i]} for i in mismatched[:3]],
        "max_abs_cost_diff": cost_diff,
        "degraded": sum(1 for o in other if o.get("degraded")),
    }


def layers_per_1000(answers: list[dict], plan) -> dict:
    """Layers run by the routed answers vs the same routes with every visited tier running all its layers."""
    after = before = 0
    m, e, L = plan.mobile_end, plan.edge_end, plan.num_layers
    full = {"mobile": m, "edge": e, "cloud": L}
    for a in answers:
        stops = [s.split("@") for s in a["route"].split(">")]
        for index, (tier, entry) in enumerate(stops):
            entry = int(entry)
            left = int(stops[index + 1][1]) if index + 1 < len(stops) else a["depth"]
            after += left - entry
            before += (left if index + 1 < len(stops) else full[tier]) - entry
    scale = 1000 / len(answers)
    return {"before": before * scale, "after": after * scale, "saved_share": 1 - after / before}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/bench-sst2", help="a trained run folder (dimee train / dimee demo)")
    parser.add_argument("--n", type=int, default=500, help="validation texts per policy")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--policies", default=None, help="comma-separated subset of the policies")
    parser.add_argument("--no-serve", action="store_true", help="offline vs in-process only")
    parser.add_argument("--out", default="results/routing")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the Markdown of an earlier report")
    return parser.parse_args()


def training_command(info) -> str:
    """The `dimee train` command that made the run (from its run.json)."""
    t = info.training
    flags = {"--task": info.task, "--output": t.get("output_dir"), "--epochs": t.get("epochs"),
             "--train-subset": t.get("train_subset"), "--calibration-subset": t.get("calibration_subset"),
             "--max-length": t.get("max_length"), "--lr": t.get("learning_rate"), "--seed": t.get("seed")}  # fmt: skip
    return "dimee train " + " ".join(f"{k} {v}" for k, v in flags.items() if v is not None)


def main() -> None:
    args = parse_args()
    if args.render:
        report = json.loads(Path(args.render).read_text())
        report.setdefault("training_command", training_command(read_run_info(report["run"])))
        Path(args.render).write_text(json.dumps(report, indent=2, default=str))
        Path(args.render).with_suffix(".md").write_text(render(report))
        return
    run = Path(args.run)
    info = read_run_info(run)
    plan, cost = info.plan, info.cost_model
    fit, val = read_cached_split(run, "calibration"), read_cached_split(run, "validation")
    n = min(args.n, len(val.labels))
    tokenizer = AutoTokenizer.from_pretrained(run / "encoder")
    texts, pairs = validation_texts(info, n)
    ids, types = tokenize(tokenizer, texts, pairs)
    if [len(s) for s in ids] != val.token_counts[:n].tolist():
        raise SystemExit("the validation texts do not line up with the run's cached token counts")
    parts = {tier: load_tier_part(run, plan, tier) for tier in TIERS}
    hidden = parts["mobile"].hidden_size
    chosen = policies(plan, cost)
    if args.policies:
        chosen = {k: v for k, v in chosen.items() if k in args.policies.split(",")}
    saved_policy = run / POLICY_FILE
    backup = saved_policy.read_bytes() if saved_policy.exists() else None
    report = {"command": command_line(), "run": str(run), "task": info.task, "plan": plan.to_dict(), "n": n,
              "clients": args.clients, "machine": platform.platform(), "training_command": training_command(info),
              "policies": {}}  # fmt: skip
    try:
        for name, make in chosen.items():
            policy = make().fit(fit.logits, fit.labels, fit.embedding)
            offline = offline_answers(policy, val, n, hidden)
            inproc, seconds = inprocess_answers(policy, parts, ids, types, plan, cost)
            entry = {
                "offline_cost": float(np.mean([a["cost"] for a in offline])),
                "routes": {r: sum(1 for a in offline if a["route"] == r) for r in sorted({a["route"] for a in offline})},
                "in_process": {**compare(offline, inproc), "seconds": seconds},
                "layers_per_1000": layers_per_1000(offline, plan),
            }
            if not args.no_serve:
                saved_policy.write_text(json.dumps(policy.to_dict()))
                with start_all(run, env={"DIMEE_BATCH_WINDOW_MS": "2"}) as group:
                    entry["served_batch1"] = compare(offline, served_sequential(group.mobile_url, texts, pairs))
                    concurrent = served_concurrent(group.mobile_url, texts, pairs, args.clients)
                    entry["served_concurrent"] = compare(offline, concurrent)
            report["policies"][name] = entry
            print(name, json.dumps({k: v for k, v in entry.items() if k != "routes"}, default=str)[:400], flush=True)
    finally:
        if backup is None:
            saved_policy.unlink(missing_ok=True)
        else:
            saved_policy.write_bytes(backup)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(render(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def render(report: dict) -> str:
    lines = [
        "# Served vs evaluated, per answer, under routes",
        "",
        f"Run `{report['run']}` ({report['task']}, plan {report['plan']['mobile_end']},{report['plan']['edge_end']} of "
        f"{report['plan']['num_layers']} layers), the first {report['n']} validation texts; every policy fitted on "
        "the calibration split. Offline = `predict_outcome` on the cached logits; in-process = `tiers.run_routed`; "
        f"served = three uvicorn services, batch 1 (sequential) and {report['clients']} concurrent clients. A "
        "mismatch is an answer whose exit, route or label differs from the offline one; cost difference is the "
        "largest |served - offline| normalised cost over the answers that match.",
        "",
        f"The run was trained on this machine's CPU with `{report.get('training_command', '?')}` (the demo's settings).",
        "",
        "| policy | offline cost | in-process mismatches / max cost diff | served batch 1 | served concurrent | "
        "layers per 1,000 (all layers of each visited tier -> in-tier early exit) |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in report["policies"].items():
        def cell(key: str) -> str:
            if key not in e:
                return "not run"
            c = e[key]
            degraded = f", {c['degraded']} degraded" if c.get("degraded") else ""
            return f"{c['mismatches']} / {c['max_abs_cost_diff']:.1e}{degraded}"

        layers = e["layers_per_1000"]
        lines.append(
            f"| {name} | {e['offline_cost']:.3f} | {cell('in_process')} | {cell('served_batch1')} | "
            f"{cell('served_concurrent')} | {layers['before']:.0f} -> {layers['after']:.0f} "
            f"({100 * layers['saved_share']:.1f}% saved) |"
        )
    lines += ["", "Routes taken (offline, count of samples):", ""]
    for name, e in report["policies"].items():
        lines.append(f"- {name}: " + ", ".join(f"`{r}` {c}" for r, c in e["routes"].items()))
    lines += ["", "Command:", "", "```bash", report["command"], "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
