"""`dimee serve-ray` without Ray: the replica spec, the tiers' URLs under one proxy, Ray's YAML, the one-line
refusals (no tier named, a bad count, no run folder, Ray not installed), each exit 2 before anything starts, and
the sending side's resend of a handoff whose replica died (`services.replica_retry`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from dimee.cli import main
from dimee.ray_cli import env_settings
from services.ray_config import (
    INSTALL_HINT,
    MAX_ONGOING_REQUESTS,
    ReplicaSpecError,
    Scaling,
    parse_replicas,
    serve_config,
    tier_fields,
)
from tests.factories import JsonHandler

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    (tmp_path / "run.json").write_text("{}")  # the CLI checks the folder is a run before anything else
    return tmp_path


def test_replica_spec_counts_ranges_and_defaults():
    scaling = parse_replicas(" edge=2 , cloud=1-4")
    assert scaling == {"mobile": Scaling(1, 1), "edge": Scaling(2, 2), "cloud": Scaling(1, 4)}
    assert scaling["edge"].deployment_options() == {"num_replicas": 2, "max_ongoing_requests": MAX_ONGOING_REQUESTS}
    autoscaling = {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1, "target_ongoing_requests": 3}
    assert scaling["cloud"].deployment_options(3, 16) == {"autoscaling_config": autoscaling, "max_ongoing_requests": 16}
    assert parse_replicas("cloud=0-2")["cloud"].deployment_options()["autoscaling_config"]["initial_replicas"] == 1


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "names no tier"),
        (" , ", "names no tier"),
        ("gpu=2", "'gpu=2' names no tier"),
        ("2", "'2' names no tier"),
        ("edge=two", "is not a count"),
        ("edge=0", "at least 1"),
        ("edge=-1", "is not a count"),
        ("edge=3-2", "needs 0 <= MIN <= MAX"),
        ("edge=0-0", "needs 0 <= MIN <= MAX"),
        ("edge=1,edge=2", "names edge twice"),
        ("edge=5000", "exceeds"),
    ],
)
def test_bad_replica_specs_say_why(spec, message):
    with pytest.raises(ReplicaSpecError, match=message):
        parse_replicas(spec)


def test_tiers_reach_each_other_through_the_proxy_prefixes(tmp_path):
    proxy = "http://127.0.0.1:8123"
    mobile, edge, cloud = (tier_fields(t, tmp_path, proxy, "2,4") for t in ("mobile", "edge", "cloud"))
    assert (mobile["next_url"], mobile["cloud_url"]) == (f"{proxy}/edge", f"{proxy}/cloud")
    assert edge["next_url"] == f"{proxy}/cloud" and "cloud_url" not in edge
    assert "next_url" not in cloud and "cloud_url" not in cloud
    assert {mobile["plan"], Path(cloud["run_dir"])} == {"2,4", tmp_path.resolve()}


def test_serve_config_is_rays_schema_without_the_token(tmp_path):
    config = serve_config(
        tmp_path, parse_replicas("edge=2,cloud=1-3"), 8123, replica_cpus=0.5, settings={"batch_window_ms": "2"}
    )
    apps = {app["name"]: app for app in config["applications"]}
    assert [app["name"] for app in config["applications"]] == ["cloud", "edge", "mobile"]
    assert {name: app["route_prefix"] for name, app in apps.items()} == {t: f"/{t}" for t in apps}
    assert all(app["import_path"] == "services.ray_serve:build_app" for app in apps.values())
    assert apps["edge"]["deployments"][0]["num_replicas"] == 2
    assert apps["edge"]["deployments"][0]["max_ongoing_requests"] == MAX_ONGOING_REQUESTS
    assert apps["cloud"]["deployments"][0]["autoscaling_config"]["max_replicas"] == 3
    assert apps["mobile"]["args"]["next_url"] == "http://127.0.0.1:8123/edge"
    assert apps["edge"]["args"]["batch_window_ms"] == "2"
    assert "token" not in yaml.safe_dump(config).lower()
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        return
    ServeDeploySchema.model_validate(config) if hasattr(
        ServeDeploySchema, "model_validate"
    ) else ServeDeploySchema.parse_obj(config)


def test_env_settings_copy_shared_settings_never_the_token_or_per_tier_ones():
    environ = {
        "DIMEE_BATCH_WINDOW_MS": "2",
        "DIMEE_HANDOFF_TOKEN": "secret-secret-secret",
        "DIMEE_NEXT_URL": "http://x",
        "DIMEE_TIER": "edge",
        "OTHER": "1",
    }
    assert env_settings(environ) == {"batch_window_ms": "2"}


@pytest.mark.parametrize(
    "replicas, message",
    [("", "names no tier"), ("tpu=1", "names no tier"), ("edge=1.5", "is not a count"), ("edge=0", "at least 1")],
)
def test_cli_bad_spec_is_one_line_exit_2(run_dir, capsys, replicas, message):
    assert main(["serve-ray", str(run_dir), "--replicas", replicas]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("dimee serve-ray: ")


def test_cli_no_run_folder_is_exit_2(tmp_path, capsys):
    assert main(["serve-ray", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_cli_detach_without_a_cluster_is_exit_2(run_dir, capsys):
    """A local Ray instance ends with the command, so --detach there would tear down what it just deployed."""
    assert main(["serve-ray", str(run_dir), "--detach"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--detach needs a running cluster" in err and len(err.splitlines()) == 1


def test_cli_writes_rays_yaml(run_dir, tmp_path, capsys):
    out = tmp_path / "serve.yaml"
    assert main(["serve-ray", str(run_dir), "--replicas", "edge=2", "--write-config", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    assert [a["deployments"][0]["num_replicas"] for a in config["applications"]] == [1, 2, 1]
    assert "serve deploy" in capsys.readouterr().out


def test_cli_without_ray_names_the_extra(run_dir):
    """In a fresh process where `import ray` fails: one line naming `pip install -e .[ray]`, exit 2."""
    code = (
        "import sys; sys.modules['ray'] = None; sys.modules['ray.serve'] = None\n"
        "from dimee.cli import main\n"
        f"sys.exit(main(['serve-ray', {str(run_dir)!r}, '--replicas', 'edge=2']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"dimee serve-ray: {INSTALL_HINT}"
    assert "pip install -e .[ray]" in INSTALL_HINT


# ---- the sending side under a proxy: a handoff whose replica died is resent once --------------------------------
class _FlakyTier(JsonHandler):
    """Answers each POST with the next of `script` (status, body); GET always with 500 from the 'proxy'."""

    script: ClassVar[list[tuple[int, bytes]]] = []
    posts = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts += 1
        status, body = type(self).script.pop(0)
        self._reply(status, body)

    def do_GET(self):
        self._reply(500, b"Internal Server Error")


@pytest.fixture()
def flaky():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyTier)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FlakyTier.posts = 0
    yield f"http://127.0.0.1:{server.server_address[1]}", _FlakyTier
    server.shutdown()
    server.server_close()


def _post(url: str, timeout_s: float = 5.0, resends: list | None = None) -> tuple[int, bytes]:
    from services.replica_retry import ReplicaRetryClient

    async def go():
        client = ReplicaRetryClient(timeout_s, 1.0, None if resends is None else resends.append)
        try:
            return await client.request(
                "POST", f"{url}/v1/handoff", timeout_s, data=b"body", headers={"X-Request-ID": "r1"}
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_proxy_5xx_is_resent_once(flaky):
    url, tier = flaky
    resends: list[str] = []
    tier.script = [(500, b"Internal Server Error"), (200, b'{"ok": true}')]
    assert _post(url, resends=resends) == (200, b'{"ok": true}') and tier.posts == 2
    tier.script = [(503, b"no replica"), (502, b"still none")]
    assert _post(url, resends=resends) == (502, b"still none") and tier.posts == 4  # once, not more
    assert resends == ["status_500", "status_503"]


def test_a_tiers_own_error_and_probes_are_not_resent(flaky):
    url, tier = flaky
    own = b'{"detail": "internal error", "request_id": "r1"}'
    tier.script = [(500, own)]
    assert _post(url) == (500, own) and tier.posts == 1
    tier.script = [(422, b"nope")]
    assert _post(url)[0] == 422 and tier.posts == 2

    from services.replica_retry import ReplicaRetryClient

    async def probe():
        client = ReplicaRetryClient(2.0, 1.0)
        try:
            return await client.probe(f"{url}/healthz", 2.0)
        finally:
            await client.aclose()

    assert asyncio.run(probe()) == "next_tier_error" and tier.posts == 2
