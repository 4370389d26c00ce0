"""Accuracy and bytes sent vs SNR for transmission-decision (TD) rules over noisy links between the tiers.

For one fine-tuned run (plan m, e, L):

1. mobile runs once over the validation split and a subset of the calibration split; the hidden states after
   layer m and the mobile exits' logits are kept;
2. for every handoff encoding (fp32/fp16/int8) and SNR, the served path of a sample mobile hands on after
   layer m: `tiers.channel.send_hidden_states` (additive Gaussian noise at that SNR on the real tokens'
   values, then the codec: what the services do on every hop) -> decode -> edge layers m+1..e -> the same
   noisy hop edge -> cloud -> cloud layers -> exit-L prediction ("remote answer");
3. TD rules are fitted on the calibration rows stacked over the SNR grid and evaluated on validation per SNR:
   accuracy (local answer at exit m if kept, remote answer if transmitted), offload rate, bytes sent per sample
   (`tiers.payload_size` of a one-sample handoff).

Run: ``python -m glue_eval.channel_experiment runs/bench-sst2 runs/mrpc --out results/channel``. With
``--replay sst2 mrpc`` the TD rules are refitted and re-evaluated from the saved predictions of such a run
(``<out>/<task>_predictions.npz``), without the runs or a forward pass.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from clustering.profiles import predictions
from clustering.transmission import ConfidenceTD, DimeeTD, LogisticTD, SNRShiftedTD, evaluate_td, local_predictions
from tiers import decode_handoff, load_tier_part, payload_size, read_run_info
from tiers.channel import Channel, send_hidden_states

from .data import subset
from .tasks import run_task as task_of_run
from .training import encode_split, load_run_data, pad_batch, stored_config

DEFAULT_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 30.0)
ENCODINGS = ("fp32", "fp16", "int8")
CLEAN = "clean"  # SNR key of the noise-free hop


@dataclass
class MobileCache:
    batches: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]]  # (rows, hidden after m, mask)
    mobile_logits: np.ndarray  # [n, m, C]
    labels: np.ndarray
    token_counts: np.ndarray


def _splits(run_dir: Path, calibration_n: int, seed: int):
    info = read_run_info(run_dir)
    config = stored_config(info, run_dir)  # the data source the run's run.json records
    config.train_subset = config.eval_subset = config.calibration_subset = None
    splits, note = load_run_data(config, info)
    return info, config, subset(splits["calibration"], calibration_n, seed), splits["validation"], note


@torch.no_grad()
def run_mobile(mobile, encoded, pad_id: int, batch_size: int) -> MobileCache:
    order = np.argsort(encoded.lengths, kind="stable")
    n = len(encoded)
    logits = None
    batches = []
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        batch = pad_batch(encoded, rows, pad_id)
        out = mobile.run_from_ids(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        if logits is None:
            logits = np.zeros((n, out.exit_logits.shape[1], out.exit_logits.shape[2]), dtype=np.float32)
        logits[rows] = out.exit_logits.numpy()
        batches.append((rows, out.hidden, batch["attention_mask"]))
    return MobileCache(batches, logits, encoded.labels, encoded.lengths)


@torch.no_grad()
def remote_predictions(
    cache: MobileCache, edge, cloud, next_layer: int, snrs, encodings, seed: int, clean_only=()
) -> dict[str, dict[str, np.ndarray]]:
    """{encoding: {snr key: exit-L prediction [n]}} (snr key: "clean" or the dB value as str); encodings in
    `clean_only` are run over a noise-free hop only."""
    n = len(cache.labels)
    hidden_size = edge.hidden_size
    out: dict[str, dict[str, np.ndarray]] = {}
    for encoding in [*encodings, *[e for e in clean_only if e not in encodings]]:
        enc_snrs = [] if encoding not in encodings else list(snrs)
        preds = {key: np.zeros(n, dtype=np.int64) for key in [CLEAN, *[str(s) for s in enc_snrs]]}
        for b, (rows, hidden, mask) in enumerate(cache.batches):
            for k, snr in enumerate([None, *enc_snrs]):
                generator = torch.Generator().manual_seed(seed * 1_000_003 + b * 101 + k)
                body = send_hidden_states(hidden, mask, next_layer, encoding, snr, generator)
                edge_out = edge.run_hidden(decode_handoff(body, hidden_size).hidden, mask)
                final = edge_out.exit_logits[:, -1:, :]
                if len(cloud.layers) and cloud.last_layer > edge.last_layer:
                    body = send_hidden_states(edge_out.hidden, mask, edge.last_layer + 1, encoding, snr, generator)
                    cloud_out = cloud.run_hidden(decode_handoff(body, hidden_size).hidden, mask)
                    final = cloud_out.exit_logits[:, -1:, :]
                preds[CLEAN if snr is None else str(snr)][rows] = predictions(final.numpy())[:, 0]
        out[encoding] = preds
    return out


def td_experiment(cal, val, cal_remote, val_remote, snrs, encoding, hidden_size, cost_weight):
    """Fit the TD rules on calibration rows stacked over the SNRs, evaluate on validation per SNR."""
    val_local = local_predictions(val.mobile_logits) == val.labels
    stacked_logits = np.concatenate([cal.mobile_logits] * len(snrs))
    stacked_snr = np.concatenate([np.full(len(cal.labels), s) for s in snrs])
    stacked_labels = np.concatenate([cal.labels] * len(snrs))
    stacked_remote = np.concatenate([cal_remote[encoding][str(s)] == cal.labels for s in snrs])
    clean_remote = cal_remote[encoding][CLEAN] == cal.labels
    rules = {
        "threshold (fit noise-free)": ConfidenceTD(cost_weight=cost_weight).fit(
            cal.mobile_logits, 60.0, cal.labels, clean_remote
        ),
        "threshold (fit all SNRs)": ConfidenceTD(cost_weight=cost_weight).fit(
            stacked_logits, stacked_snr, stacked_labels, stacked_remote
        ),
        "SNR-shifted threshold": SNRShiftedTD(cost_weight=cost_weight).fit(
            stacked_logits, stacked_snr, stacked_labels, stacked_remote
        ),
        "logistic (conf + SNR)": LogisticTD(cost_weight=cost_weight).fit(
            stacked_logits, stacked_snr, stacked_labels, stacked_remote
        ),
        "DIMEE per SNR": DimeeTD(cost_weight=cost_weight).fit(stacked_logits, stacked_snr, stacked_labels, stacked_remote),
    }
    payload = np.array([payload_size([c], hidden_size, encoding) for c in val.token_counts], dtype=float)
    rows = []
    for snr in snrs:
        remote = val_remote[encoding][str(snr)] == val.labels
        decisions = {
            "always local": np.zeros(len(val.labels), bool),
            "always transmit": np.ones(len(val.labels), bool),
            **{name: rule.predict(val.mobile_logits, snr) for name, rule in rules.items()},
            "oracle": remote & ~val_local,
        }
        for name, transmit in decisions.items():
            rows.append(
                {"encoding": encoding, "cost_weight": cost_weight, "snr_db": snr, "rule": name,
                 **evaluate_td(transmit, val_local, remote, payload)}
            )  # fmt: skip
    fitted = {name: rule.to_dict() for name, rule in rules.items()}
    return rows, fitted


def packet_loss_table(mean_payload: float, rate_bps: float = 10e6, latency_s: float = 0.005) -> list[dict]:
    out = []
    for loss in (0.0, 0.01, 0.05, 0.2, 0.5):
        channel = Channel(rate_bps, latency_s, packet_loss=loss)
        o = channel.transmission_outcome(int(round(mean_payload)))
        out.append(
            {
                "packet_loss": loss,
                "payload_bytes": int(round(mean_payload)),
                "expected_transmissions": o.transmissions,
                "bytes_on_air": o.bytes_on_air,
                "seconds": o.seconds,
                "delivery_probability": o.delivered,
            }
        )
    return out


def run_task(
    run_dir: Path, snrs, encodings, calibration_n: int, seed: int, cost_weights, batch_size: int, clean_only=(),
    cache_out: Path | None = None,
) -> dict:
    t0 = time.time()
    info, config, cal_rows, val_rows, note = _splits(run_dir, calibration_n, seed)
    task = task_of_run(info)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "encoder")
    pad_id = tokenizer.pad_token_id or 0
    plan = info.plan
    mobile, edge, cloud = (load_tier_part(run_dir, plan, t) for t in ("mobile", "edge", "cloud"))
    caches = {}
    for name, rows in (("calibration", cal_rows), ("validation", val_rows)):
        encoded = encode_split(tokenizer, task, rows, config.max_length)
        caches[name] = run_mobile(mobile, encoded, pad_id, batch_size)
    # sanity: mobile logits equal the run's cached validation logits
    cached_all = np.load(run_dir / "logits" / "validation.npy")
    cached = cached_all[:, : plan.mobile_end]
    max_diff = float(np.abs(cached - caches["validation"].mobile_logits).max())
    remote = {
        name: remote_predictions(
            cache, edge, cloud, plan.mobile_end + 1, snrs, encodings, seed + i,
            clean_only if name == "validation" else (),
        )
        for i, (name, cache) in enumerate(caches.items())
    }
    val = caches["validation"]
    remote_accuracy = {
        enc: {key: float((p == val.labels).mean()) for key, p in preds.items()}
        for enc, preds in remote["validation"].items()
    }
    if cache_out is not None:  # what the TD analysis needs, to redo it without forward passes
        arrays = {
            f"{split}_{enc}_{key}": p
            for split in remote
            for enc, preds in remote[split].items()
            for key, p in preds.items()
        }
        for split, cache in caches.items():
            arrays.update({f"{split}_mobile_logits": cache.mobile_logits, f"{split}_labels": cache.labels,
                           f"{split}_token_counts": cache.token_counts})  # fmt: skip
        np.savez_compressed(cache_out, **arrays)
    td_rows, fitted = [], {}
    for cost_weight in cost_weights:
        for encoding in encodings:
            rows, fit = td_experiment(
                caches["calibration"], val, remote["calibration"], remote["validation"], snrs, encoding,
                edge.hidden_size, cost_weight,
            )  # fmt: skip
            td_rows += rows
            fitted[f"{encoding}, cost_weight={cost_weight:g}"] = fit
    mean_payload = {
        enc: float(np.mean([payload_size([c], edge.hidden_size, enc) for c in val.token_counts]))
        for enc in remote_accuracy
    }
    return {
        "task": info.task,
        "run_dir": str(run_dir),
        "plan": plan.to_dict(),
        "data": note,
        "n_validation": int(len(val.labels)),
        "n_calibration_used": int(len(caches["calibration"].labels)),
        "mobile_logits_max_abs_diff_vs_cache": max_diff,
        "local_exit": plan.mobile_end,
        "hidden_size": int(edge.hidden_size),
        "local_accuracy": float((local_predictions(val.mobile_logits) == val.labels).mean()),
        "final_exit_accuracy_cached": float((predictions(cached_all)[:, -1] == val.labels).mean()),
        "remote_accuracy": remote_accuracy,
        "mean_payload_bytes": mean_payload,
        "packet_loss_10Mbps_5ms": {enc: packet_loss_table(b) for enc, b in mean_payload.items()},
        "td": td_rows,
        "fitted_rules": fitted,
        "cost_weights": list(cost_weights),
        "seed": seed,
        "seconds": round(time.time() - t0, 1),
    }


def _hidden_size(result: dict, token_counts: np.ndarray) -> int:
    """The run's hidden size: stored since the field exists; for older results, the one whose payloads give
    the recorded mean payload exactly."""
    if "hidden_size" in result:
        return int(result["hidden_size"])
    enc, mean = next(iter(result["mean_payload_bytes"].items()))
    for h in range(1, 8193):
        if np.isclose(np.mean([payload_size([c], h, enc) for c in token_counts]), mean, rtol=0, atol=1e-6):
            return h
    raise SystemExit(f"{result['task']}: no hidden size reproduces its mean payload {mean} B; rerun the experiment")


def replay_task(out: Path, task: str) -> dict:
    """Refit and re-evaluate the TD rules of a finished experiment from its predictions file (no forward
    pass): the noise, the remote answers and every other figure stay as they were measured."""
    result_path, cache_path = out / f"{task}.json", out / f"{task}_predictions.npz"
    if not result_path.is_file() or not cache_path.is_file():
        raise SystemExit(f"--replay {task}: needs {result_path} and {cache_path} from an earlier full run")
    t0 = time.time()
    result = json.loads(result_path.read_text())
    arrays = np.load(cache_path)
    caches, remote = {}, {}
    for split in ("calibration", "validation"):
        caches[split] = MobileCache(
            [], arrays[f"{split}_mobile_logits"], arrays[f"{split}_labels"], arrays[f"{split}_token_counts"]
        )
        remote[split] = {}
        for key in arrays.files:
            parts = key.split("_", 2)
            if parts[0] == split and parts[1] in ENCODINGS:
                remote[split].setdefault(parts[1], {})[parts[2]] = arrays[key]
    hidden = _hidden_size(result, caches["validation"].token_counts)
    snrs = sorted({r["snr_db"] for r in result["td"]})
    encodings = sorted({r["encoding"] for r in result["td"]}, key=ENCODINGS.index)
    td_rows, fitted = [], {}
    for cost_weight in result["cost_weights"]:
        for encoding in encodings:
            rows, fit = td_experiment(
                caches["calibration"], caches["validation"], remote["calibration"], remote["validation"], snrs,
                encoding, hidden, cost_weight,
            )  # fmt: skip
            td_rows += rows
            fitted[f"{encoding}, cost_weight={cost_weight:g}"] = fit
    result.update(td=td_rows, fitted_rules=fitted, hidden_size=hidden, td_replay_seconds=round(time.time() - t0, 1))
    return result


def write_task(result: dict, out: Path) -> str:
    (out / f"{result['task']}.json").write_text(json.dumps(result, indent=1))
    plot_task(result, out)
    text = tables(result)
    (out / f"{result['task']}_tables.md").write_text(text + "\n")
    return text


# ---- plots and tables -------------------------------------------------------------------------------------
_STYLE = {
    "always local": ("#888888", ":"),
    "always transmit": ("#000000", "--"),
    "threshold (fit noise-free)": ("#4c72b0", "-"),
    "threshold (fit all SNRs)": ("#64b5cd", "-"),
    "SNR-shifted threshold": ("#dd8452", "-"),
    "logistic (conf + SNR)": ("#55a868", "-"),
    "DIMEE per SNR": ("#8172b3", "-"),
    "oracle": ("#c44e52", ":"),
}


def _main_rows(result: dict) -> list[dict]:
    w = result["cost_weights"][0]
    return [r for r in result["td"] if r["cost_weight"] == w]


def plot_task(result: dict, out: Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    task = result["task"]
    td = _main_rows(result)
    paths = []
    encodings = sorted({r["encoding"] for r in td}, key=ENCODINGS.index)
    fig = Figure(figsize=(5 * len(encodings), 4))
    FigureCanvasAgg(fig)
    for j, enc in enumerate(encodings):
        ax = fig.add_subplot(1, len(encodings), j + 1)
        for rule, (colour, style) in _STYLE.items():
            rows = [r for r in td if r["encoding"] == enc and r["rule"] == rule]
            x, y = [r["snr_db"] for r in rows], [r["accuracy"] for r in rows]
            ax.plot(x, y, style, color=colour, marker="o", ms=3, label=rule)
        ax.set_title(f"{task}: TD rules, {enc} handoff (w={result['cost_weights'][0]:g})", fontsize=9)
        ax.set_xlabel("SNR of every hop (dB)")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / f"{task}_accuracy_vs_snr.png")
    fig.savefig(paths[-1], dpi=110)

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    for rule, (colour, style) in _STYLE.items():
        for enc, marker in zip(encodings, ("o", "s", "^")):
            rows = [r for r in td if r["encoding"] == enc and r["rule"] == rule]
            if rule in ("always local", "oracle") or (enc != "fp32" and rule == "always transmit"):
                continue
            ax.plot([r["snr_db"] for r in rows], [r["bytes_per_sample"] / 1024 for r in rows], style, color=colour,
                    marker=marker, ms=3, alpha=1.0 if enc == "fp32" else 0.6, label=f"{rule} ({enc})")
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel("KiB sent per validation sample")
    ax.set_yscale("log")
    ax.set_title(f"{task}: bytes sent vs SNR")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax = fig.add_subplot(1, 2, 2)
    snrs = sorted({r["snr_db"] for r in td})
    for enc, marker in zip(result["remote_accuracy"], ("o", "s", "^")):
        acc = result["remote_accuracy"][enc]
        if str(snrs[0]) in acc:
            ax.plot(snrs, [acc[str(s)] for s in snrs], marker=marker, label=f"{enc} (noise-free {acc[CLEAN]:.4f})")
        else:
            ax.axhline(acc[CLEAN], color="#8172b2", lw=0.8, label=f"{enc}, noise-free only: {acc[CLEAN]:.4f}")
    ax.axhline(result["local_accuracy"], color="#888888", ls=":", label=f"local exit {result['local_exit']}")
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel("exit-L accuracy, every sample transmitted")
    ax.set_title(f"{task}: remote accuracy vs SNR per encoding")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / f"{task}_bytes_and_remote_vs_snr.png")
    fig.savefig(paths[-1], dpi=110)
    return paths


def rule_summary(result: dict, encoding: str = "fp32") -> str:
    """Markdown: per cost weight and rule, the TD objective (accuracy - w * offload rate), accuracy and
    offload rate averaged over the swept SNRs (each SNR weighs the same)."""
    lines = [
        f"| {result['task']} rule ({encoding}, mean over SNRs) | w | objective | accuracy | offload rate |",
        "|---|---|---|---|---|",
    ]
    for w in result["cost_weights"]:
        for rule in _STYLE:
            rows = [r for r in result["td"] if r["encoding"] == encoding and r["rule"] == rule and r["cost_weight"] == w]
            if not rows:
                continue
            acc = float(np.mean([r["accuracy"] for r in rows]))
            off = float(np.mean([r["offload_rate"] for r in rows]))
            lines.append(f"| {rule} | {w:g} | {acc - w * off:.4f} | {acc:.4f} | {off:.3f} |")
    return "\n".join(lines)


def tables(result: dict) -> str:
    lines = []
    task = result["task"]
    snrs = sorted({r["snr_db"] for r in result["td"]})
    encs = list(result["remote_accuracy"])
    td_encs = sorted({r["encoding"] for r in result["td"]}, key=ENCODINGS.index)
    lines.append(f"### {task}: exit-{result['plan']['num_layers']} accuracy when every sample is transmitted\n")
    lines.append("| encoding | mean bytes/sample | noise-free | " + " | ".join(f"{s:g} dB" for s in snrs) + " |")
    lines.append("|---" * (len(snrs) + 3) + "|")
    for enc in encs:
        acc = result["remote_accuracy"][enc]
        cells = " | ".join(f"{acc[str(s)]:.4f}" if str(s) in acc else "-" for s in snrs)
        lines.append(f"| {enc} | {result['mean_payload_bytes'][enc]:.0f} | {acc[CLEAN]:.4f} | {cells} |")
    lines.append(f"\nlocal answer (exit {result['local_exit']}): {result['local_accuracy']:.4f}\n")
    for enc in td_encs:
        lines.append(f"### {task}, {enc}: accuracy / offload rate / KiB per sample\n")
        lines.append("| rule | " + " | ".join(f"{s:g} dB" for s in snrs) + " |")
        lines.append("|---" * (len(snrs) + 1) + "|")
        for w in result["cost_weights"]:
            for rule in _STYLE:
                if w != result["cost_weights"][0] and rule in ("always local", "always transmit", "oracle"):
                    continue
                cells = []
                for s in snrs:
                    r = next(x for x in result["td"] if x["encoding"] == enc and x["rule"] == rule and x["snr_db"] == s
                             and x["cost_weight"] == w)  # fmt: skip
                    cells.append(f"{r['accuracy']:.3f} / {r['offload_rate']:.2f} / {r['bytes_per_sample'] / 1024:.1f}")
                label = rule if rule in ("always local", "always transmit", "oracle") else f"{rule}, w={w:g}"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"### {task}: the TD objective over all SNRs\n", rule_summary(result), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with --replay: task names under --out)")
    parser.add_argument("--replay", action="store_true",
                        help="refit and re-evaluate the TD rules from <out>/<task>_predictions.npz, no forward pass")
    parser.add_argument("--out", type=Path, default=Path("results/channel"))
    parser.add_argument("--snrs", type=float, nargs="+", default=list(DEFAULT_SNRS))
    parser.add_argument("--encodings", nargs="+", default=["fp32", "int8"], choices=ENCODINGS,
                        help="encodings swept over the SNRs (TD rules are fitted and evaluated for each)")
    parser.add_argument("--clean-only", nargs="*", default=["fp16"], choices=ENCODINGS,
                        help="encodings measured over a noise-free hop only (validation)")
    parser.add_argument("--calibration-n", type=int, default=800)
    parser.add_argument("--cost-weights", type=float, nargs="+", default=[0.0, 0.02, 0.05],
                        help="TD objective: accuracy - w * transmit rate; plots use the first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    text = []
    for run in args.runs:
        if args.replay:
            text.append(write_task(replay_task(args.out, str(run)), args.out))
            print(f"{run}: TD rules refitted from {args.out / f'{run}_predictions.npz'}")
            continue
        result = run_task(
            run, args.snrs, args.encodings, args.calibration_n, args.seed, args.cost_weights, args.batch_size,
            args.clean_only,
            args.out / f"{read_run_info(run).task}_predictions.npz",
        )  # fmt: skip
        text.append(write_task(result, args.out))
        diff = result["mobile_logits_max_abs_diff_vs_cache"]
        print(f"{result['task']}: done in {result['seconds']} s (mobile logits vs cache: max |diff| {diff:.2e})")
    print("\n\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
