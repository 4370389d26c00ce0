"""results/services.md from the JSON of `services_bench.py` (and, when present, of the locust load test
`load_test.py`)."""

from __future__ import annotations

import json

from services_common import HOPS, REPO
from services_profile import render as render_profile

from tiers import TIERS

LOAD_JSON = REPO / "results/services_load.json"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _latency_rows(latency: dict) -> list[str]:
    rows = []
    for name, r in latency.items():
        route = " > ".join(r["route"] or [])
        rows.append(
            f"| {name} | {route} | {r['service_ms']['p50']:.1f} | {r['service_ms']['p99']:.1f} | "
            f"{r['inprocess_ms']['p50']:.1f} | {r['inprocess_ms']['p99']:.1f} | {r['overhead_p50_pct']:+.0f}% "
            f"({r['overhead_p50_ms']:+.1f} ms) | {r['paired_overhead_pct_p50']:+.0f}% | {r['label_agreement']} |"
        )
    return rows


def _where_rows(latency: dict) -> list[str]:
    rows = []
    for name, r in latency.items():
        cells = [f"{r['tier_ms_p50'][t]:.1f}" if t in r["tier_ms_p50"] else "-" for t in TIERS]
        cells += [f"{r['hop_ms_p50'][h]:.2f}" if h in r["hop_ms_p50"] else "-" for h in HOPS]
        rows.append(f"| {name} | {' | '.join(cells)} | {r['client_minus_mobile_server_ms_p50']:.1f} |")
    return rows


def _why(report: dict) -> list[str]:
    """Where the three-tier path's overhead goes, from this run's medians."""
    r = report["linear"]["latency"]["three-tier"]
    hops = r["hop_ms_p50"]
    tiers_ms = sum(r["tier_ms_p50"].get(t, 0.0) for t in TIERS)
    extra_tiers = tiers_ms - r["inprocess_ms"]["p50"]
    return [
        f"Where the three-tier path's {r['overhead_p50_ms']:+.1f} ms go (medians): the two hops "
        f"{sum(hops.values()):.1f} ms ({' + '.join(f'{v:.2f}' for v in hops.values())}: aiohttp client, uvicorn and "
        f"FastAPI server, the answer's JSON); client to mobile and back {r['client_minus_mobile_server_ms_p50']:.1f} ms; "
        f"the three tiers' own times add up to {tiers_ms:.1f} ms, {extra_tiers:+.1f} ms over the whole in-process "
        "path (tokenising, the forward passes, policy steps, encoding and the validating decode, the batcher). "
        "The model's work per text is small (SST-2 sentences of ~25 tokens, a 6-layer MiniLM, 1 thread), so these "
        "fixed per-request costs are large next to the model's own work. Throughput: the services run smaller forward "
        "batches than the baseline's 32 (the mean batch per tier is in section 2) and pay the HTTP and JSON of every "
        "request on the same two cores as the client, which the batched baseline does not.",
    ]


