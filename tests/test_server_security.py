"""Security of the dashboard server: token on mutating calls, confinement to the runs directory,
request-size limit, input validation, cross-origin and Host checks.

Paths with ``..`` are sent raw over a socket so no client library normalises them first.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import httpx
import pytest

from server.app import ServerConfig, create_app
from server.testing import ServerThread, make_run_dir

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec")
    runs = root / "runs"
    runs.mkdir()
    make_run_dir(runs)
    (root / "secret.txt").write_text("top secret")
    (runs / "secret.txt").write_text("not a run")  # a file next to the runs is no run either
    outside = root / "outside-run"
    make_run_dir(root, "outside-run")
    (runs / "linked-run").symlink_to(outside, target_is_directory=True)  # a run id that escapes via a symlink
    (runs / "past-run" / "escape.txt").symlink_to(root / "secret.txt")  # a file that escapes via a symlink
    return root, runs


@pytest.fixture(scope="module")
def exposed(layout):
    """Configured as if bound to 0.0.0.0 (token required); actually listening on 127.0.0.1 for the test."""
    _, runs = layout
    cfg = ServerConfig(runs_dir=runs, host="0.0.0.0", token=TOKEN, max_upload_bytes=64 * 1024, max_runs=0)
    with ServerThread(create_app(cfg)) as srv:
        yield srv


@pytest.fixture(scope="module")
def local(layout):
    _, runs = layout
    with ServerThread(create_app(ServerConfig(runs_dir=runs, max_upload_bytes=64 * 1024))) as srv:
        yield srv


def raw_get(srv, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """One HTTP/1.1 GET with the path exactly as given."""
    head = {"Host": f"127.0.0.1:{srv.port}", "Connection": "close", **(headers or {})}
    req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(req.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_refuses_to_bind_elsewhere_without_a_token(tmp_path):
    for host in ("0.0.0.0", "192.168.1.10", "example.org", "::"):
        with pytest.raises(ValueError, match="without a token"):
            create_app(ServerConfig(runs_dir=tmp_path, host=host))
    create_app(ServerConfig(runs_dir=tmp_path, host="0.0.0.0", token=TOKEN))  # fine with one
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        create_app(ServerConfig(runs_dir=tmp_path, host=host))
    res = subprocess.run([sys.executable, "-m", "simcore", "serve", "--host", "0.0.0.0", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in __import__("os").environ.items() if k != "SIMCORE_TOKEN"})
    assert res.returncode == 2 and res.stderr.startswith("error: --token: refusing to bind '0.0.0.0'")


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/runs", {"scenario": "covid_small"}),
    ("POST", "/api/scenarios/validate", {"scenario": "covid_small"}),
    ("POST", "/api/runs/past-run/pause", None),
    ("POST", "/api/runs/past-run/resume", None),
    ("POST", "/api/runs/past-run/step", None),
    ("POST", "/api/runs/past-run/stop", None),
    ("POST", "/api/runs/past-run/interventions", {"param": "lockdown", "value": 1}),
    ("DELETE", "/api/runs/past-run", None),
    ("PUT", "/api/runs", {}),
])
def test_mutating_calls_need_the_token_when_exposed(exposed, method, path, body):
    with httpx.Client(base_url=exposed.url, timeout=30) as c:
        assert c.request(method, path, json=body).status_code == 401
        r = c.request(method, path, json=body, headers={"Authorization": "Bearer wrong-token-123"})
        assert r.status_code == 403
        r = c.request(method, path, json=body, headers={"X-Simcore-Token": "wrong-token-123"})
        assert r.status_code == 403
        ok = c.request(method, path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code not in (401, 403), ok.text  # past the guard (then 200/404/405/409/429 by the route)


def test_token_opens_the_door_and_reads_stay_open(exposed):
    with httpx.Client(base_url=exposed.url, timeout=30) as c:
        assert c.get("/api/info").json()["auth_required"] is True
        assert c.get("/api/runs").status_code == 200
        assert c.get("/api/runs/past-run/metrics").json()["columns"]["S"] == [10, 9, 8]
        r = c.post("/api/scenarios/validate", json={"scenario": "covid_small"},
                   headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["agents"] == 50_000
        r = c.post("/api/runs", json={"scenario": "covid_small"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 429  # max_runs=0: validated, then refused by the concurrency limit


@pytest.mark.parametrize("path", [
    "/api/runs/../secret.txt",
    "/api/runs/../../secret.txt/metrics",
    "/api/runs/%2e%2e/files/secret.txt",
    "/api/runs/..%2Fsecret.txt/files/x",
    "/api/runs/..%2F..%2Fetc/files/passwd",
    "/api/runs/past-run/files/../manifest.json",
    "/api/runs/past-run/files/../../secret.txt",
    "/api/runs/past-run/files/..%2F..%2Fsecret.txt",
    "/api/runs/past-run/files/%2e%2e/%2e%2e/secret.txt",
    "/api/runs/past-run/files//etc/passwd",
    "/api/runs/past-run/files/%2Fetc%2Fpasswd",
    "/api/runs/past-run/files/escape.txt",
    "/api/runs/past-run/files/.",
    "/api/runs/past-run/files/agents/../../past-run/manifest.json",
    "/api/runs/linked-run",
    "/api/runs/linked-run/files/manifest.json",
    "/api/runs/secret.txt",
    "/api/runs/./files/past-run/manifest.json",
    "/api/runs/.",
])
def test_paths_stay_inside_the_runs_directory(local, path):
    status, body = raw_get(local, path)
    assert status == 404, (path, status, body[:200])
    assert b"top secret" not in body and b"root:" not in body


def test_legit_download_still_works(local):
    status, body = raw_get(local, "/api/runs/past-run/files/manifest.json")
    assert status == 200 and json.loads(body)["status"] == "completed"


def test_oversized_uploads_get_413(local):
    big = "name: x\n# " + "x" * (70 * 1024) + "\n"
    with httpx.Client(base_url=local.url, timeout=30) as c:
        r = c.post("/api/scenarios/validate", json={"yaml": big})
        assert r.status_code == 413
        r = c.post("/api/runs", json={"yaml": big})
        assert r.status_code == 413

        def chunked():  # no Content-Length: counted as it streams in
            yield b'{"yaml": "'
            for _ in range(80):
                yield b"x" * 1024
            yield b'"}'

        r = c.post("/api/scenarios/validate", content=chunked(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert c.post("/api/scenarios/validate", json={"yaml": "name: x"}).status_code == 422  # small: validated


def test_malformed_scenarios_give_422_with_the_field(local):
    with httpx.Client(base_url=local.url, timeout=30) as c:
        r = c.post("/api/scenarios/validate", json={"yaml": "name: x\npopulation:\n  kind: nyc\n  size: -5\n"
                                                            "model: {kind: epidemic}\nrun: {steps: 10}\n"})
        assert r.status_code == 422
        assert r.json() == {"field": "population.size", "reason": "must be > 0, got -5",
                            "detail": "population.size: must be > 0, got -5"}
        r = c.post("/api/scenarios/validate", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "field" in r.json()
        r = c.post("/api/scenarios/validate", json={"yaml": "!!python/object/apply:os.system ['echo pwned']"})
        assert r.status_code == 422 and r.json()["field"] == "scenario"  # safe loader: tags are errors, never run


def test_cross_origin_posts_and_foreign_hosts_are_refused(local):
    with httpx.Client(base_url=local.url, timeout=30) as c:
        r = c.post("/api/scenarios/validate", json={"scenario": "covid_small"},
                   headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = c.post("/api/scenarios/validate", json={"scenario": "covid_small"}, headers={"Origin": local.url})
        assert r.status_code == 200
        # DNS rebinding: a loopback server answers only to loopback names
        assert c.get("/api/info", headers={"Host": "evil.example"}).status_code == 400
        assert c.get("/api/info", headers={"Host": f"localhost:{local.port}"}).status_code == 200


def test_simcore_serve_cli_reads_the_token_from_the_environment(tmp_path):
    """`simcore serve` end to end: loopback by default, $SIMCORE_TOKEN enforced, clean exit on SIGINT."""
    import os
    import signal
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SIMCORE_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "simcore", "serve", "--port", str(port), "--runs-dir",
                             str(tmp_path / "runs"), "--max-runs", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                info = httpx.get(f"{url}/api/info", timeout=5).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert info["auth_required"] is True and info["max_runs"] == 2
        assert httpx.post(f"{url}/api/scenarios/validate", json={"scenario": "covid_small"}).status_code == 401
        r = httpx.post(f"{url}/api/scenarios/validate", json={"scenario": "covid_small"},
                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        assert 'src="/static/vendor/plotly.min.js"' in httpx.get(f"{url}/").text  # no CDN
        js = httpx.get(f"{url}/static/vendor/plotly.min.js")
        assert js.status_code == 200 and len(js.content) > 1_000_000  # the bundle, served locally
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in out
