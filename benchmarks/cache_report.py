"""What the benchmarks that read the committed logit caches share: the command line they record and how they
write their results (``<out>.json`` with the command and elapsed time, ``<out>.md`` headed by both)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Sequence


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run: ``OMP_NUM_THREADS=1 .venv/bin/python <script> <args>``."""
    args = sys.argv[1:] if argv is None else argv
    return f"OMP_NUM_THREADS=1 .venv/bin/python {script} {' '.join(shlex.quote(a) for a in args)}".strip()


def write_results(out: Path, data: dict, title: str, intro: str, body: Sequence[str]) -> Path:
    """Write ``out.json`` (`data`, which holds 'command' and 'seconds') and ``out.md``: the title, the command
    with its time, the intro paragraph, then `body` (lines). Returns the Markdown path."""
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    header = [
        f"# {title}",
        "",
        f"Command: `{data['command']}` ({data['seconds']} s on this machine's CPU, from the committed caches).",
        "",
        intro,
        "",
    ]
    path = out.with_suffix(".md")
    path.write_text("\n".join([*header, *body]))
    print(f"wrote {path} ({data['seconds']} s)")
    return path
