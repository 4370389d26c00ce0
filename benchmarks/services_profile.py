"""Where one three-tier request spends its CPU: py-spy samples the three tier processes while sequential requests
take the linear route (mobile 1..m -> edge m+1..e -> cloud e+1..L, hidden states on both hops), and the samples
are folded into per-function self and inclusive shares, per tier.

Used by `benchmarks/services_bench.py` (its profile phase); alone:

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/services_profile.py --run-dir runs/bench-sst2 --requests 300

py-spy samples without instrumenting (the request path runs at full speed): every thread it does not find idle
(waits it cannot tell from work, such as an event loop or a worker thread about to sleep, count too), or with
`gil=True` only the thread holding the GIL (busy Python; torch kernels that release the GIL are under-counted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services_common import FastClient  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: every sample goes mobile -> edge -> cloud as hidden states (the built-in rule never confident enough)
LINEAR_ENV = {"DIMEE_POLICY": "threshold", "DIMEE_THRESHOLD": "1"}


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


#: frames every sample of a thread passes through (thread and event-loop plumbing): left out of the inclusive list
_PLUMBING = ("(threading.py)", "(concurrent/futures/thread.py)", "(asyncio/runners.py)", "(asyncio/events.py)",
             "(asyncio/base_events.py)", "(uvicorn/main.py)", "(uvicorn/server.py)", "<module> (", "(runpy.py)",
             "(services/__main__.py)", "(services/launch.py)", "(torch/utils/_contextlib.py)",
             "Module._wrapped_call_impl", "Module._call_impl")  # fmt: skip


#: where a sample's time goes: the innermost frame matching one of these decides (checked in this order per frame)
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("handoff codec", ("(tiers/codec.py)", "(tiers/channel.py)")),
    ("tokenizer", ("(tokenizers/", "tokenization_utils")),
    ("forward pass (torch, the tier's layers and exits)", ("(torch/", "(transformers/", "(tiers/", "(services/engine.py)")),
    ("pydantic and JSON", ("(pydantic", "(json/", "(fastapi/encoders.py)", "(services/schemas.py)")),
    ("HTTP client (aiohttp between tiers)", ("(aiohttp/", "(multidict/", "(yarl/", "(httpx/", "(httpcore/")),
    ("HTTP server (uvicorn, starlette, fastapi)", ("(uvicorn/protocols/", "(starlette/", "(fastapi/")),
    ("anyio (sockets and thread calls)", ("(anyio/",)),
    ("thread hand-offs (executor, futures)", ("(concurrent/futures/", "(asyncio/futures.py)", "(asyncio/threads.py)",
                                              "(threading.py)", "(queue.py)")),
    ("metrics (prometheus_client)", ("(prometheus_client/",)),
    ("event loop (uvloop, asyncio)", ("(asyncio/", "(uvloop/")),
    ("the tier's own code (services/)", ("(services/",)),
)  # fmt: skip


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, patterns in CATEGORIES:
            if any(p in frame for p in patterns):
                return name
    return "other"


def fold(raw_path: Path, top: int) -> dict:
    """Per-function self and inclusive sample shares of a py-spy raw (collapsed stacks) file, and the shares of
    `CATEGORIES`."""
    categories: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        total += count
        categories[_category(frames)] += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    share = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "categories": [(name, share(n)) for name, n in categories.most_common()],
        "self": [(name, share(n)) for name, n in own.most_common(top)],
        "inclusive": [
            (name, share(n)) for name, n in inclusive.most_common() if not any(p in name for p in _PLUMBING)
        ][:top],
    }


def _short(frame: str) -> str:
    """'handoff (services/app.py:321)' -> 'handoff (services/app.py)'; site-packages paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = os.path.relpath(path, REPO) if path.startswith(str(REPO)) else path
    return f"{name} ({path})"


