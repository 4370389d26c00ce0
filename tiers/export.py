"""Export the mobile tier to ONNX: one folder that is everything a device needs (no torch on the device).

The folder (:func:`export_mobile`) holds

    mobile.onnx        embeddings, layers 1..m and exits 1..m of the run, with dynamic batch and sequence axes:
                       inputs input_ids, attention_mask [, token_type_ids] (int64 [batch, seq]); outputs
                       exit_logits [batch, m, labels], hidden [batch, seq, hidden] (after layer m, what a
                       handoff at boundary m carries) and feature [batch, hidden] (the embedding layer's
                       output mean-pooled over the real tokens: the feature DIMEE's entry stage routes on,
                       computed as the served mobile tier computes it, `tiers.segment`)
    tokenizer.json     the run's fast tokenizer (the `tokenizers` library reads it)
    run.json           the run's description (task, labels, max length, tier plan, cost model)
    policy.json        the fitted policy, if the run has one; temperatures.json likewise
    device.json        what the client needs to drive the model: file, inputs, outputs, quantisation, sizes

`--quantize int8` writes mobile.onnx with int8 weights (onnxruntime's dynamic quantisation: weights int8,
activations quantised per batch at run time). The folder is built beside its destination and moved into place
only when complete. `services.device` is the client that runs it with onnxruntime, tokenizers and numpy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .model import CheckpointError, pool_hidden, read_encoder_config
from .run import POLICY_FILE, RUN_FILE, TEMPERATURES_FILE, read_run_info
from .slicing import TierPart, load_tier_part

DEVICE_FILE = "device.json"
MODEL_FILE = "mobile.onnx"
TOKENIZER_FILE = "tokenizer.json"
DEVICE_FORMAT = 1
FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
EXPORTABLE_TIERS = ("mobile",)
OUTPUTS = ("exit_logits", "hidden", "feature")
OPSET = 18
#: fp32 ONNX vs torch on the export's own check batch; a larger difference means the graph is wrong.
CHECK_TOLERANCE = 1e-4


class ExportError(ValueError):
    """An export that cannot be made: a bad request (tier, format, quantisation), or a model that does not trace."""


@dataclass(frozen=True)
class DeviceSpec:
    """device.json: how to drive the exported model."""

    format_version: int
    tier: str
    model_file: str
    quantization: str | None
    inputs: list[str]
    outputs: list[str]
    mobile_end: int
    num_labels: int
    hidden_size: int
    vocab_size: int
    pad_token_id: int
    max_tokens: int
    opset: int
    exporter: str
    model_bytes: int
    check_max_abs_diff: float | None  # fp32 only: ONNX Runtime vs torch on the export's check batch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DeviceSpec":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


class MobileGraph(nn.Module):
    """The mobile part as one traced function: ids in; exits 1..m, hidden state after m, embedding feature out."""

    def __init__(self, part: TierPart, with_types: bool) -> None:
        super().__init__()
        self.part = part
        self.with_types = with_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.part.embed(input_ids, token_type_ids if self.with_types else None)
        feature = pool_hidden(hidden, attention_mask, "mean")
        out = self.part.run_hidden(hidden, attention_mask, start=1)
        return out.exit_logits, out.hidden, feature


def check_request(tier: str, fmt: str, quantize: str | None) -> None:
    """One clear error for a tier, format or quantisation the exporter does not make."""
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r} is not supported; use --format {' or '.join(FORMATS)}")
    if tier not in ("mobile", "edge", "cloud"):
        raise ExportError(f"unknown tier {tier!r}; the tiers are mobile, edge and cloud (only mobile exports)")
    if tier not in EXPORTABLE_TIERS:
        what = f"a quantised ({quantize}) model of" if quantize else "an ONNX model of"
        raise ExportError(
            f"there is no {what} the {tier} tier: only the mobile tier exports (it runs on the device); "
            f"serve {tier} with `dimee serve --tier {tier}`"
        )
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"quantisation {quantize!r} is not supported; use --quantize {' or '.join(QUANTIZATIONS)}")


def require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install -e '.[onnx]'")


def _check_batch(vocab_size: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows of different lengths (one padded): the trace must see a real mask, never the all-ones shortcut."""
    gen = torch.Generator().manual_seed(0)
    low = min(5, vocab_size - 1)
    ids = torch.randint(low, vocab_size, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = pad_id
    return ids, mask, torch.zeros_like(ids)


def _trace(graph: MobileGraph, example: tuple, inputs: list[str], path: Path) -> None:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    shapes = tuple({0: batch, 1: seq} for _ in inputs)
    exporter_log = logging.getLogger("torch.onnx")  # its notes on optional ops (torchvision) are not the user's
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations
            program = torch.onnx.export(
                graph,
                example[: len(inputs)],
                input_names=inputs,
                output_names=list(OUTPUTS),
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=shapes,
                external_data=False,
                verbose=False,
            )
            program.save(str(path), external_data=False)
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds; the user gets one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ExportError(
            f"the run's encoder ({type(graph.part.layers[0]).__name__} layers) cannot be traced to ONNX: "
            f"{type(err).__name__}: {first}"
        ) from err
    finally:
        exporter_log.setLevel(level)


def _run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _quantize(fp32: Path, int8: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = int8.with_name("mobile.prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # shape inference and graph clean-up, as onnxruntime advises
    quantize_dynamic(str(prepared), str(int8), weight_type=QuantType.QInt8)
    prepared.unlink()


def export_mobile(
    run_dir: str | Path, output_dir: str | Path, quantize: str | None = None, tier: str = "mobile", fmt: str = "onnx"
) -> DeviceSpec:
    """Write the device folder of `run_dir`'s mobile tier to `output_dir` (see the module doc); returns device.json."""
    check_request(tier, fmt, quantize)
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    info = read_run_info(run_dir)
    tokenizer_file = run_dir / "encoder" / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise CheckpointError(f"{run_dir}/encoder has no {TOKENIZER_FILE} (a fast tokenizer); the device needs one")
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / DEVICE_FILE).is_file():
        raise ExportError(f"{output_dir} exists and is not an exported device folder; give an empty or new folder")
    require_onnx()
    config = read_encoder_config(run_dir)
    part = load_tier_part(run_dir, info.plan, "mobile")
    with_types = int(getattr(config, "type_vocab_size", 0) or 0) > 0
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    pad_id = int(getattr(config, "pad_token_id", None) or 0)
    graph = MobileGraph(part, with_types).eval()
    example = _check_batch(int(config.vocab_size), pad_id)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    staging.chmod(0o755)
    try:
        fp32 = staging / (MODEL_FILE if quantize is None else "mobile.fp32.onnx")
        with torch.no_grad():
            _trace(graph, example, inputs, fp32)
            expected = [t.numpy() for t in graph(*example[: len(inputs)])]
        got = _run_onnx(fp32, {name: t.numpy() for name, t in zip(inputs, example)})
        diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got))
        if not diff <= CHECK_TOLERANCE:
            raise ExportError(f"the exported graph differs from the torch model by {diff:.3g} (> {CHECK_TOLERANCE}); not written")
        model = staging / MODEL_FILE
        if quantize == "int8":
            _quantize(fp32, model)
            fp32.unlink()
        shutil.copy2(tokenizer_file, staging / TOKENIZER_FILE)
        for name in (RUN_FILE, POLICY_FILE, TEMPERATURES_FILE):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, staging / name)
        spec = DeviceSpec(
            format_version=DEVICE_FORMAT,
            tier="mobile",
            model_file=MODEL_FILE,
            quantization=quantize,
            inputs=inputs,
            outputs=list(OUTPUTS),
            mobile_end=info.plan.mobile_end,
            num_labels=info.num_labels,
            hidden_size=int(config.hidden_size),
            vocab_size=int(config.vocab_size),
            pad_token_id=pad_id,
            max_tokens=int(info.max_length),
            opset=OPSET,
            exporter=f"torch.onnx.export (dynamo) torch {torch.__version__}",
            model_bytes=model.stat().st_size,
            check_max_abs_diff=None if quantize else diff,
        )
        (staging / DEVICE_FILE).write_text(json.dumps(spec.to_dict(), indent=2))
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            output_dir.rename(old)
            staging.rename(output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return spec


__all__ = ["DeviceSpec", "ExportError", "MobileGraph", "check_request", "export_mobile"]
