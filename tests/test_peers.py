"""The peers harness (benchmarks/peers) refuses to run without a peer's own environment, by name."""
import os
import stat
import sys

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
