"""Run tiers: `serve_tier` runs one in this process (uvicorn); `start_all` starts all three as subprocesses.

`start_all` is what `dimee serve-all` and the end-to-end tests use: three real processes on loopback
ports, wired mobile -> edge -> cloud plus the direct mobile -> cloud link, with one shared token, each started with
`python -m services --tier ... --run-dir ...`, returned once every /readyz answers 200.

The tiers never outlive the process that started them: `stop_signals` turns SIGTERM and SIGHUP (what systemd,
Docker and Kubernetes send) into the KeyboardInterrupt of Ctrl-C, so the `with` block around the group stops
them; and each child gets DIMEE_PARENT_PID and stops itself (`watch_parent`) when that parent is gone, however it
died (SIGKILL, a crash). A watchdog on os.getppid() rather than prctl(PR_SET_PDEATHSIG): the latter fires when
the *thread* that started the child exits, and needs a preexec_fn, which is unsafe in a threaded parent.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from tiers import TIERS

from .app import RequestIdFilter, create_app
from .settings import TierSettings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [rid=%(request_id)s] %(message)s"
#: Settings that differ per tier; start_all passes them on the command line, never inherits them.
_PER_TIER_ENV = frozenset(f"DIMEE_{name}" for name in ("TIER", "RUN_DIR", "PLAN", "NEXT_URL", "CLOUD_URL", "HOST", "PORT"))
#: How often a tier started by start_all checks that its parent is still there.
PARENT_POLL_S = 0.5
#: After asking itself to stop (SIGTERM: uvicorn's graceful shutdown), how long an orphaned tier waits before
#: exiting hard.
ORPHAN_EXIT_S = 10.0
#: Signals that stop `dimee serve-all` and its tiers like Ctrl-C does.
STOP_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGHUP")

log = logging.getLogger("services.launch")


def configure_logging(level: str) -> None:
    """Log lines of the `services` loggers to stderr, each with its request id."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("services")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def serve_tier(settings: TierSettings) -> None:
    """Serve one tier until interrupted (blocking)."""
    import torch
    import uvicorn

    configure_logging(settings.log_level)
    if settings.parent_pid is not None:
        watch_parent(settings.parent_pid)
    torch.set_num_threads(settings.torch_threads)  # per process: tiers sharing a machine share its cores
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.bind_port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        loop="auto",  # uvloop and httptools when installed (uvicorn[standard], a dependency)
        http="auto",
        timeout_graceful_shutdown=5,
        server_header=False,
    )


