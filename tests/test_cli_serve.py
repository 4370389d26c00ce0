"""`dimee serve` passes every option to the service's own parser (the README's one-tier command)."""

from __future__ import annotations

import subprocess
import sys


def _dimee(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dimee", *args], capture_output=True, text=True, timeout=120)


def test_serve_help_lists_the_service_options():
    done = _dimee("serve", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--tier", "--run-dir", "--next-url", "--cloud-url", "--port"):
        assert option in done.stdout


def test_serve_options_reach_the_service():
    done = _dimee("serve", "--tier", "edge", "--run-dir", "/nonexistent-run", "--port", "8799")
    assert "unrecognized arguments" not in done.stderr
    assert done.returncode != 0 and "Traceback" not in done.stderr
