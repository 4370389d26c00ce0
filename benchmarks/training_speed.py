"""Fine-tuning and logit-caching speed of the early-exit model on this machine (SST-2, offline encoder).

Training: the same step as `glue_eval.training.train_early_exit` (dynamic padding with `pad_batch`, joint
weighted exit loss, AdamW with the trainer's parameter groups, grad clipping, linear schedule), on the first
batches the trainer itself would draw with the same seed from the same train split (after the calibration
carve). A few warm-up steps are run and discarded, then each timed step is measured on its own.
Optionally (--crosscheck) `train_early_exit` itself runs on a small subset and its own figure is recorded.

Inference: per-batch time of the logit caching (`collect_logits`: embed, all layers and exits, batches
sorted by length) on the SST-2 validation split.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training_speed.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from glue_eval.tasks import get_task
from glue_eval.training import (
    VALIDATION_SPLIT,
    TrainConfig,
    collect_logits,
    encode_split,
    exit_weights,
    joint_exit_loss,
    load_run_data,
    pad_batch,
    set_seed,
    train_early_exit,
)
from tiers import EarlyExitModel, resolve_encoder

REPO = Path(__file__).resolve().parent.parent


def command_line() -> str:
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(str(REPO)) else sys.executable
    return "HF_HUB_OFFLINE=1 " + shlex.join([exe, *sys.argv])


def stats(seconds: list[float]) -> dict:
    a = np.asarray(seconds)
    return {"n": len(a), "median_s": round(float(np.median(a)), 4), "mean_s": round(float(a.mean()), 4),
            "min_s": round(float(a.min()), 4), "max_s": round(float(a.max()), 4)}


def cpu_stats(wall: list[float], cpu: list[float]) -> dict:
    """Process CPU seconds (all threads) per step. cpu / threads would be the step's wall time with both threads
    to itself and perfect scaling, if contention did not inflate CPU time too (it does: cache sharing and
    OpenMP spin-waits), so it is a rough figure, reported beside the fastest step's wall time."""
    w, c = np.asarray(wall), np.asarray(cpu)
    threads = torch.get_num_threads()
    return {"cpu_median_s": round(float(np.median(c)), 4), "cpu_mean_s": round(float(c.mean()), 4),
            "cpu_over_wall_median": round(float(np.median(c / w)), 3),
            "cpu_mean_over_threads_s": round(float(c.mean()) / threads, 4)}


