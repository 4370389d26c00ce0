"""The three tier services (real uvicorn processes on loopback) against the same sliced model in one process.

Measures (issue 4, "Measure"):

1. Latency per tier path (force_tier mobile / edge / cloud), batch 1, sequential requests: the service path
   (client wall time of one POST /v1/classify) against the in-process path on the same text: tokenise, run
   the same `load_tier_part` parts, and encode/decode the token ids with the codec when the sample goes
   straight to edge or cloud, as the services do (forced edge / cloud is the direct route). Service and in-process calls alternate text by text (ABBA order), so both see the same machine load.
   Overhead % = (service - in-process) / in-process, on the medians (and on the p99s).
2. Throughput at N concurrent clients (httpx.AsyncClient, one text per request, forced to cloud and mixed
   (the run's policy)) against in-process batched throughput (batches of N through the three parts, the mixed
   case routed with the same policy). Rounds alternate service / in-process.
3. Fault: R requests at concurrency N (forced to edge, so every one needs edge) with edge stopped after half
   have been sent: lost (exception / no response), 5xx, 4xx, degraded answers.
4. Payload bytes per hop (responses' cost.bytes_per_hop) against the floor tokens x hidden x bytes-per-value,
   on the linear route (services restarted with the built-in rule at threshold 1: every sample goes mobile ->
   edge -> cloud as hidden states) for fp32 and, with DIMEE_HANDOFF_ENCODING, fp16 and int8.

Every loop is bounded in count and every phase in time; all servers are stopped at the end (TierGroup is a
context manager). Loopback only.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/services_bench.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import asyncio
import json
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from transformers import AutoTokenizer

from services import start_all
from services.policy import load_policy, read_temperatures, softmax, wants_features
from services.tier import parse_stop
from tiers import TIERS, decode_tokens, encode_tokens, hop_payload_size, load_tier_part, read_run_info, run_routed
from tiers import tokenize_for_inference

REPO = Path(__file__).resolve().parent.parent
BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}
HOPS = ("mobile_edge", "mobile_cloud", "edge_cloud")


def command_line() -> str:
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(str(REPO)) else sys.executable
    script = os.path.relpath(sys.argv[0]) if os.path.isabs(sys.argv[0]) else sys.argv[0]
    return "HF_HUB_OFFLINE=1 " + shlex.join([exe, script, *sys.argv[1:]])


def read_sentences(path: Path, n: int) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                texts.append(json.loads(line)["sentence"])
            if len(texts) >= n:
                break
    return texts


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99), "mean": float(np.mean(values))}


# ---- the same sliced model, in this process ------------------------------------------------------------------
class InProcess:
    """The three parts loaded with load_tier_part, chained through the codec as the services chain them."""

    def __init__(self, run_dir: Path) -> None:
        self.info = read_run_info(run_dir)
        self.plan = self.info.plan
        self.parts = {tier: load_tier_part(run_dir, self.plan, tier) for tier in TIERS}
        self.hidden = self.parts["mobile"].hidden_size
        self.tokenizer = AutoTokenizer.from_pretrained(run_dir / "encoder")
        self.tokenizer.model_max_length = 10**9
        self.max_tokens = self.info.max_length
        temperatures = read_temperatures(run_dir, self.plan.num_layers)
        self.temperatures = temperatures
        self.policy, self.policy_name = load_policy(run_dir, self.plan, "auto", 0.9, temperatures)
        self.vocab = int(self.parts["mobile"].config.vocab_size)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def _tokens(self, texts: list[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=False, return_attention_mask=False)
        return encoded["input_ids"], encoded.get("token_type_ids")

    def forced(self, texts: list[str], tier: str, encoding: str = "fp32") -> np.ndarray:
        """Labels of `texts` answered at `tier`'s last exit by the route the services force: mobile 1..m on
        mobile; edge / cloud get the token ids straight away (through the token codec) and run 1..their end."""
        batch = tokenize_for_inference(self.tokenizer, texts, None, self.max_tokens)
        part = self.parts[tier]
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        with torch.no_grad():
            if tier != "mobile":
                input_ids, type_ids = self._tokens(texts)
                sent = decode_tokens(encode_tokens(input_ids, type_ids, self.vocab), self.vocab)
                width = max(len(seq) for seq in sent.input_ids)
                ids = torch.zeros((len(texts), width), dtype=torch.long)
                mask = torch.zeros((len(texts), width), dtype=torch.long)
                types = torch.zeros((len(texts), width), dtype=torch.long)
                for row, (seq, kinds) in enumerate(zip(sent.input_ids, sent.token_type_ids)):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    types[row, : len(seq)] = torch.tensor(kinds)
                    mask[row, : len(seq)] = 1
            out = part.run_from_ids(ids, mask, types)
        return self._labels(out.exit_logits[:, -1], out.first_exit + out.exit_logits.shape[1] - 1)

    def routed(self, texts: list[str], encoding: str = "fp32") -> tuple[np.ndarray, list[str]]:
        """Labels and answering tier of `texts` with the run's policy, by `tiers.run_routed` (early exit inside
        each tier, survivors re-padded, the routes the services take)."""
        input_ids, type_ids = self._tokens(texts)
        features = wants_features(self.policy, self.hidden)

        def decide(seen, tier, depth, feats):
            return self.policy.step(seen, tier, depth, feats if features else None)

        answers = run_routed(self.parts, decide, input_ids, type_ids, self.pad_id)
        labels = np.array([int(self._labels(torch.from_numpy(a.logits[None, :]), a.exit)[0]) for a in answers])
        return labels, [a.tier for a in answers]

    def _labels(self, logits: torch.Tensor, exit_index: int) -> np.ndarray:
        temperature = 1.0 if self.temperatures is None else float(self.temperatures[exit_index - 1])
        return softmax(logits.float().numpy(), temperature).argmax(axis=-1)


# ---- helpers on the services -----------------------------------------------------------------------------------
def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric `name` whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        label_text = match.group(1) or ""
        if all(f'{key}="{value}"' in label_text for key, value in labels.items()):
            total += float(match.group(2))
    return total


def batch_stats(client: httpx.Client, urls: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Per tier: (forward passes, samples) so far, from dimee_forward_batch_size."""
    stats = {}
    for tier, url in urls.items():
        text = client.get(f"{url}/metrics").text
        stats[tier] = (
            metric_sum(text, "dimee_forward_batch_size_count"),
            metric_sum(text, "dimee_forward_batch_size_sum"),
        )
    return stats


