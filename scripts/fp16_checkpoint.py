"""Move a run's checkpoint through a size-limited channel: round weights to fp16 in place, or rebuild them.

  python scripts/fp16_checkpoint.py round RUN          # fp32 weights -> fp16-rounded fp32 (re-run `dimee eval` after)
  python scripts/fp16_checkpoint.py pack RUN OUT/NAME  # write fp16 weights as OUT/NAME.partNN (15 MB each)
  python scripts/fp16_checkpoint.py unpack OUT/NAME RUN  # join the parts back into RUN's fp32 weight files

Used to bring GPU-trained runs back from the device machine (16 MiB per returned file); rounding first keeps
the cached logits consistent with the weights that come back.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save, save_file

FILES = ("encoder/model.safetensors", "exits.safetensors")
PART = 15 * 1024 * 1024


def round_run(run: Path) -> None:
    for name in FILES:
        tensors = load_file(run / name)
        save_file({k: v.half().float() if v.is_floating_point() else v for k, v in tensors.items()}, run / name, metadata={"format": "pt"})


def pack(run: Path, prefix: Path) -> None:
    blobs = []
    for name in FILES:
        tensors = load_file(run / name)
        data = save({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()})
        blobs.append(len(data).to_bytes(8, "little") + data)
    whole = b"".join(blobs)
    for i in range(0, len(whole), PART):
        Path(f"{prefix}.part{i // PART:02d}").write_bytes(whole[i : i + PART])


def unpack(prefix: Path, run: Path) -> None:
    parts = sorted(prefix.parent.glob(prefix.name + ".part*"))
    stream = io.BytesIO(b"".join(p.read_bytes() for p in parts))
    for name in FILES:
        size = int.from_bytes(stream.read(8), "little")
        tensors = load(stream.read(size))
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, run / name, metadata={"format": "pt"})


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"round": lambda: round_run(Path(args[0])), "pack": lambda: pack(Path(args[0]), Path(args[1])),
     "unpack": lambda: unpack(Path(args[0]), Path(args[1]))}[command]()
