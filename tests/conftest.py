import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIMCORE = [sys.executable, "-m", "simcore"]


@pytest.fixture
def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_script_on_devices(script: str, cli_env: dict, n_devices: int = 4, timeout: int = 600) -> dict:
    """Run ``script`` in a fresh interpreter with ``n_devices`` CPU devices; it prints one JSON line last."""
    import json
    import subprocess

    env = dict(cli_env, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def kill_when(proc, ready, *, timeout: float, what: str, settle: float = 0.0, poll: float = 0.02) -> None:
    """SIGKILL ``proc`` once ``ready()`` holds (then ``settle`` seconds later); fail if it exits or ``timeout``
    passes first. Returns after the process has died."""
    import signal
    import time

    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, what
            time.sleep(poll)
        time.sleep(settle)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
