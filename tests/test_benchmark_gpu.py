"""benchmarks/gpu.py --quick on CPU: the figures it writes are real and consistent with each other."""
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import ROOT

CAP = 20_000


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_gpu")
    out, prof = tmp / "gpu.json", tmp / "trace"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--quick", "--json", str(out), "--profile", str(prof),
           "--max-agents-search", "--max-agents", str(CAP)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    res["_stdout"] = proc.stdout
    return res


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_device_and_copy_bandwidth(result):
    d, bw = result["device"], result["copy_bandwidth"]
    assert d["backend"] == "cpu" and d["device_kind"]
    assert bw["bytes_moved"] == 2 * bw["array_bytes"]
    assert bw["bytes_xla"] == bw["bytes_moved"]  # XLA's own count of x + 1 agrees with read + write
    assert positive(bw["bytes_per_s"])
    assert bw["bytes_per_s"] == pytest.approx(bw["bytes_moved"] / bw["best_s"])
    assert 1e8 < bw["bytes_per_s"] < 1e13  # between a floppy-slow and an impossibly fast memory system


def test_seir_dense_figures_consistent(result):
    bw = result["copy_bandwidth"]["bytes_per_s"]
    assert result["seir"]
    for r in result["seir"]:
        d, n = r["dense"], r["n_agents"]
        ms, edges, stored = d["ms_per_step"], d["edges_directed"], d["stored_entries"]
        assert positive(ms) and d["steps_timed"] > 0
        assert d["agent_steps_per_s"] == pytest.approx(n * 1e3 / ms, rel=1e-9)
        assert d["edges_per_s"] == pytest.approx(edges * 1e3 / ms, rel=1e-9)
        assert edges == pytest.approx(10 * n, rel=0.05)  # Erdos-Renyi, mean degree 10
        assert stored >= edges and stored % 128 == 0
        assert d["bytes_per_step_model"] == 12 * stored + 10 * n
        assert d["bytes_per_step_compulsory"] == 8 * stored + 2 * n
        # XLA must at least count reading the edge arrays and the state; its count is not wildly off the model
        assert d["bytes_per_step_compulsory"] < d["bytes_per_step_xla"] < 5 * d["bytes_per_step_model"]
        for k in ("xla", "model", "compulsory"):
            assert d[f"bytes_per_s_{k}"] == pytest.approx(d[f"bytes_per_step_{k}"] * 1e3 / ms)
            assert d[f"roofline_fraction_{k}"] == pytest.approx(d[f"bytes_per_s_{k}"] / bw)
            assert 0 < d[f"roofline_fraction_{k}"] < 5


def test_seir_epidemic_ran(result):
    for r in result["seir"]:
        e = r["epidemic"]
        assert positive(e["ms_per_step"])
        assert e["agent_steps_per_s"] == pytest.approx(r["n_agents"] * 1e3 / e["ms_per_step"], rel=1e-9)
        assert 0.3 < e["attack_rate"] < 1.0  # R0 ~ 2.2: most agents get infected
        # XLA costs a lax.switch as its most expensive branch: at least the dense pull
        assert e["bytes_per_step_xla_max_branch"] >= r["dense"]["bytes_per_step_xla"]


def test_social(result):
    assert result["social"]
    for s in result["social"]:
        assert positive(s["ms_per_step"])
        assert s["user_steps_per_s"] == pytest.approx(s["users"] * 1e3 / s["ms_per_step"], rel=1e-9)
        assert s["active_share"] == pytest.approx(0.1, rel=0.3)


def test_profile_top_ops(result):
    p = result["profile"]
    assert p["trace_files"] and p["top"]
    assert all(positive(o["self_ms"]) and o["calls"] > 0 for o in p["top"])
    assert sum(o["share"] for o in p["top"]) <= 1.0 + 1e-9
    assert [o["self_ms"] for o in p["top"]] == sorted((o["self_ms"] for o in p["top"]), reverse=True)
    # the neighbour sum (gather + scatter-add) is among the top ops of a dense SEIR step
    assert any("neighbor_sum" in (o["source"] or "") for o in p["top"][:5])


def test_max_agents_capped_on_cpu(result):
    m = result["max_agents"]
    assert m["agents_reached"] == CAP and m["limited_by"].startswith("cap")
    assert m["predicted_max_agents"] > CAP and positive(m["predicted_bytes_per_agent"])
    d = m["run"]["dense"]
    assert d["n_agents"] == CAP
    assert d["agent_steps_per_s"] == pytest.approx(CAP * 1e3 / d["ms_per_step"], rel=1e-9)


