"""The three tier services (real uvicorn processes on loopback) against the same sliced model in one process,
measured side by side in one run, with the targets of issue 14 reported as met or missed:

- per-hop overhead p50 <= 1.0 ms: each hop's round trip minus the next tier's own time (the responses'
  cost.wall_ms: HTTP client and server, the answer's JSON), on the three-tier path;
- batch-1 overhead of the three-tier path <= 25% of in-process: sequential one-text requests on the linear route
  (mobile 1..m -> edge m+1..e -> cloud e+1..L as hidden states: the built-in rule at threshold 1) against
  `tiers.run_routed` with the same rule, text by text in ABBA order, on the ratio of the medians;
- throughput at 32 clients >= 90% of the best in-process batched rate in every round: rounds alternate service /
  in-process (batches of 32 through the three parts, at the torch thread count that was fastest in a check
  before the rounds), forced to cloud and mixed (the run's policy).

Also: batch-1 latency of the forced paths (mobile, edge, cloud: token ids straight to edge or cloud), edge stopped
halfway under load (0 lost, 0 5xx), bytes per hop against the floor for fp32 / fp16 / int8, and a py-spy profile
of the three tiers answering three-tier requests (`services_profile.py`).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/services_bench.py --run-dir runs/bench-sst2

Every loop is bounded in count and every phase in time; all servers are stopped at the end. Loopback only.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import start_all  # noqa: E402
from services.tier import parse_stop  # noqa: E402
from services_common import (  # noqa: E402
    BYTES_PER_VALUE,
    HOPS,
    REPO,
    SST2_VALIDATION,
    FastClient,
    InProcess,
    batch_stats,
    classify_sync,
    command_line,
    loadavg,
    mean_batch,
    pct,
    read_sentences,
    run_concurrent,
    summary,
    tier_counts,
)
from services_profile import LINEAR_ENV, profile_group  # noqa: E402
from services_report import render_md  # noqa: E402
from stack_floor import stack_floor  # noqa: E402
from tiers import TIERS, hop_payload_size  # noqa: E402

TARGETS = {"hop_overhead_ms_p50": 1.0, "three_tier_overhead_pct": 25.0, "throughput_ratio_pct_every_round": 90.0}


# ---- 1. latency at batch 1 --------------------------------------------------------------------------------------
def latency_paths(args, client: FastClient, url: str, texts: list[str], paths: dict, deadline: float) -> dict:
    """`paths`: name -> (force_tier or None, in-process labels of [text], the tier that must answer). Service and
    in-process calls alternate text by text (ABBA), so both see the same machine load."""
    out: dict = {}
    for name, (force, inprocess, tier) in paths.items():
        for text in texts[: args.warmup]:  # bounded warm-up, both sides
            classify_sync(client, url, text, force)
            inprocess([text])
        service_ms, inproc_ms, server_ms, hop_ms, tier_ms, preds = [], [], [], {}, {}, []
        agree = 0
        load_before = loadavg()
        for i, text in enumerate(texts[: args.latency_requests]):
            if time.monotonic() > deadline:
                print(f"  latency {name}: phase time limit reached after {i} texts", flush=True)
                break
            for side in ("svc", "ref") if i % 4 in (0, 3) else ("ref", "svc"):
                t0 = time.perf_counter()
                if side == "svc":
                    body = classify_sync(client, url, text, force)
                    service_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    label = int(inprocess([text])[0])
                    inproc_ms.append((time.perf_counter() - t0) * 1000)
            pred = body["predictions"][0]
            if pred["tier"] != tier or pred["degraded"]:
                raise RuntimeError(f"path {name}: answered at {pred['tier']} (degraded={pred['degraded']})")
            agree += int(pred["label"] == label)
            server_ms.append(body["wall_ms"])
            for key, value in pred["cost"]["wall_ms"].items():
                (hop_ms if "_" in key else tier_ms).setdefault(key, []).append(value)
            preds.append(pred)
        svc, ref = summary(service_ms), summary(inproc_ms)
        out[name] = {
            "force_tier": force,
            "route": preds[0]["route"] if preds else None,
            "loadavg_before": load_before,
            "service_ms": svc,
            "inprocess_ms": ref,
            "overhead_p50_pct": 100 * (svc["p50"] - ref["p50"]) / ref["p50"],
            "overhead_p99_pct": 100 * (svc["p99"] - ref["p99"]) / ref["p99"],
            "overhead_p50_ms": svc["p50"] - ref["p50"],
            "paired_overhead_pct_p50": pct([100 * (a - b) / b for a, b in zip(service_ms, inproc_ms)], 50),
            "client_minus_mobile_server_ms_p50": pct([a - b for a, b in zip(service_ms, server_ms)], 50),
            "tier_ms_p50": {k: pct(v, 50) for k, v in tier_ms.items()},
            "hop_ms_p50": {k: pct(v, 50) for k, v in hop_ms.items()},
            "hop_ms_p99": {k: pct(v, 99) for k, v in hop_ms.items()},
            "label_agreement": f"{agree}/{len(service_ms)}",
            "_preds": preds,
        }
        hops = ", ".join(f"{k} {v:.2f} ms" for k, v in out[name]["hop_ms_p50"].items())
        print(
            f"  latency {name:10s}: service p50 {svc['p50']:.1f} ms | in-process p50 {ref['p50']:.1f} ms | overhead "
            f"{out[name]['overhead_p50_pct']:+.0f}% | hops p50 {hops or '-'} | labels {agree}/{len(service_ms)}",
            flush=True,
        )
    return out


# ---- 2. throughput at N concurrent clients --------------------------------------------------------------------
def inprocess_batched(ref: InProcess, texts: list[str], batch: int, mode: str) -> tuple[float, list[str]]:
    start = time.perf_counter()
    tiers: list[str] = []
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        if mode == "cloud":
            ref.forced(chunk, "cloud")
            tiers += ["cloud"] * len(chunk)
        else:
            tiers += ref.routed(chunk)[1]
    return time.perf_counter() - start, tiers


def best_threads(args, ref: InProcess, texts: list[str]) -> dict:
    """The in-process batched rate (cloud, batches of `concurrency`) at each candidate torch thread count; the
    rounds then run the baseline at the fastest."""
    rates = {}
    for threads in args.inproc_threads:
        torch.set_num_threads(threads)
        inprocess_batched(ref, texts[: args.concurrency], args.concurrency, "cloud")  # warm-up
        elapsed, _ = inprocess_batched(ref, texts, args.concurrency, "cloud")
        rates[threads] = len(texts) / elapsed
    best = max(rates, key=rates.get)
    torch.set_num_threads(best)
    print(f"  in-process batched, cloud, {len(texts)} texts: " + ", ".join(
        f"{t} thread(s) {r:.1f} texts/s" for t, r in rates.items()) + f" -> baseline at {best}", flush=True)  # fmt: skip
    return {"texts": len(texts), "texts_per_s_by_threads": rates, "best_threads": best}


def throughput_phase(args, ref: InProcess, client: httpx.Client, group, texts: list[str], deadline: float) -> dict:
    out: dict = {"inprocess_threads": best_threads(args, ref, texts[: args.alt_requests])}
    asyncio.run(run_concurrent(group.mobile_url, texts[: args.concurrency * 2], "cloud", args.concurrency, 60, 120))
    for mode in args.modes:
        force = "cloud" if mode == "cloud" else None
        svc_rates, ref_rates, svc_tiers, ref_tiers, batches, lat, failures = [], [], [], [], [], [], 0
        for r in range(args.rounds):
            if time.monotonic() > deadline:
                print(f"  throughput {mode}: phase time limit reached after {r} rounds", flush=True)
                break
            for side in ("svc", "ref") if r % 2 == 0 else ("ref", "svc"):
                if side == "svc":
                    before = batch_stats(client, group.urls)
                    run = asyncio.run(
                        run_concurrent(group.mobile_url, texts, force, args.concurrency, 60, args.phase_seconds)
                    )
                    batches.append(mean_batch(before, batch_stats(client, group.urls)))
                    ok = [x for x in run["results"] if x is not None and x["status"] == 200]
                    failures += len(texts) - len(ok)
                    svc_rates.append(len(ok) / run["elapsed_s"])
                    svc_tiers = [x["prediction"]["tier"] for x in ok]
                    lat += [x["ms"] for x in ok]
                else:
                    elapsed, ref_tiers = inprocess_batched(ref, texts, args.concurrency, mode)
                    ref_rates.append(len(texts) / elapsed)
        per_round = [100 * s / r for s, r in zip(svc_rates, ref_rates)]
        out[mode] = {
            "loadavg_after": loadavg(),
            "requests_per_round": len(texts),
            "rounds": len(svc_rates),
            "service_texts_per_s": svc_rates,
            "inprocess_texts_per_s": ref_rates,
            "service_median": float(np.median(svc_rates)),
            "inprocess_median": float(np.median(ref_rates)),
            "ratio_pct": 100 * float(np.median(svc_rates)) / float(np.median(ref_rates)),
            "ratio_per_round_pct": per_round,
            "ratio_min_pct": min(per_round),
            "service_request_ms": summary(lat) if lat else None,
            "failed_requests": failures,
            "service_tiers": tier_counts(svc_tiers),
            "inprocess_tiers": tier_counts(ref_tiers),
            "mean_forward_batch": batches,
        }
        print(
            f"  throughput {mode:5s}: service {out[mode]['service_median']:.1f} texts/s | in-process "
            f"{out[mode]['inprocess_median']:.1f} texts/s | per round {[round(x) for x in per_round]}% | "
            f"mean batch {batches[-1] if batches else None} | failed {failures}",
            flush=True,
        )
    return out


# ---- 3. fault: edge stopped halfway --------------------------------------------------------------------------
def fault_phase(args, group, texts: list[str]) -> dict:
    kill_at = len(texts) // 2
    state: dict = {"stop_task": None}

    def on_sent(count: int) -> None:
        if count == kill_at and state["stop_task"] is None:
            state["stop_task"] = state["loop"].create_task(asyncio.to_thread(group.stop, "edge"))

    async def main() -> dict:
        state["loop"] = asyncio.get_running_loop()
        run = await run_concurrent(
            group.mobile_url, texts, "edge", args.concurrency, args.client_timeout, args.phase_seconds, on_sent
        )
        if state["stop_task"] is not None:
            await asyncio.wait_for(state["stop_task"], 30)
        return run

    run = asyncio.run(main())
    results = run["results"]
    status = [r["status"] for r in results if r is not None and r["status"] is not None]
    preds = [r["prediction"] for r in results if r is not None and r.get("prediction")]
    reasons: dict[str, int] = {}
    for p in preds:
        if p["degraded"]:
            reasons[p["degraded_reason"]] = reasons.get(p["degraded_reason"], 0) + 1
    out = {
        "requests": len(texts),
        "concurrency": args.concurrency,
        "force_tier": "edge",
        "edge_stopped_after_sent": kill_at,
        "lost": sum(1 for r in results if r is None or r["status"] is None),
        "status_5xx": sum(1 for s in status if s >= 500),
        "status_4xx": sum(1 for s in status if 400 <= s < 500),
        "status_200": sum(1 for s in status if s == 200),
        "degraded": sum(reasons.values()),
        "degraded_reasons": reasons,
        "answered_by": tier_counts([p["tier"] for p in preds]),
        "request_ms": summary([r["ms"] for r in results if r is not None and r.get("ms") is not None]),
    }
    print(f"  fault: lost {out['lost']}, 5xx {out['status_5xx']}, degraded {out['degraded']} {reasons}", flush=True)
    return out


# ---- 4. bytes per hop ------------------------------------------------------------------------------------------
def bytes_report(ref: InProcess, texts: list[str], preds: list[dict], encoding: str) -> dict:
    """Bytes per hop of one-text answers against the floor (hidden states: tokens x hidden x bytes per value;
    token ids: 4 bytes per token) and against the codec's exact payload size for the hop's boundary."""
    counts = [ref.token_count(t) for t in texts[: len(preds)]]
    out: dict = {"encoding": encoding, "texts": len(preds), "tokens_total": int(sum(counts))}
    for hop in HOPS:
        if not any(hop in p["cost"]["bytes_per_hop"] for p in preds):
            continue
        target = hop.split("_")[1]
        sent, expected, floor = [], [], []
        for p, c in zip(preds, counts):
            boundary = next((parse_stop(s)[1] for s in p["route"] if parse_stop(s)[0] == target), None)
            sent.append(p["cost"]["bytes_per_hop"].get(hop, 0))
            expected.append(0 if boundary is None else hop_payload_size([c], boundary, ref.hidden, encoding))
            floor.append(0 if boundary is None else (4 * c if boundary == 0 else c * ref.hidden * BYTES_PER_VALUE[encoding]))
        out[hop] = {
            "overhead_pct": 100 * (sum(sent) - sum(floor)) / sum(floor),
            "bytes_per_text_p50": pct(sent, 50),
            "floor_per_text_p50": pct(floor, 50),
            "extra_bytes_per_text_p50": pct([s - f for s, f in zip(sent, floor)], 50),
            "equals_payload_size": sent == expected,
        }
    return out


def encoding_bytes(args, ref: InProcess, texts: list[str], encoding: str, env: dict, log_dir: Path) -> dict:
    chain = {**env, **LINEAR_ENV, "DIMEE_HANDOFF_ENCODING": encoding}
    with start_all(args.run_dir, env=chain, log_dir=log_dir / encoding, ready_timeout_s=180) as group, \
            FastClient(60) as client:  # fmt: skip
        sample = texts[: args.bytes_requests]
        preds = [classify_sync(client, group.mobile_url, t, None)["predictions"][0] for t in sample]
    labels = ref.routed(sample)[0]
    report = bytes_report(ref, sample, preds, encoding)
    report["label_agreement_with_inprocess_fp32"] = f"{sum(int(p['label'] == int(x)) for p, x in zip(preds, labels))}/{len(preds)}"
    return report


# ---- the targets -----------------------------------------------------------------------------------------------
def targets(report: dict) -> list[dict]:
    """Each target with its figure and whether it is met."""
    linear = report["linear"]["latency"]["three-tier"]
    hops = {h: v for h, v in linear["hop_ms_p50"].items()}
    worst_hop = max(hops, key=hops.get)
    throughput = report["main"]["throughput"]
    rounds = {m: throughput[m]["ratio_min_pct"] for m in report["settings"]["modes"] if m in throughput}
    worst_mode = min(rounds, key=rounds.get)
    return [
        {
            "target": f"per-hop overhead p50 <= {TARGETS['hop_overhead_ms_p50']:g} ms (three-tier path)",
            "figure": f"{hops[worst_hop]:.2f} ms ({', '.join(f'{h} {v:.2f} ms' for h, v in hops.items())}; the HTTP "
            "stack alone, a trivial FastAPI app answering the same client and body size in this run: "
            + " / ".join(f"{f['p50_ms']:.2f}" for f in report["linear"].get("stack_floor", []))
            + " ms p50 before / after)",
            "met": hops[worst_hop] <= TARGETS["hop_overhead_ms_p50"],
        },
        {
            "target": f"batch-1 overhead of the three-tier path <= {TARGETS['three_tier_overhead_pct']:g}% of in-process",
            "figure": f"{linear['overhead_p50_pct']:+.0f}% ({linear['service_ms']['p50']:.1f} vs "
            f"{linear['inprocess_ms']['p50']:.1f} ms p50, {linear['overhead_p50_ms']:+.1f} ms)",
            "met": linear["overhead_p50_pct"] <= TARGETS["three_tier_overhead_pct"],
        },
        {
            "target": f"throughput at {report['settings']['concurrency']} clients >= "
            f"{TARGETS['throughput_ratio_pct_every_round']:g}% of the best in-process batched rate in every round",
            "figure": "; ".join(
                f"{m}: lowest round {v:.0f}% (rounds {', '.join(f'{x:.0f}%' for x in throughput[m]['ratio_per_round_pct'])})"
                for m, v in rounds.items()
            ),
            "met": rounds[worst_mode] >= TARGETS["throughput_ratio_pct_every_round"],
        },
    ]


# ---- main -------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=REPO / "runs/bench-sst2")
    p.add_argument("--data", type=Path, default=SST2_VALIDATION)
    p.add_argument("--warmup", type=int, default=10, help="warm-up requests per latency path")
    p.add_argument("--latency-requests", type=int, default=100, help="sequential batch-1 requests per path")
    p.add_argument("--throughput-requests", type=int, default=640, help="requests per throughput round")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients = in-process batch size")
    p.add_argument("--rounds", type=int, default=4, help="alternating service / in-process throughput rounds")
    p.add_argument("--modes", default="cloud,mixed", help="throughput modes: cloud (forced), mixed (policy)")
    p.add_argument("--fault-requests", type=int, default=600)
    p.add_argument("--profile-requests", type=int, default=300, help="three-tier requests sampled by py-spy (0: none)")
    p.add_argument("--bytes-requests", type=int, default=50, help="requests per extra encoding")
    p.add_argument("--encodings", default="fp16,int8", help="extra handoff encodings to restart with ('' = none)")
    p.add_argument("--window-ms", type=float, default=0.0, help="DIMEE_BATCH_WINDOW_MS")
    p.add_argument("--max-batch", type=int, default=32, help="DIMEE_MAX_BATCH_SIZE")
    p.add_argument("--service-threads", type=int, default=1, help="DIMEE_TORCH_THREADS per service")
    p.add_argument("--inproc-threads", default="1,2", help="torch thread counts tried for the in-process baseline")
    p.add_argument("--alt-requests", type=int, default=128, help="texts of the in-process thread check")
    p.add_argument("--client-timeout", type=float, default=60.0, help="per-request client timeout, s")
    p.add_argument("--phase-seconds", type=float, default=300.0, help="time limit of one phase, s")
    p.add_argument("--out-json", type=Path, default=REPO / "results/services.json")
    p.add_argument("--out-md", type=Path, default=REPO / "results/services.md")
    p.add_argument("--render-only", action="store_true", help="only rewrite --out-md from --out-json (no run)")
    args = p.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    args.encodings = [e for e in args.encodings.split(",") if e]
    args.inproc_threads = [int(t) for t in args.inproc_threads.split(",") if t]
    return args


def _strip(latency: dict) -> list[dict]:
    preds = []
    for entry in latency.values():
        preds = entry.pop("_preds")
    return preds


def main() -> None:
    args = parse_args()
    if args.render_only:
        report = json.loads(args.out_json.read_text())
        args.out_md.write_text(render_md(report))
        print(f"wrote {args.out_md}")
        return
    needed = max(args.throughput_requests, args.fault_requests, args.latency_requests + args.warmup, args.alt_requests)
    pool = read_sentences(args.data, needed)
    texts = [pool[i % len(pool)] for i in range(needed)]
    print(f"loading the sliced model in process from {args.run_dir}", flush=True)
    ref = InProcess(args.run_dir)
    linear_ref = InProcess(args.run_dir, policy="threshold", threshold=1.0)
    torch.set_num_threads(1)
    t_start = time.time()
    report: dict = {
        "command": command_line(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "loadavg_start": loadavg()},  # fmt: skip
        "model": {"run_dir": os.path.relpath(args.run_dir, REPO), "plan": ref.plan.spec, "hidden": ref.hidden,
                  "layers": ref.plan.num_layers, "policy": ref.policy_name, "texts_file": str(args.data),
                  "distinct_texts": len(pool)},  # fmt: skip
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "render_only"},
        "targets_set": TARGETS,
    }
    log_dir = Path(tempfile.mkdtemp(prefix="dimee-bench-"))
    base_env = {"DIMEE_MAX_BATCH_SIZE": str(args.max_batch), "DIMEE_TORCH_THREADS": str(args.service_threads),
                "DIMEE_BATCH_WINDOW_MS": f"{args.window_ms:g}", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    deadline = lambda: time.monotonic() + args.phase_seconds  # noqa: E731

    print("three-tier path: the services with the built-in rule at threshold 1 (linear route)", flush=True)
    with start_all(args.run_dir, env={**base_env, **LINEAR_ENV}, log_dir=log_dir / "linear", ready_timeout_s=180) as group, \
            FastClient(args.client_timeout) as client:  # fmt: skip
        paths = {"three-tier": (None, lambda batch: linear_ref.routed(batch)[0], "cloud")}
        tokens = int(np.median([ref.token_count(t) for t in texts[: args.latency_requests]]))
        body_bytes = 36 + 8 * 4 + 16 + 4 + tokens * ref.hidden * 4  # a median one-text fp32 handoff
        floor = [stack_floor(body_bytes)]  # the HTTP stack alone, before and after, under the same load
        latency = latency_paths(args, client, group.mobile_url, texts, paths, deadline())
        floor.append(stack_floor(body_bytes))
        preds = _strip(latency)
        report["linear"] = {"latency": latency, "bytes_fp32": bytes_report(linear_ref, texts, preds, "fp32"),
                            "stack_floor": floor}  # fmt: skip
        print(f"  stack floor (aiohttp -> trivial FastAPI app, {body_bytes} B): p50 "
              f"{floor[0]['p50_ms']:.2f} / {floor[1]['p50_ms']:.2f} ms before / after", flush=True)  # fmt: skip
        if args.profile_requests:
            print(f"  profiling {args.profile_requests} three-tier requests with py-spy", flush=True)
            report["linear"]["profile"] = profile_group(group, texts, args.profile_requests)
            report["linear"]["profile_gil"] = profile_group(group, texts, args.profile_requests, gil=True)

    print("the run's policy: forced paths, throughput, edge stopped halfway", flush=True)
    with start_all(args.run_dir, env=base_env, log_dir=log_dir / "main", ready_timeout_s=180) as group, \
            FastClient(args.client_timeout) as fast, httpx.Client(timeout=args.client_timeout, trust_env=False) as client:  # fmt: skip
        paths = {tier: (tier, lambda batch, t=tier: ref.forced(batch, t), tier) for tier in TIERS}
        latency = latency_paths(args, fast, group.mobile_url, texts, paths, deadline())
        _strip(latency)
        report["main"] = {"latency": latency}
        report["main"]["throughput"] = throughput_phase(
            args, ref, client, group, texts[: args.throughput_requests], time.monotonic() + 3 * args.phase_seconds
        )
        if args.fault_requests:
            report["main"]["fault"] = fault_phase(args, group, texts[: args.fault_requests])

    report["bytes"] = [report["linear"]["bytes_fp32"]]
    for encoding in [e for e in args.encodings if e != "fp32"]:
        print(f"restarting the services with DIMEE_HANDOFF_ENCODING={encoding} for bytes per hop", flush=True)
        report["bytes"].append(encoding_bytes(args, linear_ref, texts, encoding, base_env, log_dir))
    report["machine"]["loadavg_end"] = loadavg()
    report["total_s"] = time.time() - t_start
    report["targets"] = targets(report)
    for t in report["targets"]:
        print(f"  {'met' if t['met'] else 'MISSED'}: {t['target']}: {t['figure']}", flush=True)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    args.out_md.write_text(render_md(report))
    print(f"wrote {args.out_json} and {args.out_md} ({report['total_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