def timed_training_steps(model: EarlyExitModel, encoded, config: TrainConfig, pad_id: int, warmup: int, steps: int) -> dict:
    """The trainer's step, on the trainer's first batches (same seed), each timed on its own."""
    model.train()
    weights = exit_weights(model.num_layers, config.loss_weighting)
    total_steps = max(1, math.ceil(math.ceil(len(encoded) / config.batch_size) * config.epochs))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimiser = torch.optim.AdamW(groups, lr=config.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimiser, int(config.warmup_ratio * total_steps), total_steps)
    order = np.random.default_rng(config.seed).permutation(len(encoded))  # as train_early_exit draws its first epoch
    labels = torch.from_numpy(encoded.labels)
    times, cpu, padded_lengths, real_tokens, losses = [], [], [], [], []
    for step in range(warmup + steps):
        rows = order[step * config.batch_size : (step + 1) * config.batch_size]
        c0 = time.process_time()
        t0 = time.perf_counter()
        batch = pad_batch(encoded, rows, pad_id)
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = joint_exit_loss(logits, labels[rows], weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad(set_to_none=True)
        losses.append(loss.item())
        elapsed = time.perf_counter() - t0
        cpu_elapsed = time.process_time() - c0
        if step >= warmup:
            times.append(elapsed)
            cpu.append(cpu_elapsed)
            padded_lengths.append(int(batch["input_ids"].shape[1]))
            real_tokens.append(int(batch["attention_mask"].sum()))
    return {"step_times": {**stats(times), **cpu_stats(times, cpu)}, "step_seconds": [round(t, 4) for t in times],
            "step_cpu_seconds": [round(t, 4) for t in cpu],
            "padded_length_per_step": padded_lengths, "real_tokens_per_step": real_tokens,
            "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)]}


@torch.no_grad()
def timed_inference_batches(model: EarlyExitModel, encoded, batch_size: int, pad_id: int) -> dict:
    """collect_logits' per-batch work (length-sorted batches), each batch timed on its own."""
    model.eval()
    order = np.argsort(encoded.lengths, kind="stable")
    times, cpu, lengths = [], [], []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        c0 = time.process_time()
        t0 = time.perf_counter()
        batch = pad_batch(encoded, rows, pad_id)
        hidden = model.embed(batch["input_ids"], batch["token_type_ids"])
        mask = batch["attention_mask"]
        _ = ((hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)).float().numpy()
        _, out = model.run_layers(hidden, mask, 1, model.num_layers)
        _ = out.float().numpy()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        lengths.append(int(batch["input_ids"].shape[1]))
    return {"batch_times": {**stats(times), **cpu_stats(times, cpu)}, "padded_length_min_median_max": [min(lengths), int(np.median(lengths)), max(lengths)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-offline")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="batch size of the timed logit caching")
    parser.add_argument("--eval-n", type=int, default=None, help="validation rows for the inference timing (default all)")
    parser.add_argument("--crosscheck-steps", type=int, default=0,
                        help="also run train_early_exit itself for this many steps (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="local GLUE folder (default: $DIMEE_GLUE_DIR or ../shared/glue)")
    parser.add_argument("--out", default=str(REPO / "results" / "training_speed.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    started = time.perf_counter()
    task = get_task("sst2")
    config = TrainConfig(task="sst2", model=args.model, batch_size=args.batch_size, max_length=args.max_length,
                         seed=args.seed, data_dir=args.data_dir, source="local", device="cpu")
    config.validate()
    set_seed(config.seed)
    splits, data_note = load_run_data(config)
    encoder = resolve_encoder(config.model)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    pad_id = tokenizer.pad_token_id or 0
    t0 = time.perf_counter()
    train_encoded = encode_split(tokenizer, task, splits["train"], config.max_length)
    tokenise_seconds = time.perf_counter() - t0
    model = EarlyExitModel.from_encoder(encoder, task.num_labels, pooling=config.pooling)

    training = timed_training_steps(model, train_encoded, config, pad_id, args.warmup_steps, args.steps)
    per_1000_median = 1000 * training["step_times"]["median_s"] / config.batch_size
    per_1000_mean = 1000 * training["step_times"]["mean_s"] / config.batch_size
    per_1000_cpu = 1000 * training["step_times"]["cpu_mean_over_threads_s"] / config.batch_size
    per_1000_fastest = 1000 * training["step_times"]["min_s"] / config.batch_size
    n_train = len(train_encoded)
    steps_per_epoch = math.ceil(n_train / config.batch_size)

    crosscheck = None
    if args.crosscheck_steps > 0:
        sub = TrainConfig(**{**config.__dict__, "epochs": 1.0})
        rows = np.random.default_rng(config.seed).permutation(n_train)[: args.crosscheck_steps * config.batch_size]
        from glue_eval.training import Encoded

        small = Encoded([train_encoded.input_ids[i] for i in rows], [train_encoded.token_type_ids[i] for i in rows],
                        train_encoded.labels[rows])
        fresh = EarlyExitModel.from_encoder(encoder, task.num_labels, pooling=config.pooling)
        figures = train_early_exit(fresh, small, sub, pad_id, torch.device("cpu"))
        crosscheck = {"what": "glue_eval.training.train_early_exit on a random subset (includes its first, cold steps)",
                      **figures}
        del fresh

    evaluation = splits[VALIDATION_SPLIT]
    if args.eval_n:
        evaluation = evaluation.select(range(min(args.eval_n, len(evaluation))))
    eval_encoded = encode_split(tokenizer, task, evaluation, config.max_length)
    inference = timed_inference_batches(model, eval_encoded, args.eval_batch_size, pad_id)
    t0 = time.perf_counter()
    collect_logits(model, eval_encoded, args.eval_batch_size, pad_id, torch.device("cpu"), desc="collect_logits")
    collect_seconds = time.perf_counter() - t0
    n_batches = math.ceil(len(eval_encoded) / args.eval_batch_size)
    n_calibration = len(splits["calibration"])
    cache_rows = n_calibration + len(eval_encoded)
    per_row = collect_seconds / len(eval_encoded)

    result = {
        "command": command_line(),
        "encoder": args.model,
        "encoder_path": encoder,
        "task": "sst2",
        "data": data_note,
        "n_train": n_train,
        "n_calibration": n_calibration,
        "n_validation": len(eval_encoded),
        "train_token_count_mean": round(float(train_encoded.lengths.mean()), 2),
        "validation_token_count_mean": round(float(eval_encoded.lengths.mean()), 2),
        "tokenise_train_seconds": round(tokenise_seconds, 2),
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "padding": "dynamic (glue_eval.training.pad_batch: each batch padded to its longest row)",
        "warmup_steps_discarded": args.warmup_steps,
        "training": training,
        "fine_tune_seconds_per_1000_samples_median": round(per_1000_median, 2),
        "fine_tune_seconds_per_1000_samples_mean": round(per_1000_mean, 2),
        "fine_tune_seconds_per_1000_samples_fastest_step": round(per_1000_fastest, 2),
        "fine_tune_seconds_per_1000_samples_cpu_over_threads": round(per_1000_cpu, 2),
        "projected_epoch": {
            "steps": steps_per_epoch,
            "seconds_from_mean_step": round(steps_per_epoch * training["step_times"]["mean_s"], 0),
            "minutes_from_mean_step": round(steps_per_epoch * training["step_times"]["mean_s"] / 60, 1),
            "minutes_from_median_step": round(steps_per_epoch * training["step_times"]["median_s"] / 60, 1),
            "minutes_from_fastest_step": round(steps_per_epoch * training["step_times"]["min_s"] / 60, 1),
            "minutes_from_cpu_over_threads": round(
                steps_per_epoch * training["step_times"]["cpu_mean_over_threads_s"] / 60, 1),
            "note": f"{n_train} rows / batch {config.batch_size}; excludes tokenising, saving and logit caching",
        },
        "train_early_exit_crosscheck": crosscheck,
        "inference": {
            "what": "logit caching (embed + all 6 layers and exits, no grad), validation split, batches sorted by length",
            "batch_size": args.eval_batch_size,
            **inference,
            "collect_logits_seconds": round(collect_seconds, 2),
            "collect_logits_batches": n_batches,
            "collect_logits_seconds_per_batch_mean": round(collect_seconds / n_batches, 4),
            "projected_cache_seconds_calibration_plus_validation": round(per_row * cache_rows, 0),
            "projection_note": f"{cache_rows} rows at the validation per-row rate: an upper estimate, since the "
                               "calibration rows are SST-2 train phrases, shorter on average than validation sentences "
                               "(see the token_count_mean figures)",
        },
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} logical CPUs, "
                   "shared with other work during the run",
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    st = training["step_times"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    print(f"training step (batch {config.batch_size}, {args.steps} timed after {args.warmup_steps} warm-up): "
          f"median {st['median_s']:.3f} s, mean {st['mean_s']:.3f} s (min {st['min_s']:.3f}, max {st['max_s']:.3f}); "
          f"padded lengths {training['padded_length_per_step']}")
    print(f"fine-tuning: {per_1000_median:.1f} s per 1,000 samples (median; mean {per_1000_mean:.1f}); "
          f"CPU {st['cpu_mean_s']:.2f} s per step (cpu/wall {st['cpu_over_wall_median']}), "
          f"fastest step {per_1000_fastest:.1f} s per 1,000, CPU/threads {per_1000_cpu:.1f} s per 1,000")
    pe = result["projected_epoch"]
    print(f"projected full SST-2 epoch ({n_train} rows, {pe['steps']} steps): {pe['minutes_from_mean_step']} min "
          f"(mean step), {pe['minutes_from_median_step']} min (median step), "
          f"{pe['minutes_from_fastest_step']} min (fastest step), {pe['minutes_from_cpu_over_threads']} min (CPU/threads)")
    if crosscheck:
        print(f"train_early_exit cross-check: {crosscheck['steps']} steps, {crosscheck['train_seconds']} s, "
              f"{crosscheck['seconds_per_1000_samples']} s per 1,000 samples")
    ib = inference["batch_times"]
    print(f"logit caching, batch {args.eval_batch_size}: median {ib['median_s']:.3f} s per batch (mean {ib['mean_s']:.3f}); "
          f"collect_logits {collect_seconds:.1f} s for {n_batches} batches")
    print(f"wrote {out} in {result['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
