"""The three tiers on a local Ray Serve instance (`services.ray_serve`): requests/s and p50/p99 latency at 32
clients with 1 and then 2 edge replicas, and an edge replica killed (ray.kill) in the middle of a run.

Every request is forced to edge (`force_tier: edge`): on this run's plan that sends the token ids straight to
edge, which runs layers 1..e and answers, so edge does the work and mobile only tokenises and forwards: the
tier being scaled out is the bottleneck. Each configuration gets a fresh Ray instance, a warm-up, then `--rounds`
measured phases; answers are checked against the one-process model (`dimee.api.predict_texts`, exit e).

On a 2-core machine the Ray processes (proxy, controller, GCS, raylet), the load generator and every replica
share two cores: the absolute figures are this machine's; the 1 -> 2 replica ratio is what carries over, as a
lower bound of what a second edge machine adds.

    flock /tmp/dimee-heavy.lock env HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_serve_bench.py \\
        --run-dir runs/bench-sst2
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import asyncio
import json
import platform
import secrets
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from services_common import (  # noqa: E402
    REPO,
    SST2_VALIDATION,
    command_line,
    loadavg,
    metric_sum,
    pct,
    read_sentences,
    run_concurrent,
)


def expected_labels(run_dir: Path, texts: list[str], exit_index: int) -> list[int]:
    from dimee.api import predict_texts

    return [int(row["exit_predictions"][exit_index - 1]) for row in predict_texts(run_dir, texts)]


def check(results: list[dict | None], expected: list[int], texts_index: list[int]) -> dict:
    """Counts of one phase: statuses, lost (no answer), degraded, labels unlike the one-process model's."""
    statuses: Counter = Counter()
    lost = degraded = mismatched = 0
    reasons: Counter = Counter()
    for record, k in zip(results, texts_index):
        if record is None or record.get("status") is None:
            lost += 1
            continue
        statuses[str(record["status"])] += 1
        prediction = record.get("prediction")
        if prediction is None:
            continue
        if prediction["degraded"]:
            degraded += 1
            reasons[prediction.get("degraded_reason")] += 1
        if prediction["label"] != expected[k] or prediction["tier"] != "edge":
            mismatched += 1
    return {
        "requests": len(results),
        "statuses": dict(statuses),
        "lost": lost,
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "degraded": degraded,
        "degraded_reasons": dict(reasons),
        "labels_unlike_one_process": mismatched,
    }


def phase(url: str, texts: list[str], concurrency: int, on_sent=None) -> dict:
    out = asyncio.run(run_concurrent(url, texts, "edge", concurrency, timeout_s=60.0, phase_s=600.0, on_sent=on_sent))
    latencies = [r["ms"] for r in out["results"] if r is not None and r.get("status") == 200]
    return {
        "results": out["results"],
        "rps": len(latencies) / out["elapsed_s"],
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "elapsed_s": out["elapsed_s"],
    }