def mean_batch(before: dict, after: dict) -> dict[str, float | None]:
    out = {}
    for tier in after:
        passes = after[tier][0] - before[tier][0]
        samples = after[tier][1] - before[tier][1]
        out[tier] = round(samples / passes, 2) if passes else None
    return out


def classify_sync(client: httpx.Client, url: str, text: str, force: str | None) -> dict:
    body: dict = {"texts": [text]}
    if force is not None:
        body["force_tier"] = force
    response = client.post(f"{url}/v1/classify", json=body)
    response.raise_for_status()
    return response.json()


# ---- 1. latency at batch 1 --------------------------------------------------------------------------------------
def latency_phase(args, ref: InProcess, client: httpx.Client, url: str, texts: list[str], deadline: float) -> dict:
    out: dict = {"_mobile_edge_bytes_reported": 0}
    for tier in TIERS:
        for text in texts[: args.warmup]:  # bounded warm-up, both sides
            body = classify_sync(client, url, text, tier)
            out["_mobile_edge_bytes_reported"] += body["predictions"][0]["cost"]["bytes_per_hop"].get("mobile_edge", 0)
            ref.forced([text], tier)
        service_ms, inproc_ms, server_ms, hop_ms, tier_ms = [], [], [], {}, {}
        load_before = loadavg()
        agree = 0
        cost_bytes = []
        for i, text in enumerate(texts[: args.latency_requests]):
            if time.monotonic() > deadline:
                print(f"  latency {tier}: phase time limit reached after {i} texts", flush=True)
                break
            order = ("svc", "ref") if i % 4 in (0, 3) else ("ref", "svc")  # ABBA
            for side in order:
                if side == "svc":
                    t0 = time.perf_counter()
                    body = classify_sync(client, url, text, tier)
                    service_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    t0 = time.perf_counter()
                    label = int(ref.forced([text], tier)[0])
                    inproc_ms.append((time.perf_counter() - t0) * 1000)
            pred = body["predictions"][0]
            if pred["tier"] != tier or pred["degraded"]:
                raise RuntimeError(f"forced {tier} answered at {pred['tier']} (degraded={pred['degraded']})")
            agree += int(pred["label"] == label)
            server_ms.append(body["wall_ms"])
            for key, value in pred["cost"]["wall_ms"].items():
                (hop_ms if "_" in key else tier_ms).setdefault(key, []).append(value)
            cost_bytes.append(pred["cost"]["bytes_per_hop"])
            out["_mobile_edge_bytes_reported"] += pred["cost"]["bytes_per_hop"].get("mobile_edge", 0)
        svc, ref_s = summary(service_ms), summary(inproc_ms)
        diffs = [a - b for a, b in zip(service_ms, inproc_ms)]
        ratios = [100 * (a - b) / b for a, b in zip(service_ms, inproc_ms)]
        client_side = [a - b for a, b in zip(service_ms, server_ms)]
        out[tier] = {
            "loadavg_before": load_before,
            "service_ms": svc,
            "inprocess_ms": ref_s,
            "overhead_p50_pct": 100 * (svc["p50"] - ref_s["p50"]) / ref_s["p50"],
            "overhead_p99_pct": 100 * (svc["p99"] - ref_s["p99"]) / ref_s["p99"],
            "overhead_p50_ms": svc["p50"] - ref_s["p50"],
            "paired_diff_ms_p50": pct(diffs, 50),
            "paired_overhead_pct_p50": pct(ratios, 50),
            "client_minus_mobile_server_ms_p50": pct(client_side, 50),
            "mobile_server_ms_p50": pct(server_ms, 50),
            "tier_ms_p50": {k: pct(v, 50) for k, v in tier_ms.items()},
            "hop_ms_p50": {k: pct(v, 50) for k, v in hop_ms.items()},
            "label_agreement": f"{agree}/{len(service_ms)}",
            "_bytes": cost_bytes,
        }
        print(
            f"  latency {tier:6s}: service p50 {svc['p50']:.1f} ms p99 {svc['p99']:.1f} | in-process p50 "
            f"{ref_s['p50']:.1f} p99 {ref_s['p99']:.1f} | overhead p50 {out[tier]['overhead_p50_pct']:+.0f}% "
            f"(paired {out[tier]['paired_overhead_pct_p50']:+.0f}%, {out[tier]['paired_diff_ms_p50']:+.1f} ms) "
            f"| labels agree {agree}/{len(service_ms)}",
            flush=True,
        )
    return out


