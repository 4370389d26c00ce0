"""`dimee experts ...`: expert exits for distorted text (issue 6).

    dimee experts train RUN_DIR [--train-subset N] [--types ...]   # cache states, train heads + detector, save
    dimee experts eval RUN_DIR [--severities 0.1 0.3]              # table: standard / detector / true type
    dimee experts distort TYPE SEVERITY TEXT...                    # show what a distortion does
    dimee experts detect RUN_DIR TEXT...                           # the run's detector on raw texts

Wiring (in dimee/cli.py `_register_subcommands`): add `experts_cli` to the modules whose `register` is called.
"""

from __future__ import annotations

import argparse
import json


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--data-dir", default=None, help="local GLUE folder of <task>/<split>.jsonl")
    parser.add_argument("--source", choices=("auto", "local", "hub"), default=None, help="default: the run's stored source")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (forward passes over the splits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-subset", type=int, default=4000, help="train rows to distort (0: all of the train part)")
    parser.add_argument("--severities", nargs="+", type=float, default=[0.1, 0.3], help="evaluated severities")


def _config(args: argparse.Namespace, **extra):
    from glue_eval.experts import ExpertConfig

    return ExpertConfig(
        run_dir=args.run_dir,
        data_dir=args.data_dir,
        source=args.source,
        device=args.device,
        seed=args.seed,
        train_subset=args.train_subset or None,
        eval_severities=tuple(args.severities),
        **extra,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from glue_eval.experts import prepare_experts

    config = _config(
        args,
        types=tuple(args.types),
        train_severity=tuple(args.train_severity),
        detector_features=args.detector_features,
        epochs=args.epochs,
        learning_rate=args.lr,
    )
    prepared = prepare_experts(config, log=print)
    experts = prepared["experts"]
    print(f"expert exits {experts.exits} for {', '.join(experts.types)} saved in {args.run_dir}/experts/")
    print(json.dumps(prepared["timing"]))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import pandas as pd

    from glue_eval.experts import evaluate_experts

    config = _config(args, policies=tuple(args.policies), max_drop=args.max_drop)
    result = evaluate_experts(config, log=print)
    table = pd.DataFrame(result["rows"])
    cols = ["distortion", "severity", "mode", "policy", "accuracy", "offload_rate", "normalised_cost", "mobile_confidence"]
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(table[cols].round(4).to_string(index=False))
        det = pd.DataFrame(result["detection"])[["distortion", "severity", "features", "accuracy"]]
        print("\ndetector accuracy:")
        print(det.round(3).to_string(index=False))
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def cmd_distort(args: argparse.Namespace) -> int:
    from glue_eval.distortion import distort_texts

    for text in distort_texts(args.texts, args.type, args.severity, seed=args.seed):
        print(text)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from glue_eval.experts import load_run_experts

    _, detector = load_run_experts(args.run_dir)
    if detector is None:
        raise ValueError(f"{args.run_dir} has expert exits but no detector; rerun `dimee experts train`")
    if detector.n_hidden_:
        raise ValueError("this run's detector also reads a hidden-state vector; `detect` takes text-only detectors")
    for text, kind in zip(args.texts, detector.predict(args.texts)):
        print(json.dumps({"text": text, "distortion": str(kind)}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from glue_eval.distortion import DISTORTIONS
    from glue_eval.expert_options import DETECTOR_FEATURES, EXPERT_TYPES, POLICY_NAMES

    experts = subparsers.add_parser("experts", help="expert exits for distorted text: train, evaluate, distort, detect")
    sub = experts.add_subparsers(dest="experts_command", required=True)

    train = sub.add_parser("train", help="train expert exit heads (frozen encoder) and the distortion detector")
    _add_data_arguments(train)
    train.add_argument("--types", nargs="+", default=list(EXPERT_TYPES), choices=DISTORTIONS, metavar="TYPE")
    train.add_argument("--train-severity", nargs=2, type=float, default=[0.05, 0.5], metavar=("LOW", "HIGH"))
    train.add_argument("--detector-features", choices=DETECTOR_FEATURES, default="text")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--lr", type=float, default=5e-4)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="accuracy, offload rate and cost: standard vs expert exits")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--policies", nargs="+", default=["threshold", "dimee"], choices=POLICY_NAMES)
    evaluate.add_argument("--max-drop", type=float, default=0.01, help="policy knob: cheapest within this drop")
    evaluate.add_argument("--json", default=None, help="also write the full result here")
    evaluate.set_defaults(func=cmd_eval)

    distort = sub.add_parser("distort", help="print distorted copies of texts")
    distort.add_argument("type", choices=DISTORTIONS)
    distort.add_argument("severity", type=float)
    distort.add_argument("texts", nargs="+")
    distort.add_argument("--seed", type=int, default=0)
    distort.set_defaults(func=cmd_distort)

    detect = sub.add_parser("detect", help="name the distortion type of texts with a run's detector")
    detect.add_argument("run_dir")
    detect.add_argument("texts", nargs="+")
    detect.set_defaults(func=cmd_detect)