def configuration(args, edge_replicas: int, texts: list[str], expected: list[int], kill: bool) -> dict:
    """One fresh local Ray instance with `edge_replicas` edge replicas: warm-up, then the rounds (or the kill run)."""
    import ray

    from services.launch import free_port
    from services.ray_config import parse_replicas
    from services.ray_serve import local_tiers, replica_actors

    scaling = parse_replicas(f"mobile=1,edge={edge_replicas},cloud=1")
    settings = {"request_timeout_s": "30"}
    token = secrets.token_urlsafe(32)
    started = time.perf_counter()
    with local_tiers(str(args.run_dir), scaling, token, free_port(), settings=settings) as urls:
        deploy_s = time.perf_counter() - started
        mobile = urls["mobile"]
        phase(mobile, texts[: args.warmup], args.clients)
        row: dict = {"edge_replicas": edge_replicas, "deploy_s": round(deploy_s, 1), "loadavg_before": loadavg()}
        n = args.requests
        if not kill:
            rounds = []
            for r in range(args.rounds):
                chunk = [texts[(r * n + k) % len(texts)] for k in range(n)]
                index = [(r * n + k) % len(texts) for k in range(n)]
                measured = phase(mobile, chunk, args.clients)
                counts = check(measured.pop("results"), expected, index)
                rounds.append({**{k: round(v, 2) for k, v in measured.items()}, **counts})
                print(f"  edge={edge_replicas} round {r + 1}: {rounds[-1]['rps']:.1f} req/s, p50 "
                      f"{rounds[-1]['p50_ms']:.0f} ms, p99 {rounds[-1]['p99_ms']:.0f} ms", flush=True)  # fmt: skip
            row["rounds"] = rounds
            row["rps_median"] = float(sorted(x["rps"] for x in rounds)[len(rounds) // 2])
            return row
        edges = replica_actors("edge")
        state: dict = {}

        def on_sent(sent: int) -> None:
            if sent == args.kill_after and "killed_at" not in state:
                state["killed_at"] = sent
                state["t"] = time.perf_counter()
                threading.Thread(target=ray.kill, args=(edges[0],), kwargs={"no_restart": True}).start()

        chunk = [texts[k % len(texts)] for k in range(args.kill_requests)]
        measured = phase(mobile, chunk, args.clients, on_sent=on_sent)
        counts = check(measured.pop("results"), expected, [k % len(texts) for k in range(args.kill_requests)])
        metrics = httpx.get(f"{mobile}/metrics", timeout=10.0, trust_env=False).text
        resent = metric_sum(metrics, "dimee_handoff_resends_total")
        waited = time.perf_counter()
        while len(replica_actors("edge")) < edge_replicas and time.perf_counter() - waited < 120:
            time.sleep(0.5)
        row.update(
            {
                "kill": {
                    "requests": args.kill_requests,
                    "killed_after_sent": state.get("killed_at"),
                    **{k: round(v, 2) for k, v in measured.items()},
                    **counts,
                    "replicas_after_s": round(time.perf_counter() - state.get("t", waited), 1),
                    "replicas_after": len(replica_actors("edge")),
                    "handoffs_resent_by_mobile": resent,
                }
            }
        )
        print(f"  kill run: {json.dumps(row['kill'])}", flush=True)
        return row


def render_md(report: dict) -> str:
    one, two = report["configurations"][0], report["configurations"][1]
    kill = report["configurations"][2]["kill"]
    lines = [
        "## Ray Serve: edge scale-out on one machine",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}. Ray {report['ray']}, {report['clients']} clients, every request forced to "
        "edge (token ids straight to edge, which runs layers 1..e: the scaled tier does the work). Each "
        "configuration: a fresh local Ray instance, a warm-up, then rounds of "
        f"{report['requests_per_round']} requests; answers checked against the one-process model.",
        "",
        "| edge replicas | requests/s (median of rounds) | p50 ms | p99 ms | 5xx | lost | degraded | labels unlike one process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in (one, two):
        mid = sorted(row["rounds"], key=lambda x: x["rps"])[len(row["rounds"]) // 2]
        bad = {
            k: sum(r[k] for r in row["rounds"])
            for k in ("server_errors_5xx", "lost", "degraded", "labels_unlike_one_process")
        }
        lines.append(
            f"| {row['edge_replicas']} | {row['rps_median']:.1f} | {mid['p50_ms']:.0f} | {mid['p99_ms']:.0f} | "
            f"{bad['server_errors_5xx']} | {bad['lost']} | {bad['degraded']} | {bad['labels_unlike_one_process']} |"
        )
    lines += [
        "",
        f"Ratio 2 / 1 edge replicas: **{report['ratio_2_over_1']:.2f}x** requests/s. This is the figure that "
        "carries over, and only as a lower bound: here both edge replicas, mobile, cloud, Ray's proxy and "
        "control processes and the load generator share 2 cores, so a second replica adds no core; on separate "
        "edge machines each replica brings its own.",
        "",
        "### An edge replica killed mid-run",
        "",
        f"{kill['requests']} requests at {report['clients']} clients on 2 edge replicas; one replica killed with "
        f"`ray.kill` once {kill['killed_after_sent']} requests were sent.",
        "",
        "| answered 200 | 5xx | lost | degraded | labels unlike one process | handoffs resent by mobile "
        "| edge replicas again after |",
        "|---|---|---|---|---|---|---|",
        f"| {kill['statuses'].get('200', 0)} | {kill['server_errors_5xx']} | {kill['lost']} | {kill['degraded']} "
        f"| {kill['labels_unlike_one_process']} | {kill['handoffs_resent_by_mobile']:.0f} "
        f"| {kill['replicas_after']} after {kill['replicas_after_s']} s |",
        "",
    ]
    if kill["degraded_reasons"]:
        lines += [f"Degraded reasons: {kill['degraded_reasons']}.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, default=REPO / "runs/bench-sst2")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=400, help="requests per measured round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=64)
    p.add_argument("--kill-requests", type=int, default=200)
    p.add_argument("--kill-after", type=int, default=60, help="kill an edge replica once this many requests were sent")
    p.add_argument("--texts", type=int, default=400)
    p.add_argument("--out-json", type=Path, default=REPO / "results/deploy_ray.json")
    p.add_argument("--out-md", type=Path, default=REPO / "results/deploy_ray.md")
    args = p.parse_args()
    import ray

    from tiers import read_run_info

    texts = read_sentences(SST2_VALIDATION, args.texts)
    edge_exit = read_run_info(args.run_dir).plan.edge_end
    expected = expected_labels(args.run_dir, texts, edge_exit)
    configurations = []
    for edge_replicas, kill in ((1, False), (2, False), (2, True)):
        print(f"edge replicas {edge_replicas}{' (kill run)' if kill else ''}", flush=True)
        configurations.append(configuration(args, edge_replicas, texts, expected, kill))
    report = {
        "command": (f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else "")
        + command_line(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}",
        "ray": ray.__version__,
        "clients": args.clients,
        "requests_per_round": args.requests,
        "configurations": configurations,
        "ratio_2_over_1": configurations[1]["rps_median"] / configurations[0]["rps_median"],
    }
    args.out_json.write_text(json.dumps(report, indent=2) + "\n")
    args.out_md.write_text(render_md(report))
    print(render_md(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