# ---- 2. throughput at N concurrent clients --------------------------------------------------------------------
async def run_concurrent(
    url: str,
    texts: list[str],
    force: str | None,
    concurrency: int,
    timeout_s: float,
    phase_s: float,
    on_sent=None,
) -> dict:
    """Send one request per text from `concurrency` workers; every outcome is recorded (no request dropped)."""
    results: list[dict | None] = [None] * len(texts)
    next_index = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, trust_env=False) as client:

        async def worker() -> None:
            nonlocal next_index, sent
            while next_index < len(texts):
                i = next_index
                next_index += 1
                body: dict = {"texts": [texts[i]]}
                if force is not None:
                    body["force_tier"] = force
                sent += 1
                if on_sent is not None:
                    on_sent(sent)
                t0 = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/classify", json=body)
                    record = {"status": response.status_code, "ms": (time.perf_counter() - t0) * 1000}
                    if response.status_code == 200:
                        record["prediction"] = response.json()["predictions"][0]
                except Exception as err:  # noqa: BLE001 - counted as lost
                    record = {"status": None, "error": f"{type(err).__name__}: {err}"[:200]}
                record["sent_index"] = i
                results[i] = record

        start = time.perf_counter()
        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), phase_s)
        except asyncio.TimeoutError:
            print(f"  phase time limit ({phase_s:.0f} s) reached; unfinished requests count as lost", flush=True)
        elapsed = time.perf_counter() - start
    return {"results": results, "elapsed_s": elapsed}


def inprocess_batched(ref: InProcess, texts: list[str], batch: int, mode: str) -> tuple[float, list]:
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


def tier_counts(tiers: list[str]) -> dict[str, int]:
    return {tier: tiers.count(tier) for tier in TIERS}


def throughput_phase(args, ref, client, group, texts, deadline) -> dict:
    out = {}
    # bounded warm-up: one concurrent burst
    asyncio.run(run_concurrent(group.mobile_url, texts[: args.concurrency * 2], "cloud", args.concurrency, 60, 120))
    inprocess_batched(ref, texts[: args.concurrency], args.concurrency, "cloud")
    for mode in args.modes:
        force = "cloud" if mode == "cloud" else None
        svc_rates, ref_rates, svc_tiers, ref_tiers, batches, failures = [], [], [], [], [], 0
        lat: list[float] = []
        for r in range(args.rounds):
            if time.monotonic() > deadline:
                print(f"  throughput {mode}: phase time limit reached after {r} rounds", flush=True)
                break
            for side in (("svc", "ref") if r % 2 == 0 else ("ref", "svc")):
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
        svc_med, ref_med = float(np.median(svc_rates)), float(np.median(ref_rates))
        out[mode] = {
            "loadavg_after": loadavg(),
            "requests_per_round": len(texts),
            "rounds": len(svc_rates),
            "service_texts_per_s": svc_rates,
            "inprocess_texts_per_s": ref_rates,
            "service_median": svc_med,
            "inprocess_median": ref_med,
            "ratio_pct": 100 * svc_med / ref_med,
            "ratio_per_round_pct": [100 * s / r for s, r in zip(svc_rates, ref_rates)],
            "service_request_ms": summary(lat) if lat else None,
            "failed_requests": failures,
            "service_tiers": tier_counts(svc_tiers),
            "inprocess_tiers": tier_counts(ref_tiers),
            "mean_forward_batch": batches,
        }
        print(
            f"  throughput {mode:5s}: service {svc_med:.1f} texts/s | in-process batched {ref_med:.1f} texts/s "
            f"| ratio {out[mode]['ratio_pct']:.0f}% | per round {[round(x) for x in out[mode]['ratio_per_round_pct']]}"
            f" | mean batch {batches[-1] if batches else None} | failed {failures}",
            flush=True,
        )
    if args.alt_threads:
        sub = texts[: args.alt_requests]
        torch.set_num_threads(args.alt_threads)
        try:
            elapsed, _ = inprocess_batched(ref, sub, args.concurrency, "cloud")
        finally:
            torch.set_num_threads(args.inproc_threads)
        elapsed_1, _ = inprocess_batched(ref, sub, args.concurrency, "cloud")
        out["inprocess_threads_check"] = {
            "texts": len(sub),
            f"threads_{args.alt_threads}_texts_per_s": len(sub) / elapsed,
            f"threads_{args.inproc_threads}_texts_per_s": len(sub) / elapsed_1,
        }
        print(f"  in-process cloud, {len(sub)} texts: {args.alt_threads} threads {len(sub) / elapsed:.1f} texts/s, "
              f"{args.inproc_threads} thread(s) {len(sub) / elapsed_1:.1f} texts/s", flush=True)
    return out