def watch_parent(parent_pid: int, poll_s: float = PARENT_POLL_S, grace_s: float = ORPHAN_EXIT_S) -> threading.Thread:
    """Stop this process once `parent_pid` is no longer its parent (the parent died and the process was
    re-parented): SIGTERM to itself (uvicorn shuts down gracefully), then a hard exit after `grace_s`."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        log.warning("parent process %d is gone; stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="dimee-parent-watch", daemon=True)
    thread.start()
    return thread


@contextmanager
def stop_signals(signals: tuple[str, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, the first of `signals` raises KeyboardInterrupt (as Ctrl-C does), so that `with` and
    `finally` blocks run (a TierGroup stops its tiers); later ones are ignored while that cleanup runs. Only in
    the main thread (where Python runs signal handlers); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if not fired:
            fired.append(signum)
            raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = {}
    for name in signals:
        number = getattr(signal, name, None)
        if number is not None:
            previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


# ---- all three tiers as subprocesses -------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class TierProcess:
    tier: str
    url: str
    process: subprocess.Popen
    log_path: Path
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class TierGroup:
    """Handle on the three tier processes; `stop()` (or leaving the `with` block) ends them all."""

    processes: dict[str, TierProcess]
    token: str
    log_dir: Path

    @property
    def urls(self) -> dict[str, str]:
        return {tier: proc.url for tier, proc in self.processes.items()}

    @property
    def mobile_url(self) -> str:
        return self.processes["mobile"].url

    def stop(self, tier: str | None = None) -> None:
        """Stop one tier (`tier`), or all of them, mobile first."""
        names = [tier] if tier is not None else list(TIERS)
        for name in names:
            self.processes[name].stop()

    def wait(self, poll_s: float = 0.5) -> int:
        """Block until one tier exits (its exit code) or Ctrl-C (0; SIGTERM and SIGHUP too within
        `stop_signals`); for `dimee serve-all`. Call stop() after."""
        try:
            while True:
                for proc in self.processes.values():
                    code = proc.process.poll()
                    if code is not None:
                        return int(code)
                time.sleep(poll_s)
        except KeyboardInterrupt:
            return 0

    def __enter__(self) -> "TierGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_all(
    run_dir: str | Path,
    base_port: int | None = None,
    host: str = "127.0.0.1",
    token: str | None = None,
    plan: str | None = None,
    env: dict[str, str] | None = None,
    log_dir: str | Path | None = None,
    ready_timeout_s: float = 120.0,
) -> TierGroup:
    """Start cloud, edge and mobile as subprocesses and wait until all three are ready.

    Ports are base_port, +1, +2 (mobile, edge, cloud), or free ports when `base_port` is None. The token
    is generated unless given and reaches the children through their environment (never argv). `env`
    adds DIMEE_* settings for all three (e.g. {"DIMEE_BATCH_WINDOW_MS": "2"}). Each child's output goes to
    `<log_dir>/<tier>.log`.
    """
    token = token or secrets.token_urlsafe(32)
    logs = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="dimee-serve-"))
    logs.mkdir(parents=True, exist_ok=True)
    ports = {tier: (base_port + i if base_port is not None else free_port(host)) for i, tier in enumerate(TIERS)}
    urls = {tier: f"http://{_url_host(host)}:{port}" for tier, port in ports.items()}
    inherited = {k: v for k, v in os.environ.items() if k not in _PER_TIER_ENV}
    child_env = {**inherited, **(env or {}), "DIMEE_HANDOFF_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    child_env["DIMEE_PARENT_PID"] = str(os.getpid())  # the tiers stop themselves if this process dies
    processes: dict[str, TierProcess] = {}
    group = TierGroup(processes, token, logs)
    try:
        for tier in reversed(TIERS):  # cloud first: it has no one to wait for
            command = [
                sys.executable, "-m", "services", "--tier", tier, "--run-dir", str(run_dir),
                "--host", host, "--port", str(ports[tier]),
            ]  # fmt: skip
            if plan:
                command += ["--plan", plan]
            if tier != "cloud":
                command += ["--next-url", urls[TIERS[TIERS.index(tier) + 1]]]
            if tier == "mobile":
                command += ["--cloud-url", urls["cloud"]]  # the direct routes mobile -> cloud
            log_path = logs / f"{tier}.log"
            log_file = open(log_path, "wb")  # noqa: SIM115 - closed by TierProcess.stop
            process = subprocess.Popen(command, env=child_env, stdout=log_file, stderr=subprocess.STDOUT)
            processes[tier] = TierProcess(tier, urls[tier], process, log_path, log_file)
        _wait_ready(group, ready_timeout_s)
    except BaseException:
        group.stop()
        raise
    return group


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _wait_ready(group: TierGroup, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(group.processes)
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while pending:
            for tier, proc in list(pending.items()):
                if not proc.running:
                    raise RuntimeError(
                        f"the {tier} tier exited with code {proc.process.returncode} while starting; its log "
                        f"({proc.log_path}) ends with:\n{proc.log_tail()}"
                    )
                try:
                    if client.get(f"{proc.url}/readyz").status_code == 200:
                        del pending[tier]
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(pending)
                tails = "\n".join(f"--- {t} ---\n{p.log_tail(1500)}" for t, p in pending.items())
                raise TimeoutError(f"tier(s) {names} not ready after {timeout_s:.0f} s; logs:\n{tails}")
            if pending:
                time.sleep(0.1)
