"""`dimee export RUN --tier mobile --format onnx [--quantize int8] --output DIR`: the device folder (tiers.export)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    from tiers.export import check_request, export_mobile

    check_request(args.tier, args.format, args.quantize)  # before loading anything: a bad request is one line
    spec = export_mobile(args.run_dir, args.output, quantize=args.quantize, tier=args.tier, fmt=args.format)
    check = "" if spec.check_max_abs_diff is None else f", max |ONNX - torch| {spec.check_max_abs_diff:.2g} on the check batch"
    others = ", ".join(sorted(p.name for p in Path(args.output).iterdir() if p.name != spec.model_file))
    print(
        f"wrote {args.output}: {spec.model_file} ({spec.model_bytes / 1e6:.1f} MB, {spec.quantization or 'fp32'}"
        f"{check}), {others}; run it on a device with "
        f"`python -m services.device {args.output} TEXT --edge-url URL` (onnxruntime and tokenizers, no torch)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export",
        help="write the mobile tier (embeddings, layers 1..m, exits, routing feature) as an ONNX folder for a device",
    )
    export.add_argument("run_dir")
    # no argparse choices: an unknown tier, format or quantisation is one `dimee: error:` line (tiers.export)
    export.add_argument("--tier", default="mobile", help="the tier to export: mobile (edge and cloud are served)")
    export.add_argument("--format", default="onnx", help="onnx")
    export.add_argument("--quantize", default=None, help="int8: dynamic quantisation of the weights (onnxruntime)")
    export.add_argument("--output", required=True, help="folder to write (replaced if it holds an earlier export)")
    export.set_defaults(func=cmd_export)