# ---- 3. fault: edge stopped halfway --------------------------------------------------------------------------
def fault_phase(args, group, texts) -> dict:
    kill_at = args.fault_requests // 2
    state: dict = {"stop_task": None}
    loop_holder: dict = {}

    def on_sent(count: int) -> None:
        if count == kill_at and state["stop_task"] is None:
            state["kill_time"] = time.perf_counter()
            state["stop_task"] = loop_holder["loop"].create_task(asyncio.to_thread(group.stop, "edge"))

    async def main() -> dict:
        loop_holder["loop"] = asyncio.get_running_loop()
        run = await run_concurrent(
            group.mobile_url, texts, "edge", args.concurrency, args.client_timeout, args.phase_seconds, on_sent
        )
        if state["stop_task"] is not None:
            await asyncio.wait_for(state["stop_task"], 30)
        return run

    t0 = time.perf_counter()
    run = asyncio.run(main())
    results = run["results"]
    lost = [i for i, r in enumerate(results) if r is None or r["status"] is None]
    status = [r["status"] for r in results if r is not None and r["status"] is not None]
    preds = [(i, r["prediction"]) for i, r in enumerate(results) if r is not None and r.get("prediction")]
    degraded = [(i, p) for i, p in preds if p["degraded"]]
    reasons: dict[str, int] = {}
    for _, p in degraded:
        reason = re.sub(r"\d+", "N", (p.get("degraded_reason") or "")[:120])
        reasons[reason] = reasons.get(reason, 0) + 1
    out = {
        "requests": len(texts),
        "concurrency": args.concurrency,
        "force_tier": "edge",
        "edge_stopped_after_sent": kill_at,
        "elapsed_s": run["elapsed_s"],
        "lost": len(lost),
        "lost_examples": [results[i] for i in lost[:3]],
        "status_5xx": sum(1 for s in status if s >= 500),
        "status_4xx": sum(1 for s in status if 400 <= s < 500),
        "status_200": sum(1 for s in status if s == 200),
        "degraded": len(degraded),
        "degraded_first_index": min((i for i, _ in degraded), default=None),
        "answered_by": tier_counts([p["tier"] for _, p in preds]),
        "degraded_reasons": reasons,
        "edge_answers_after_kill_index": sum(1 for i, p in preds if i >= kill_at and p["tier"] == "edge"),
        "request_ms": summary([r["ms"] for r in results if r is not None and r.get("ms") is not None]),
        "edge_running_after": group.processes["edge"].running,
        "mobile_running_after": group.processes["mobile"].running,
        "cloud_running_after": group.processes["cloud"].running,
        "wall_s": time.perf_counter() - t0,
    }
    print(
        f"  fault: {out['requests']} requests, edge stopped after {kill_at} sent: lost {out['lost']}, "
        f"5xx {out['status_5xx']}, 4xx {out['status_4xx']}, degraded {out['degraded']}, "
        f"answered by {out['answered_by']}",
        flush=True,
    )
    return out


# ---- 4. bytes per hop ------------------------------------------------------------------------------------------
def bytes_report(ref: InProcess, texts: list[str], preds: list[dict], encoding: str) -> dict:
    """Bytes per hop of one-text answers against the floor (hidden states: tokens x hidden x bytes per value;
    token ids: 4 bytes per token) and against the codec's exact size for the boundary on the answer's route."""
    counts = [ref.token_count(t) for t in texts[: len(preds)]]
    out = {"encoding": encoding, "texts": len(preds), "tokens_total": int(sum(counts))}
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
            "bytes_total": int(sum(sent)),
            "floor_total": int(sum(floor)),
            "overhead_pct": 100 * (sum(sent) - sum(floor)) / sum(floor),
            "bytes_per_text_p50": pct(sent, 50),
            "floor_per_text_p50": pct(floor, 50),
            "extra_bytes_per_text_p50": pct([s - f for s, f in zip(sent, floor)], 50),
            "equals_payload_size": sent == expected,
        }
    return out


def encoding_bytes(args, ref, texts, encoding: str, env: dict, log_dir: Path) -> dict:
    """Restart the services with DIMEE_HANDOFF_ENCODING and the built-in rule at threshold 1 (every sample goes
    along the linear route as hidden states) and read bytes per hop off the answers."""
    chain = {**env, "DIMEE_HANDOFF_ENCODING": encoding, "DIMEE_POLICY": "threshold", "DIMEE_THRESHOLD": "1"}
    with start_all(args.run_dir, env=chain, log_dir=log_dir / encoding,
                   ready_timeout_s=180) as group, httpx.Client(timeout=60, trust_env=False) as client:  # fmt: skip
        sample = texts[: args.bytes_requests]
        bodies = [classify_sync(client, group.mobile_url, t, None) for t in sample]
        ref_labels = np.concatenate([ref.forced(sample[i : i + 32], "cloud") for i in range(0, len(sample), 32)])
        preds = [b["predictions"][0] for b in bodies]
        report = bytes_report(ref, sample, preds, encoding)
        agree = sum(int(p["label"] == int(lbl)) for p, lbl in zip(preds, ref_labels))
        report["label_agreement_with_inprocess_fp32"] = f"{agree}/{len(preds)}"
        report["degraded"] = sum(int(p["degraded"]) for p in preds)
    return report