def render_md(report: dict) -> str:
    s, m, machine = report["settings"], report["model"], report["machine"]
    linear = report["linear"]["latency"]
    main = report["main"]
    lines = [
        "# Three tier services vs the same sliced model in one process",
        "",
        f"Command: `{report['command']}` ({report['total_s'] / 60:.0f} min, started {report['started']}).",
        "",
        f"Model: `{m['run_dir']}` ({m['layers']} layers, plan {m['plan']}, hidden {m['hidden']}, policy: {m['policy']}), "
        f"trained on this machine's CPU (see results/routing.md for its command); texts: SST-2 validation sentences. "
        f"Machine: {machine['cpus']} CPU cores, load average {machine['loadavg_start']} at start and "
        f"{machine['loadavg_end']} at end (other sessions' jobs share the cores). The services, the client and the "
        "in-process baseline share those cores, so only figures measured side by side in this run are meaningful; "
        "absolute times are not.",
        "",
        f"Settings: uvicorn with uvloop and httptools, {s['service_threads']} torch thread per service (3 processes), "
        f"DIMEE_MAX_BATCH_SIZE={s['max_batch']}, DIMEE_BATCH_WINDOW_MS={s['window_ms']:g}; handoff metadata in the "
        "binary body (the codec's metadata section), JSON answers by pydantic-core / orjson.",
        "",
        "## Against the targets",
        "",
    ]
    for t in report["targets"]:
        lines.append(f"- {t['target']}: {verdict(t['met'])}: {t['figure']}.")
    fault = main.get("fault")
    if fault:
        ok = fault["lost"] == 0 and fault["status_5xx"] == 0
        lines.append(
            f"- Edge stopped halfway under load, 0 lost and 0 5xx: {verdict(ok)}: {fault['lost']} lost, "
            f"{fault['status_5xx']} 5xx of {fault['requests']}; {fault['degraded']} answered degraded "
            f"({', '.join(f'{k} {v}' for k, v in fault['degraded_reasons'].items()) or 'none'})."
        )
    lines += ["", *_why(report), "", "## 1. Latency at batch 1 (sequential one-text requests)"]
    lines += [
        "",
        f"{s['latency_requests']} requests per path after {s['warmup']} warm-up; service and in-process calls "
        "alternate on the same text (ABBA). Service = client wall time of one POST /v1/classify. In-process: the "
        "three-tier path is `tiers.run_routed` with the same rule (threshold 1: every sample runs every layer, "
        "mobile -> edge -> cloud, in memory, no codec); a forced path tokenises and runs that tier's part from the "
        "token ids (through the token codec for edge and cloud, as the services send them). Overhead = (service - "
        "in-process) / in-process on the medians; paired = the median of the per-text ratios.",
        "",
        "| path | route | service p50 ms | service p99 | in-process p50 | in-process p99 | overhead p50 | paired | "
        "labels agree |",
        "|---|---|---|---|---|---|---|---|---|",
        *_latency_rows(linear),
        *_latency_rows(main["latency"]),
        "",
        "Where the service time goes (medians, ms, from the responses' cost.wall_ms): per tier = arrival to decision "
        "(batcher, forward pass, policy); per hop = round trip minus the next tier's own time (HTTP client and "
        "server, the answer's JSON); client - mobile = the client's wall time minus mobile's own.",
        "",
        "| path | mobile | edge | cloud | " + " | ".join(f"{h} hop" for h in HOPS) + " | client - mobile |",
        "|---|---|---|---|---|---|---|---|",
        *_where_rows(linear),
        *_where_rows(main["latency"]),
        "",
        f"## 2. Throughput at {s['concurrency']} concurrent clients",
        "",
    ]
    check = main["throughput"]["inprocess_threads"]
    rates = ", ".join(f"{t} thread(s) {r:.1f} texts/s" for t, r in check["texts_per_s_by_threads"].items())
    lines += [
        f"{s['throughput_requests']} requests per round, one text each, an aiohttp client with {s['concurrency']} "
        f"workers (in the benchmark's process, on the same cores); in-process: batches of {s['concurrency']} through the three parts (mixed: routed by the same "
        f"policy, only pending samples handed on) at the best torch thread count of a check on {check['texts']} "
        f"texts before the rounds ({rates}: the baseline ran at {check['best_threads']}). Rounds alternate service / "
        "in-process; the target compares each round's service rate with the in-process rate next to it.",
        "",
        "| mode | service texts/s (median) | in-process texts/s (median) | ratio of medians | per round | lowest "
        "round | mean forward batch (mobile/edge/cloud) | answered by (service) | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in s["modes"]:
        r = main["throughput"].get(mode)
        if not r:
            continue
        mb = r["mean_forward_batch"][-1] if r["mean_forward_batch"] else {}
        batch = "/".join("-" if mb.get(t) is None else f"{mb[t]:.1f}" for t in TIERS)
        by = "/".join(str(r["service_tiers"][t]) for t in TIERS)
        lines.append(
            f"| {mode} | {r['service_median']:.1f} | {r['inprocess_median']:.1f} | {r['ratio_pct']:.0f}% | "
            f"{', '.join(f'{x:.0f}%' for x in r['ratio_per_round_pct'])} | {r['ratio_min_pct']:.0f}% | {batch} | "
            f"{by} | {r['failed_requests']} |"
        )
    if fault:
        lines += [
            "",
            "## 3. Edge stopped halfway (target: 0 lost, 0 5xx)",
            "",
            f"{fault['requests']} requests at concurrency {fault['concurrency']}, all forced to edge; "
            f"`group.stop(\"edge\")` (SIGTERM, graceful) after {fault['edge_stopped_after_sent']} had been sent.",
            "",
            "| lost | 5xx | 4xx | 200 | degraded | answered by mobile/edge/cloud | request ms p50 / p99 |",
            "|---|---|---|---|---|---|---|",
            f"| {fault['lost']} | {fault['status_5xx']} | {fault['status_4xx']} | {fault['status_200']} | "
            f"{fault['degraded']} | {'/'.join(str(fault['answered_by'][t]) for t in TIERS)} | "
            f"{fault['request_ms']['p50']:.0f} / {fault['request_ms']['p99']:.0f} |",
        ]
    lines += [
        "",
        "## 4. Payload bytes per hop vs the floor (tokens x hidden x bytes per value)",
        "",
        "From the responses' cost.bytes_per_hop on the three-tier path (the payload the cost model charges; the "
        "metadata section, 36 bytes plus 4 per prior logit, travels beside it); `= payload_size`: every answer's "
        "bytes equal tiers.hop_payload_size for its token count. fp16 and int8: the services restarted with "
        "DIMEE_HANDOFF_ENCODING.",
        "",
        "| encoding | texts | hop | bytes/text p50 | floor/text p50 | extra bytes/text p50 | total over floor | "
        "= payload_size | labels agree with in-process fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report["bytes"]:
        for hop in [h for h in HOPS if h in b]:
            h = b[hop]
            lines.append(
                f"| {b['encoding']} | {b['texts']} | {hop} | {h['bytes_per_text_p50']:.0f} | {h['floor_per_text_p50']:.0f} "
                f"| {h['extra_bytes_per_text_p50']:.0f} | +{h['overhead_pct']:.2f}% | {h['equals_payload_size']} | "
                f"{b.get('label_agreement_with_inprocess_fp32', '-')} |"
            )
    profiles = [report["linear"][key] for key in ("profile", "profile_gil") if report["linear"].get(key)]
    if profiles:
        lines += ["", "## 5. Profile of the three-tier path", ""]
        for profile in profiles:
            lines += render_profile(profile)
    lines += _load_section()
    lines.append("")
    return "\n".join(lines)


def _load_section() -> list[str]:
    if not LOAD_JSON.exists():
        return []
    load = json.loads(LOAD_JSON.read_text())
    lines = [
        "",
        "## 6. Load test with locust (an outside tool), for sizing a deployment",
        "",
        f"Command: `{load['command']}` (started {load['started']}; {load['seconds_per_step']:g} s per step after "
        f"{load['warmup_s']:g} s of warm-up, the run's policy, one text per request, locust {load['locust']}). "
        "Clients wait for each answer before the next request (no think time), so the request rate is what the "
        "three services deliver at that concurrency on this machine; locust runs on the same cores. Load average "
        f"{load.get('loadavg_start')} at start and {load.get('loadavg_end')} at end (other sessions' jobs too).",
        "",
        "| clients | requests | failures | requests/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for step in load["steps"]:
        lines.append(
            f"| {step['users']} | {step['requests']} | {step['failures']} | {step['rps']:.1f} | {step['p50_ms']:.0f} | "
            f"{step['p99_ms']:.0f} |"
        )
    return lines


def main() -> None:
    """Re-render results/services.md from results/services.json (and services_load.json)."""
    report = json.loads((REPO / "results/services.json").read_text())
    (REPO / "results/services.md").write_text(render_md(report))


if __name__ == "__main__":
    main()