def test_targets_table(result):
    rows = {t["figure"].split(",")[0]: t for t in result["targets"]}
    assert any(f.startswith("network SEIR agent-steps/s") for f in rows)
    for t in result["targets"]:
        assert t["ratio"] == pytest.approx(t["value"] / t["target"])
    assert "| target | value | target | value / target |" in result["_stdout"]


def _write_trace(root, events):
    import gzip
    run = root / "plugins" / "profile" / "2026_01_01_00_00_00"
    run.mkdir(parents=True)
    with gzip.open(run / "host.trace.json.gz", "wt") as f:
        json.dump({"displayTimeUnit": "ns", "metadata": {}, "traceEvents": events}, f)


def _meta(pid, tid, process, thread):
    return [{"ph": "M", "pid": pid, "name": "process_name", "args": {"name": process}},
            {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": thread}}]


def _op(pid, tid, ts, dur, name, hlo=True):
    e = {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}
    if hlo:
        e["args"] = {"hlo_module": "jit__chunk", "hlo_op": name}
    return e


def test_top_ops_cpu_trace_self_time(tmp_path):
    from benchmarks.gpu import top_ops

    # a while loop holding two ops, executor bookkeeping around it (no hlo_op), a python frame
    events = _meta(1, 10, "/host:CPU", "tf_XLAEigen/1") + _meta(1, 11, "/host:CPU", "python") + [
        _op(1, 10, 0, 100, "ThunkExecutor::Execute", hlo=False),
        _op(1, 10, 0, 100, "while.1"), _op(1, 10, 10, 50, "gather_fusion"), _op(1, 10, 60, 30, "scatter"),
        _op(1, 10, 200, 20, "gather_fusion"), _op(1, 11, 0, 999, "$runner.py advance", hlo=False),
    ]
    _write_trace(tmp_path, events)
    r = top_ops(tmp_path, 10)
    got = {o["op"]: (o["self_ms"] * 1e3, o["calls"]) for o in r["top"]}
    assert got == {"gather_fusion": (70, 2), "scatter": (30, 1), "while.1": (20, 1)}
    assert r["top"][0]["op"] == "gather_fusion" and r["top"][0]["share"] == pytest.approx(70 / 120)


def test_top_ops_gpu_trace_uses_one_line(tmp_path):
    from benchmarks.gpu import top_ops

    # the same kernel appears on the stream line and on the XLA Ops line; modules line contains both
    events = (_meta(2, 1, "/device:GPU:0", "Stream #1(Compute)") + _meta(2, 2, "/device:GPU:0", "XLA Ops")
              + _meta(2, 3, "/device:GPU:0", "XLA Modules") + _meta(1, 10, "/host:CPU", "tf_XLAEigen/1") + [
        _op(2, 1, 0, 40, "loop_gather_fusion_kernel", hlo=False), _op(2, 2, 0, 40, "gather_fusion"),
        _op(2, 2, 40, 10, "scatter"), _op(2, 3, 0, 50, "jit__chunk", hlo=False),
        _op(1, 10, 0, 500, "host_side_op"),
    ])
    _write_trace(tmp_path, events)
    r = top_ops(tmp_path, 10)
    assert r["source"] == "device 'XLA Ops' line"
    assert {o["op"]: o["self_ms"] * 1e3 for o in r["top"]} == {"gather_fusion": 40, "scatter": 10}


def test_max_agents_steps_down_on_device_oom(monkeypatch):
    import jax

    from benchmarks import gpu

    tried = []

    def fake_size(n, bandwidth, **kw):
        tried.append(n)
        if len(tried) == 1:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 bytes.")
        return {"n_agents": n}

    monkeypatch.setattr(gpu, "seir_size", fake_size)
    m = gpu.max_agents(1e10, 50_000, chunk=10, chunks=1)
    assert tried == [50_000, 40_000] and m["agents_reached"] == 40_000
    assert "RESOURCE_EXHAUSTED" in m["attempts"][0]["error"] and m["attempts"][1]["ok"]

    def other_error(n, bandwidth, **kw):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(gpu, "seir_size", other_error)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        gpu.max_agents(1e10, 50_000, chunk=10, chunks=1)