# ---- main -------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=REPO / "runs/ckpt/sst2")
    p.add_argument("--data", type=Path, default=Path("/work/shared/glue/sst2/validation.jsonl"))
    p.add_argument("--warmup", type=int, default=10, help="warm-up requests per path (latency)")
    p.add_argument("--latency-requests", type=int, default=100, help="sequential batch-1 requests per path")
    p.add_argument("--throughput-requests", type=int, default=640, help="requests per throughput round")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients = in-process batch size")
    p.add_argument("--rounds", type=int, default=3, help="alternating service / in-process throughput rounds")
    p.add_argument("--modes", default="cloud,mixed", help="throughput modes: cloud (forced), mixed (policy)")
    p.add_argument("--fault-requests", type=int, default=1000)
    p.add_argument("--bytes-requests", type=int, default=50, help="forced-cloud requests per extra encoding")
    p.add_argument("--encodings", default="fp16,int8", help="extra handoff encodings to restart with ('' = none)")
    p.add_argument("--windows", default="0,5", help="DIMEE_BATCH_WINDOW_MS settings to run (one service group each)")
    p.add_argument("--max-batch", type=int, default=32, help="DIMEE_MAX_BATCH_SIZE")
    p.add_argument("--service-threads", type=int, default=1, help="DIMEE_TORCH_THREADS per service")
    p.add_argument("--inproc-threads", type=int, default=1, help="torch threads of the in-process baseline")
    p.add_argument("--alt-threads", type=int, default=2, help="also time the in-process batched path at this "
                   "many threads (0 = skip)")  # fmt: skip
    p.add_argument("--alt-requests", type=int, default=128)
    p.add_argument("--client-timeout", type=float, default=60.0, help="per-request client timeout, s")
    p.add_argument("--phase-seconds", type=float, default=300.0, help="time limit of one phase, s")
    p.add_argument("--out-json", type=Path, default=REPO / "results/services.json")
    p.add_argument("--out-md", type=Path, default=REPO / "results/services.md")
    p.add_argument("--render-only", action="store_true", help="only rewrite --out-md from --out-json (no run)")
    p.add_argument(
        "--earlier", type=Path, action="append", default=[],
        help="an earlier services.json whose headline figures are kept in this one (run-to-run spread)",
    )  # fmt: skip
    args = p.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    args.windows = [float(w) for w in args.windows.split(",") if w]
    args.encodings = [e for e in args.encodings.split(",") if e]
    return args


def headline(report: dict) -> dict:
    """The figures that decide the targets, to compare runs."""
    out: dict = {"started": report["started"], "command": report["command"]}
    out["loadavg"] = [report["machine"].get("loadavg_start"), report["machine"].get("loadavg_end")]
    out["latency_paired_overhead_pct"] = {
        f"{g['batch_window_ms']:g}": {t: r["paired_overhead_pct_p50"] for t, r in g["latency"].items()}
        for g in report["groups"]
    }
    out["throughput_ratio_pct"] = {
        f"{g['batch_window_ms']:g}": {
            m: {"of_medians": r["ratio_pct"], "per_round": [round(x) for x in r["ratio_per_round_pct"]]}
            for m, r in g["throughput"].items()
            if m != "inprocess_threads_check"
        }
        for g in report["groups"]
    }
    fault = next((g["fault"] for g in report["groups"] if "fault" in g), None)
    if fault:
        out["fault"] = {k: fault[k] for k in ("requests", "lost", "status_5xx", "status_4xx", "degraded")}
    return out


