"""`dimee serve-all` stops its three tiers on SIGTERM and SIGHUP (not only Ctrl-C), and a tier started for a
parent stops itself when that parent dies (SIGKILL), so no tier is left orphaned, answering on its port.

Real processes on free loopback ports with a tiny random-init run (services marker: one serve-all start takes
~10-40 s on a small busy machine)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.launch import free_port
from tests.factories import tiny_run_folder

pytestmark = pytest.mark.services
START_TIMEOUT_S = 150
STOP_WITHIN_S = 8.0  # SIGTERM -> uvicorn's graceful shutdown of an idle tier: about a second


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run_folder(tmp_path_factory.mktemp("run"))


def _three_free_ports() -> int:
    """A base port with base, +1, +2 all free right now."""
    for _ in range(50):
        base = free_port()
        if base + 2 > 65535:
            continue
        try:
            for port in (base + 1, base + 2):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no three consecutive free ports")


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(ports: list[int], process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not all(_answers(port) for port in ports):
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} while starting:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_down(ports: list[int], pids: list[int], within_s: float) -> float:
    start = time.monotonic()
    while any(_answers(port) for port in ports) or any(_alive(pid) for pid in pids):
        if time.monotonic() - start > within_s:
            still = [port for port in ports if _answers(port)]
            pytest.fail(f"ports {still} still answer / pids {[p for p in pids if _alive(p)]} alive after {within_s} s")
        time.sleep(0.1)
    return time.monotonic() - start


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_serve_all_stops_its_tiers_on_sigterm(run_dir, tmp_path):
    base = _three_free_ports()
    ports = [base, base + 1, base + 2]
    log = tmp_path / "serve-all.out"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dimee", "serve-all", str(run_dir), "--base-port", str(base),
             "--log-dir", str(tmp_path / "logs")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    tiers: list[int] = []
    try:
        _wait_ready(ports, process, log)
        deadline = time.monotonic() + 10
        while len(tiers) < 3 and time.monotonic() < deadline:  # the ports answer a moment before "serving"
            tiers = _children(process.pid)
            time.sleep(0.1)
        assert len(tiers) == 3, tiers
        for pid in tiers:  # and each would stop itself if serve-all were killed outright
            assert f"DIMEE_PARENT_PID={process.pid}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        process.send_signal(signal.SIGTERM)
        _wait_down(ports, tiers, STOP_WITHIN_S)
        assert process.wait(STOP_WITHIN_S) == 0
    finally:
        _kill_all([process.pid, *tiers])
    output = log.read_text()
    assert "stopping" in output and "Traceback" not in output, output[-3000:]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_tier_stops_itself_when_its_parent_is_killed(run_dir, tmp_path):
    """One tier under a parent that is SIGKILLed (no cleanup of its own): the tier sees it gone and stops."""
    port = free_port()
    child_log = tmp_path / "cloud.log"
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"log = open({str(child_log)!r}, 'wb')\n"
        f"cmd = [sys.executable, '-m', 'services', '--tier', 'cloud', '--run-dir', {str(run_dir)!r}]\n"
        f"cmd += ['--port', '{port}']\n"
        "env = {**os.environ, 'DIMEE_HANDOFF_TOKEN': 'signals-test-token-0123456789'}\n"
        "env['DIMEE_PARENT_PID'] = str(os.getpid())\n"
        "child = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    tier = 0
    try:
        tier = int(parent.stdout.readline())
        _wait_ready([port], parent, child_log)
        parent.kill()
        parent.wait(5)
        _wait_down([port], [tier], STOP_WITHIN_S)
    finally:
        _kill_all([parent.pid, tier] if tier else [parent.pid])
        parent.stdout.close()
    assert "parent process" in child_log.read_text()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_stop_signals_turn_sigterm_and_sighup_into_ctrl_c(name):
    from services.launch import stop_signals

    number = getattr(signal, name)
    before = signal.getsignal(number)
    with pytest.raises(KeyboardInterrupt, match=name):
        with stop_signals():
            os.kill(os.getpid(), number)
            time.sleep(1)  # the handler runs between bytecodes; never reached
    assert signal.getsignal(number) == before
    with stop_signals():  # a second signal while the first one's cleanup runs is ignored
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), number)
            time.sleep(1)
        os.kill(os.getpid(), number)
        time.sleep(0.05)
