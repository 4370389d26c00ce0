"""Load test of the three services with an outside tool (locust, headless): requests/s and p50 / p99 latency at
1, 8, 32 and 128 concurrent users, for sizing a deployment. Starts the three tiers on loopback (`start_all`, the
run's policy), runs `benchmarks/locustfile.py` once per user count, reads locust's CSV, writes
results/services_load.json and re-renders results/services.md around it.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/load_test.py --run-dir runs/bench-sst2

locust is a bench extra (`pip install -e .[bench]`), not a dependency of the services.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import start_all  # noqa: E402
from services_common import REPO, command_line, loadavg  # noqa: E402


def locust_step(locust: str, url: str, users: int, seconds: float, out: Path) -> dict:
    """One headless locust run at `users` users for `seconds` (stats reset once all users are spawned)."""
    prefix = out / f"u{users}"
    command = [locust, "-f", str(REPO / "benchmarks/locustfile.py"), "--headless", "-u", str(users), "-r", str(users),
               "--run-time", f"{seconds:g}s", "--host", url, "--csv", str(prefix), "--reset-stats", "--only-summary",
               "--loglevel", "WARNING", "--stop-timeout", "10"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    stats = prefix.with_name(prefix.name + "_stats.csv")
    if not stats.exists():
        raise RuntimeError(f"locust wrote no stats (exit {done.returncode}): {done.stderr[-2000:]}")
    with stats.open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    row = rows["Aggregated"]
    return {
        "users": users,
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]),
        "p99_ms": float(row["99%"]),
        "mean_ms": float(row["Average Response Time"]),
        "locust_exit": done.returncode,
        "loadavg_after": loadavg(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=REPO / "runs/bench-sst2")
    p.add_argument("--users", default="1,8,32,128")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per step")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of a warm-up step at 8 users (not reported)")
    p.add_argument("--service-threads", type=int, default=1, help="DIMEE_TORCH_THREADS per service")
    p.add_argument("--out", type=Path, default=REPO / "results/services_load.json")
    p.add_argument("--no-render", action="store_true", help="do not re-render results/services.md")
    args = p.parse_args()
    locust = str(Path(sys.executable).with_name("locust"))
    if not Path(locust).exists():
        sys.exit("load_test: error: locust is not installed; pip install -e .[bench]")
    from importlib.metadata import version  # never `import locust` here: it monkey-patches this process (gevent)

    env = {"DIMEE_TORCH_THREADS": str(args.service_threads), "DIMEE_BATCH_WINDOW_MS": "0",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    out_dir = Path(tempfile.mkdtemp(prefix="dimee-locust-"))
    report = {"command": command_line(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "locust": version("locust"), "seconds_per_step": args.seconds, "warmup_s": args.warmup,
              "settings": env, "loadavg_start": loadavg(), "steps": []}  # fmt: skip
    with start_all(args.run_dir, env=env, ready_timeout_s=180) as group:
        if args.warmup:
            locust_step(locust, group.mobile_url, 8, args.warmup, out_dir / "warmup")
        for users in [int(u) for u in args.users.split(",") if u]:
            step = locust_step(locust, group.mobile_url, users, args.seconds, out_dir)
            report["steps"].append(step)
            print(f"  {users:4d} users: {step['rps']:.1f} requests/s, p50 {step['p50_ms']:.0f} ms, p99 "
                  f"{step['p99_ms']:.0f} ms, {step['failures']} failures of {step['requests']}", flush=True)  # fmt: skip
    report["loadavg_end"] = loadavg()
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", flush=True)
    if not args.no_render and (REPO / "results/services.json").exists():
        from services_report import main as render

        render()
        print("re-rendered results/services.md", flush=True)


if __name__ == "__main__":
    main()