def main() -> None:
    args = parse_args()
    if args.render_only:
        report = json.loads(args.out_json.read_text())
        report["headline"] = headline(report)
        add_earlier(report, args.earlier)
        args.out_json.write_text(json.dumps(report, indent=2, default=float) + "\n")
        fault = next((g["fault"] for g in report["groups"] if "fault" in g), None)
        args.out_md.write_text(render_md(report, fault))
        print(f"wrote {args.out_md} and {args.out_json}")
        return
    torch.set_num_threads(args.inproc_threads)
    needed = max(args.throughput_requests, args.fault_requests, args.latency_requests + args.warmup)
    pool = read_sentences(args.data, needed)
    texts = [pool[i % len(pool)] for i in range(needed)]
    print(f"loading the sliced model in-process from {args.run_dir}", flush=True)
    ref = InProcess(args.run_dir)
    t_start = time.time()
    report: dict = {
        "command": command_line(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "loadavg_start": loadavg(),
        },
        "model": {
            "run_dir": os.path.relpath(args.run_dir, REPO),
            "plan": ref.plan.spec,
            "hidden": ref.hidden,
            "policy": ref.policy_name,
            "texts_file": str(args.data),
            "distinct_texts": len(pool),
        },
        "settings": {
            "concurrency": args.concurrency,
            "batch_window_ms": args.windows,
            "max_batch_size": args.max_batch,
            "service_torch_threads": args.service_threads,
            "inprocess_torch_threads": args.inproc_threads,
            "latency_requests_per_path": args.latency_requests,
            "warmup_per_path": args.warmup,
            "throughput_requests_per_round": args.throughput_requests,
            "rounds": args.rounds,
            "fault_requests": args.fault_requests,
        },
        "groups": [],
    }
    log_dir = Path(tempfile.mkdtemp(prefix="dimee-bench-"))
    base_env = {
        "DIMEE_MAX_BATCH_SIZE": str(args.max_batch),
        "DIMEE_TORCH_THREADS": str(args.service_threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    fault = None
    bytes_check = None
    for g, window in enumerate(args.windows):
        env = {**base_env, "DIMEE_BATCH_WINDOW_MS": f"{window:g}"}
        print(f"starting the three services (batch window {window:g} ms, max batch {args.max_batch}, "
              f"{args.service_threads} torch thread(s) each)", flush=True)  # fmt: skip
        t0 = time.perf_counter()
        with start_all(args.run_dir, env=env, log_dir=log_dir / f"w{window:g}", ready_timeout_s=180) as group, \
                httpx.Client(timeout=args.client_timeout, trust_env=False) as client:  # fmt: skip
            started_s = time.perf_counter() - t0
            entry: dict = {"batch_window_ms": window, "env": env, "startup_s": started_s, "urls": group.urls,
                           "loadavg_at_start": loadavg()}
            metrics_before = client.get(f"{group.mobile_url}/metrics").text
            lat = latency_phase(args, ref, client, group.mobile_url, texts, time.monotonic() + args.phase_seconds)
            metrics_after = client.get(f"{group.mobile_url}/metrics").text
            if bytes_check is None:
                sent = metric_sum(metrics_after, "dimee_handoff_bytes_sent_total", hop="mobile_edge") - metric_sum(
                    metrics_before, "dimee_handoff_bytes_sent_total", hop="mobile_edge"
                )
                bytes_check = [int(sent), int(lat["_mobile_edge_bytes_reported"])]
            for tier in TIERS:
                lat[tier].pop("_bytes")
            lat.pop("_mobile_edge_bytes_reported")
            entry["latency"] = lat
            entry["throughput"] = throughput_phase(
                args, ref, client, group, texts[: args.throughput_requests], time.monotonic() + 2 * args.phase_seconds
            )
            if g == len(args.windows) - 1 and args.fault_requests:
                entry["fault"] = fault = fault_phase(args, group, texts[: args.fault_requests])
                entry["fault"]["batch_window_ms"] = window
        report["groups"].append(entry)
    report["bytes"] = []
    for encoding in ["fp32", *[e for e in args.encodings if e != "fp32"]]:
        print(f"restarting the services with DIMEE_HANDOFF_ENCODING={encoding} for bytes per hop", flush=True)
        env = {**base_env, "DIMEE_BATCH_WINDOW_MS": f"{args.windows[0]:g}"}
        report["bytes"].append(encoding_bytes(args, ref, texts, encoding, env, log_dir))
    report["bytes"][0]["mobile_metrics_bytes_sent_vs_responses"] = bytes_check
    for entry in report["bytes"]:
        hops = ", ".join(
            f"{h} {entry[h]['bytes_per_text_p50']:.0f} B/text (+{entry[h]['overhead_pct']:.2f}% over floor)"
            for h in HOPS
            if h in entry
        )
        print(f"  bytes {entry['encoding']}: {hops}", flush=True)
    report["machine"]["loadavg_end"] = loadavg()
    report["total_s"] = time.time() - t_start
    report["service_logs"] = str(log_dir)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    report["headline"] = headline(report)
    add_earlier(report, args.earlier)
    args.out_json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    args.out_md.write_text(render_md(report, fault))
    print(f"wrote {args.out_json} and {args.out_md}", flush=True)


def add_earlier(report: dict, paths: list[Path]) -> None:
    for path in paths:
        earlier = json.loads(Path(path).read_text())
        entry = earlier.get("headline") or headline(earlier)
        runs = report.setdefault("earlier_runs", [])
        if all(run["started"] != entry["started"] for run in runs) and entry["started"] != report["started"]:
            runs.append(entry)


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def summary_lines(report: dict, fault: dict | None) -> list[str]:
    """The targets, met or missed, with the figures that decide them and why."""
    lines = ["## Against the targets", ""]
    for g in report["groups"]:
        w = f"{g['batch_window_ms']:g}"
        lat = g["latency"]
        worst = max(lat, key=lambda t: lat[t]["paired_overhead_pct_p50"])
        figures = ", ".join(
            f"{t} {r['paired_overhead_pct_p50']:+.0f}% ({r['paired_diff_ms_p50']:+.1f} ms on "
            f"{r['inprocess_ms']['p50']:.1f} ms)"
            for t, r in lat.items()
        )
        ok = lat[worst]["paired_overhead_pct_p50"] < 15
        lines.append(f"- Latency overhead < 15% (window {w} ms): {verdict(ok)}: {figures}.")
    for g in report["groups"]:
        w = f"{g['batch_window_ms']:g}"
        for mode, r in g["throughput"].items():
            if mode == "inprocess_threads_check":
                continue
            rounds = r["ratio_per_round_pct"]
            lines.append(
                f"- Throughput >= 70% ({mode}, window {w} ms): {verdict(r['ratio_pct'] >= 70)}: "
                f"{r['ratio_pct']:.0f}% of the medians ({r['service_median']:.1f} vs {r['inprocess_median']:.1f} "
                f"texts/s); per round {min(rounds):.0f}%..{max(rounds):.0f}% (median {np.median(rounds):.0f}%)."
            )
    if fault:
        ok = fault["lost"] == 0 and fault["status_5xx"] == 0
        lines.append(
            f"- Edge stopped halfway, 0 lost and 0 5xx: {verdict(ok)}: {fault['lost']} lost, {fault['status_5xx']} "
            f"5xx of {fault['requests']}; {fault['degraded']} answered degraded at mobile's exit "
            f"{report['model']['plan'].split(',')[0]}."
        )
    for run in report.get("earlier_runs") or []:
        low = [
            f"{mode} window {w} ms {r['of_medians']:.0f}%"
            for w, modes in run["throughput_ratio_pct"].items()
            for mode, r in modes.items()
            if r["of_medians"] < 70
        ]
        if low:
            lines.append(
                f"- Throughput in the earlier run of {run['started']} (see the last section): below 70% for "
                f"{', '.join(low)}; the throughput target is not met in every run."
            )
    for b in report["bytes"]:
        h = b["mobile_edge"]
        lines.append(
            f"- Bytes per hop ({b['encoding']}): {h['overhead_pct']:+.2f}% over the floor "
            f"({h['extra_bytes_per_text_p50']:.0f} extra bytes per one-text handoff)."
        )
    g0 = report["groups"][0]
    cloud = g0["latency"]["cloud"]
    hops = cloud["hop_ms_p50"]
    lines += [
        "",
        "Why the latency target is missed: the per-request costs are fixed while the model's work per text is "
        f"tiny (SST-2 sentences, ~{report['bytes'][0]['tokens_total'] / report['bytes'][0]['texts']:.0f} tokens, "
        f"MiniLM-L6 hidden {report['model']['hidden']}). At window {g0['batch_window_ms']:g} ms the cloud path "
        f"computes for {cloud['inprocess_ms']['p50']:.1f} ms in process; the services add about "
        f"{hops.get('mobile_edge', float('nan')):.1f} + {hops.get('edge_cloud', float('nan')):.1f} ms on the two hops "
        "(loopback HTTP, X-DIMEE-Meta JSON/base64, codec encode + validating decode, pydantic answers) and "
        f"{cloud['client_minus_mobile_server_ms_p50']:.1f} ms between client and mobile (HTTP + JSON), plus about "
        "a millisecond per tier for the hand-offs to worker threads (tokeniser, batcher) that the in-process path "
        f"does not make. A 15% budget would be {0.15 * cloud['inprocess_ms']['p50']:.1f} ms for the whole three-tier "
        "path. A batch window adds up "
        "to its length at every tier a request passes (one sequential request never finds company), so the 5 ms "
        "window costs ~5 ms per tier at batch 1.",
        "",
        "Fairness of the throughput comparison: each service runs 1 torch thread (DIMEE_TORCH_THREADS=1, the "
        f"default): 3 processes on {report['machine']['cpus']} cores; 2 threads each would put 6 intra-op threads "
        "on 2 cores. The in-process baseline runs 1 thread too: 2 threads were measured and were much slower on "
        "this shared machine (section 2), so 1 thread is the stronger baseline. The client (httpx, JSON) runs on "
        "the same cores and is charged to the services. When other work runs, the scheduler shares CPU per "
        "thread, so three service processes can win a larger share than the one-thread baseline; that favours "
        "the services, and is why the per-round ratios spread as they do. Treat the throughput ratio as a range.",
        "",
    ]
    return lines


def render_md(report: dict, fault: dict | None) -> str:
    s = report["settings"]
    lines = [
        "# Three tier services vs the same sliced model in one process",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Model: `{report['model']['run_dir']}` (plan {report['model']['plan']}, hidden {report['model']['hidden']}, "
        f"policy: {report['model']['policy']}); texts: SST-2 validation sentences. "
        f"Machine: {report['machine']['cpus']} CPU cores, load average {report['machine']['loadavg_start']} at start "
        f"and {report['machine']['loadavg_end']} at end (other work was running). The services, the client and the "
        "in-process baseline share those cores, so only medians and ratios measured side by side in the same run "
        "are meaningful; absolute times are not.",
        "",
        f"Settings: {s['service_torch_threads']} torch thread per service (3 processes on {report['machine']['cpus']} "
        f"cores), {s['inprocess_torch_threads']} torch thread in process, DIMEE_MAX_BATCH_SIZE={s['max_batch_size']}, "
        f"DIMEE_BATCH_WINDOW_MS in {s['batch_window_ms']} (one group of services per window).",
        "",
        *summary_lines(report, fault),
        "## 1. Latency at batch 1 (sequential requests; target: overhead < 15%)",
        "",
        f"{s['latency_requests_per_path']} requests per path after {s['warmup_per_path']} warm-up, one text each; "
        "service and in-process calls alternate on the same text (ABBA). Service = client wall time of one POST "
        "/v1/classify; in-process = tokenise + the same parts + codec encode/decode at each hop.",
        "",
        "| window ms | path | service p50 | service p99 | in-process p50 | in-process p99 | overhead p50 "
        "(ratio of medians) | overhead p99 | paired overhead (median per text) | labels agree |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in report["groups"]:
        for tier, r in g["latency"].items():
            lines.append(
                f"| {g['batch_window_ms']:g} | {tier} | {r['service_ms']['p50']:.1f} | {r['service_ms']['p99']:.1f} | "
                f"{r['inprocess_ms']['p50']:.1f} | {r['inprocess_ms']['p99']:.1f} | {r['overhead_p50_pct']:+.0f}% "
                f"({r['overhead_p50_ms']:+.1f} ms) | {r['overhead_p99_pct']:+.0f}% | "
                f"{r['paired_overhead_pct_p50']:+.0f}% "
                f"({r['paired_diff_ms_p50']:+.1f} ms) | {r['label_agreement']} |"
            )
    lines += [
        "",
        "Where the service time goes (medians, ms, from the responses' cost.wall_ms): per tier = arrival to "
        "decision (queue, batcher window, forward pass); per hop = round trip minus the next tier's own time "
        "(HTTP, codec, handoff validation); client - mobile = HTTP and JSON between the client and mobile.",
        "",
        "| window ms | path | mobile | edge | cloud | mobile_edge hop | edge_cloud hop | client - mobile server | "
        "load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in report["groups"]:
        for tier, r in g["latency"].items():
            cells = [f"{r['tier_ms_p50'][t]:.1f}" if t in r["tier_ms_p50"] else "-" for t in TIERS]
            hops = r["hop_ms_p50"]
            cells += [f"{hops[h]:.1f}" if h in hops else "-" for h in ("mobile_edge", "edge_cloud")]
            load = r.get("loadavg_before") or ["?"]
            lines.append(
                f"| {g['batch_window_ms']:g} | {tier} | {' | '.join(cells)} | "
                f"{r['client_minus_mobile_server_ms_p50']:.1f} | {load[0]} |"
            )
    lines += [
        "",
        f"## 2. Throughput at {s['concurrency']} concurrent clients (target: >= 70% of in-process batched)",
        "",
        f"{s['throughput_requests_per_round']} requests per round, one text each, httpx.AsyncClient with "
        f"{s['concurrency']} workers; in-process: batches of {s['concurrency']} through the three parts (mixed: "
        "routed by the same policy, only pending samples handed on). Rounds alternate service / in-process; the "
        "ratio is of the medians.",
        "",
        "| window ms | mode | service texts/s | in-process texts/s | ratio | per round | mean forward batch "
        "(mobile/edge/cloud) | answered by (service) | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in report["groups"]:
        for mode, r in g["throughput"].items():
            if mode == "inprocess_threads_check":
                continue
            mb = r["mean_forward_batch"][-1] if r["mean_forward_batch"] else {}
            batch = "/".join("-" if mb.get(t) is None else f"{mb[t]:.1f}" for t in TIERS)
            by = "/".join(str(r["service_tiers"][t]) for t in TIERS)
            lines.append(
                f"| {g['batch_window_ms']:g} | {mode} | {r['service_median']:.1f} | {r['inprocess_median']:.1f} | "
                f"{r['ratio_pct']:.0f}% | {', '.join(f'{x:.0f}%' for x in r['ratio_per_round_pct'])} | {batch} | "
                f"{by} | {r['failed_requests']} |"
            )
    for g in report["groups"]:
        check = g["throughput"].get("inprocess_threads_check")
        if check:
            rates = ", ".join(f"{k.replace('_texts_per_s', '').replace('_', ' ')}: {v:.1f} texts/s"
                              for k, v in check.items() if k != "texts")  # fmt: skip
            lines += ["", f"In-process batched (cloud) on {check['texts']} texts, window {g['batch_window_ms']:g} "
                      f"group: {rates}."]  # fmt: skip
    if fault:
        lines += [
            "",
            "## 3. Edge stopped halfway (target: 0 lost, 0 5xx)",
            "",
            f"{fault['requests']} requests at concurrency {fault['concurrency']}, all forced to cloud (so every one "
            f"needs edge), window {fault['batch_window_ms']:g} ms; `group.stop(\"edge\")` (SIGTERM, graceful) after "
            f"{fault['edge_stopped_after_sent']} had been sent.",
            "",
            "| lost | 5xx | 4xx | 200 | degraded | answered by mobile/edge/cloud | request ms p50 / p99 |",
            "|---|---|---|---|---|---|---|",
            f"| {fault['lost']} | {fault['status_5xx']} | {fault['status_4xx']} | {fault['status_200']} | "
            f"{fault['degraded']} | {'/'.join(str(fault['answered_by'][t]) for t in TIERS)} | "
            f"{fault['request_ms']['p50']:.0f} / {fault['request_ms']['p99']:.0f} |",
            "",
            "Degraded reasons: " + "; ".join(f"{k} ({v})" for k, v in fault["degraded_reasons"].items()),
        ]
    lines += [
        "",
        "## 4. Payload bytes per hop vs the floor (tokens x hidden x bytes per value)",
        "",
        "From the responses' cost.bytes_per_hop (one text per handoff, the linear route: built-in rule at threshold "
        "1); `= payload_size`: every response's bytes equal tiers.hop_payload_size for its token count and boundary. "
        "fp16 and int8: the services restarted with DIMEE_HANDOFF_ENCODING.",
        "",
        "| encoding | texts | hop | bytes/text p50 | floor/text p50 | extra bytes/text p50 | total over floor | "
        "= payload_size | labels agree with in-process fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report["bytes"]:
        for hop in [h for h in HOPS if h in b]:
            h = b[hop]
            lines.append(
                f"| {b['encoding']} | {b['texts']} | {hop} | {h['bytes_per_text_p50']:.0f} | "
                f"{h['floor_per_text_p50']:.0f} | {h['extra_bytes_per_text_p50']:.0f} | +{h['overhead_pct']:.2f}% | "
                f"{h['equals_payload_size']} | {b.get('label_agreement_with_inprocess_fp32', '-')} |"
            )
    check = report["bytes"][0].get("mobile_metrics_bytes_sent_vs_responses")
    if check:
        lines += [
            "",
            f"Cross-check (fp32, latency phase incl. warm-up): mobile's /metrics dimee_handoff_bytes_sent_total grew "
            f"by {check[0]} bytes; the responses' mobile_edge bytes add up to {check[1]}.",
        ]
    earlier = report.get("earlier_runs") or []
    if earlier:
        lines += [
            "",
            "## Run-to-run spread (earlier runs of this script on the same machine)",
            "",
            "| run started | load avg start / end | latency paired overhead (window: mobile/edge/cloud) | "
            "throughput ratio of medians (window: cloud/mixed) | fault lost/5xx/degraded |",
            "|---|---|---|---|---|",
        ]
        for run in [headline(report), *earlier]:
            lat = "; ".join(
                f"{w}: " + "/".join(f"{v:+.0f}%" for v in paths.values())
                for w, paths in run["latency_paired_overhead_pct"].items()
            )
            thr = "; ".join(
                f"{w}: " + "/".join(f"{v['of_medians']:.0f}%" for v in modes.values())
                for w, modes in run["throughput_ratio_pct"].items()
            )
            f = run.get("fault", {})
            load = " / ".join(str(x[0]) if x else "?" for x in run["loadavg"])
            lines.append(
                f"| {run['started']} | {load} | {lat} | {thr} | "
                f"{f.get('lost', '-')}/{f.get('status_5xx', '-')}/{f.get('degraded', '-')} |"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