def profile_group(group, texts: list[str], requests: int, rate: int = 200, top: int = 12, gil: bool = False) -> dict:
    """Sample the three tiers of `group` (services.launch.TierGroup) while `requests` sequential one-text requests
    are answered; returns the folded profile per tier and the request count and rate. `gil`: only samples of the
    thread holding the GIL (busy Python), else every thread py-spy does not find idle."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    out_dir = Path(tempfile.mkdtemp(prefix="dimee-profile-"))
    samplers = {}
    for tier, proc in group.processes.items():
        raw = out_dir / f"{tier}.txt"
        command = [spy, "record", "--pid", str(proc.process.pid), "--rate", str(rate), "--format", "raw",
                   "--output", str(raw), "--nonblocking", *(["--gil"] if gil else [])]  # fmt: skip
        samplers[tier] = (subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), raw)
    time.sleep(1.0)  # py-spy attaches
    start = time.perf_counter()
    sent = 0
    with FastClient(60) as client:
        for i in range(requests):
            client.post_json(f"{group.mobile_url}/v1/classify", {"texts": [texts[i % len(texts)]]})
            sent += 1
    elapsed = time.perf_counter() - start
    out: dict = {"requests": sent, "seconds": elapsed, "rate_hz": rate, "gil": gil, "tiers": {}}
    for tier, (sampler, raw) in samplers.items():
        sampler.send_signal(2)  # SIGINT: py-spy writes its file and exits
        try:
            _, err = sampler.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            sampler.kill()
            _, err = sampler.communicate()
        if not raw.exists():
            out["tiers"][tier] = {"error": (err or b"").decode(errors="replace")[-500:]}
            continue
        out["tiers"][tier] = fold(raw, top)
    return out


def render(profile: dict) -> list[str]:
    """Markdown: per tier, the top functions by own samples and by inclusive samples."""
    if "error" in profile:
        return [f"Profile not taken: {profile['error']}."]
    what = (
        "samples of the thread holding the GIL (`py-spy --gil`: busy Python; torch kernels that release the GIL "
        "are under-counted)"
        if profile.get("gil")
        else "non-idle samples of every thread (py-spy's default; some waits count as busy)"
    )
    lines = [
        f"py-spy record --nonblocking, {profile['rate_hz']} Hz, {profile['requests']} sequential one-text requests on "
        f"the linear route in {profile['seconds']:.1f} s; shares of each process's {what}.",
        "",
    ]
    tiers = [t for t in ("mobile", "edge", "cloud") if t in profile["tiers"] and "error" not in profile["tiers"][t]]
    names = [name for name, _ in CATEGORIES] + ["other"]
    shares = {t: dict(profile["tiers"][t]["categories"]) for t in tiers}
    lines += ["| where the CPU time goes | " + " | ".join(f"{t} %" for t in tiers) + " |",
              "|---|" + "---|" * len(tiers)]  # fmt: skip
    for name in names:
        if any(shares[t].get(name) for t in tiers):
            lines.append(f"| {name} | " + " | ".join(f"{shares[t].get(name, 0.0):.1f}" for t in tiers) + " |")
    lines.append("| samples | " + " | ".join(str(profile["tiers"][t]["samples"]) for t in tiers) + " |")
    lines.append("")
    for tier in tiers:
        folded = profile["tiers"][tier]
        lines += [f"Top functions by own samples, {tier}: "
                  + "; ".join(f"`{name}` {value}%" for name, value in folded["self"][:8]) + ".", ""]  # fmt: skip
    for tier, folded in profile["tiers"].items():
        if "error" in folded:
            lines += [f"{tier}: py-spy failed ({folded['error'][:200]})", ""]
    return lines


def main() -> None:
    from services import start_all

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=REPO / "runs/bench-sst2")
    p.add_argument("--data", type=Path, default=Path("/work/shared/glue/sst2/validation.jsonl"))
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    p.add_argument("--out", type=Path, default=None, help="write the folded profile as JSON here")
    args = p.parse_args()
    texts = [json.loads(line)["sentence"] for line in args.data.read_text().splitlines()[: args.requests] if line]
    env = {**LINEAR_ENV, "DIMEE_BATCH_WINDOW_MS": "0", "DIMEE_TORCH_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with start_all(args.run_dir, env=env, ready_timeout_s=180) as group:
        with httpx.Client(timeout=60, trust_env=False) as client:
            for text in texts[: args.warmup]:
                client.post(f"{group.mobile_url}/v1/classify", json={"texts": [text]}).raise_for_status()
        profile = profile_group(group, texts, args.requests, gil=args.gil)
    if args.out:
        args.out.write_text(json.dumps(profile, indent=2) + "\n")
    print("\n".join(render(profile)))


if __name__ == "__main__":
    main()
