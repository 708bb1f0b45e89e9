"""The peers harness (benchmarks/peers) refuses to run without a peer's own environment, by name."""
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import peers


def test_missing_environment_is_named_and_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SIMCORE_PEERS_DIR", str(tmp_path))
    (tmp_path / "mesa" / "bin").mkdir(parents=True)  # half-made: no READY file
    assert peers.main(["--peers", "agenttorch,mesa"]) == 2
    err = capsys.readouterr().err
    assert "peer environment 'agenttorch' is missing" in err and "setup.sh agenttorch" in err
    assert "peer environment 'mesa' is missing" in err and str(tmp_path / "mesa" / "READY") in err


def test_unknown_peer_is_refused(capsys):
    assert peers.main(["--peers", "netlogo"]) == 2
    assert "--peers: unknown peer 'netlogo'" in capsys.readouterr().err


def test_worker_failure_raises_with_the_peer_name(tmp_path, monkeypatch):
    env = tmp_path / "agenttorch"
    (env / "bin").mkdir(parents=True)
    py = env / "bin" / "python"
    py.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import agent_torch_not_here' \"$@\"\n")
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    (env / "READY").write_text("")
    monkeypatch.setenv("SIMCORE_PEERS_DIR", str(tmp_path))
    assert peers.peer_python("agenttorch") == py
    with pytest.raises(RuntimeError, match=r"(?s)agenttorch worker failed \(exit 1\).*agent_torch_not_here"):
        peers.run_worker("agenttorch", ["--graph", os.devnull], timeout=60)


def test_missing_mesaframes_environment_stops_the_run_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SIMCORE_PEERS_DIR", str(tmp_path))
    mesa = tmp_path / "mesa"
    (mesa / "bin").mkdir(parents=True)
    (mesa / "bin" / "python").write_text("")
    (mesa / "READY").write_text("mesa==3.3.1\n")  # mesa is ready, mesaframes was never made
    assert peers.main(["--peers", "mesa,mesaframes", "--sizes", "1000"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: peer environment 'mesaframes' is missing ({tmp_path / 'mesaframes' / 'READY'} "
                                "not found); create it with: benchmarks/peers/setup.sh mesaframes"]
    assert out == ""  # nothing measured


def test_setup_script_builds_every_peer_the_harness_runs(tmp_path):
    script = Path(peers.__file__).parent / "setup.sh"
    proc = subprocess.run(["bash", str(script), "no-such-peer"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SIMCORE_PEERS_DIR": str(tmp_path)})
    assert proc.returncode == 1
    known = re.search(r"unknown peer 'no-such-peer' \(known: ([^)]*)\)", proc.stderr)
    assert known is not None, proc.stderr
    assert known.group(1).split() == list(peers.PEERS)
    assert set(peers.WORKERS) == set(peers.PEERS)
    assert all((script.parent / w).is_file() for w in peers.WORKERS.values())
    assert list(tmp_path.iterdir()) == []  # no environment made for an unknown name
