"""The run directory (simcore.rundir): tables round-trip, appends are part files, a SIGKILL leaves every
table readable, resume truncates and appends, one manifest error policy, and no JAX on the reading side."""
import os
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, kill_when
from simcore import rundir


def _chunk(k: int, n: int = 3) -> pa.Table:
    steps = np.arange(k * n, (k + 1) * n, dtype=np.int64)
    return pa.table({"step": steps, "x": steps * 0.5, "n": steps * 2})


def _steps(run_dir, name="metrics"):
    return rundir.read_table(run_dir, name)["step"].to_pylist()


# -- appended tables ----------------------------------------------------------------------------
def test_appends_are_part_files_read_as_one_table_then_one_file_at_close(tmp_path):
    ap = rundir.TableAppender(tmp_path, "metrics", compact_every=4)
    for k in range(10):
        ap.append(_chunk(k))
    parts = sorted(p.name for p in rundir.parts_dir(tmp_path, "metrics").iterdir())
    # every 4 flushes merge into one file; the flushes since stay one file each
    assert parts == ["part-000000-000003.parquet", "part-000004-000007.parquet", "part-000008.parquet",
                     "part-000009.parquet"]
    assert not rundir.table_path(tmp_path, "metrics").exists()
    want = list(range(30))
    assert _steps(tmp_path) == want
    # the same dataset through polars, pyarrow and the documented glob
    assert pl.scan_parquet(tmp_path / "metrics.parts" / "*.parquet").collect().sort("step")["step"].to_list() == want
    assert sorted(ds.dataset(tmp_path / "metrics.parts", format="parquet").to_table()["step"].to_pylist()) == want
    assert rundir.scan_table(tmp_path, "metrics").collect()["step"].to_list() == want
    ap.close()
    assert not rundir.parts_dir(tmp_path, "metrics").exists()
    df = pl.read_parquet(tmp_path / "metrics.parquet")  # a closed run: one plain file
    assert df["step"].to_list() == want and df["n"].to_list() == [2 * s for s in want]
    assert pq.read_schema(tmp_path / "metrics.parquet").metadata[rundir.PARTS_THROUGH] == b"9"
    # appending after a compaction (a resumed, extended run) continues after the compacted parts
    ap2 = rundir.TableAppender(tmp_path, "metrics")
    ap2.append(_chunk(10))
    assert [p.name for p in rundir.table_files(tmp_path, "metrics")] == ["metrics.parquet", "part-000010.parquet"]
    assert _steps(tmp_path) == list(range(33))
    ap2.close()
    assert pl.read_parquet(tmp_path / "metrics.parquet")["step"].to_list() == list(range(33))


def test_a_compaction_killed_halfway_leaves_no_duplicate_rows(tmp_path):
    ap = rundir.TableAppender(tmp_path, "metrics", compact_every=0)
    for k in range(4):
        ap.append(_chunk(k))
    parts = rundir.parts_dir(tmp_path, "metrics")
    # what a kill between writing the merged file and removing its parts leaves behind
    merged = pa.concat_tables([pq.read_table(parts / f"part-{k:06d}.parquet") for k in range(3)])
    pq.write_table(merged, parts / "part-000000-000002.parquet")
    assert _steps(tmp_path) == list(range(12))
    # ... and between writing metrics.parquet at close and removing the parts folder
    rundir.atomic_write_table(rundir.read_table(tmp_path, "metrics"), tmp_path / "metrics.parquet",
                              {rundir.PARTS_THROUGH: b"3"})
    assert _steps(tmp_path) == list(range(12))
    assert len(list(parts.iterdir())) == 5  # the stale files are still there, and skipped
    again = rundir.TableAppender(tmp_path, "metrics")
    again.append(_chunk(4))  # opening for writing removes them
    assert [p.name for p in parts.iterdir()] == ["part-000004.parquet"]
    assert _steps(tmp_path) == list(range(15))


def test_truncate_keeps_rows_before_the_step_in_parts_and_compacted_file(tmp_path):
    ap = rundir.TableAppender(tmp_path, "llm_calls", compact_every=3)
    for k in range(7):
        ap.append(_chunk(k))
    rundir.truncate_table(tmp_path, "llm_calls", 10)
    assert _steps(tmp_path, "llm_calls") == list(range(10))
    assert [p.name for p in rundir.table_files(tmp_path, "llm_calls")] == ["part-000000-000002.parquet",
                                                                             "part-000003-000005.parquet"]
    ap.truncate(10)
    ap.append(pa.table({"step": np.array([10, 11], np.int64), "x": [5.0, 5.5], "n": [20, 22]}))
    assert _steps(tmp_path, "llm_calls") == list(range(12))
    ap.close()
    rundir.truncate_table(tmp_path, "llm_calls", 4)  # the compacted file keeps its record, with fewer rows
    assert _steps(tmp_path, "llm_calls") == [0, 1, 2, 3]
    rundir.truncate_table(tmp_path, "llm_calls", 0)
    assert rundir.read_table(tmp_path, "llm_calls").num_rows == 0


def test_schema_is_kept_across_parts(tmp_path):
    ap = rundir.TableAppender(tmp_path, "llm_calls")
    ap.append(pa.Table.from_pylist([{"step": 0, "prompt": None, "error": None, "value": 1.0}]))
    ap.append(pa.Table.from_pylist([{"step": 6, "prompt": None, "error": "timeout", "value": float("nan")}]))
    ap.append(pa.Table.from_pylist([{"value": 2.0, "step": 12, "error": None, "prompt": "p"}]))  # other order
    df = pl.scan_parquet(tmp_path / "llm_calls.parts" / "*.parquet").collect()  # one schema: a plain glob reads it
    assert df.schema["error"] == pl.String and df["error"].to_list() == [None, "timeout", None]
    assert df.columns == ["step", "prompt", "error", "value"] and df["prompt"].to_list() == [None, None, "p"]
    with pytest.raises(ValueError, match=r"llm_calls: columns differ from the table's: missing \['value'\], new \['v'\]"):
        ap.append(pa.Table.from_pylist([{"step": 18, "prompt": None, "error": None, "v": 1.0}]))
    ap.append(pa.table({"step": pa.array([], pa.int64())}))  # no rows: no file
    assert len(rundir.table_files(tmp_path, "llm_calls")) == 3


def test_other_tables_round_trip(tmp_path):
    ev0 = pa.table({"step": np.array([0, 1], np.int64), "agent": np.array([4, 2], np.int32)})
    ev1 = pa.table({"step": np.array([5], np.int64), "agent": np.array([7], np.int32)})
    assert rundir.next_event_part(tmp_path) == 0
    assert rundir.write_events(tmp_path, 0, ev0) == "events/part-000000.parquet"
    rundir.write_events(tmp_path, 1, ev1)
    rundir.write_events(tmp_path, 0, ev1, rundir.event_suffix(1, 2))  # process 1 of 2: its own numbering
    assert rundir.next_event_part(tmp_path) == 2 and rundir.next_event_part(tmp_path, "-p1") == 1
    assert sorted(rundir.read_table(tmp_path, "events")["step"].to_pylist()) == [0, 1, 5, 5]
    for step in (0, 10):
        for pid in (0, 1):
            rundir.write_agents(tmp_path, step, pid, pa.table({"agent": np.array([pid, pid + 2]), "v": [step] * 2}))
    assert rundir.agent_steps(tmp_path) == [0, 10]
    assert rundir.read_table(tmp_path, "agents", step=10)["agent"].to_pylist() == [0, 2, 1, 3]
    agents = rundir.scan_table(tmp_path, "agents").collect()
    assert agents.height == 8 and agents.schema["step"] == pl.Int64 and sorted(set(agents["step"])) == [0, 10]
    personas = pa.table({"persona": ["a", "b"], "agents": [3, 4]})
    rundir.write_table(tmp_path, "personas", personas)
    assert rundir.read_table(tmp_path, "personas").equals(personas)
    with pytest.raises(rundir.MissingTable, match="no surveys rows"):
        rundir.read_table(tmp_path, "surveys")
    with pytest.raises(ValueError, match="not a single-file table"):
        rundir.write_table(tmp_path, "metrics", personas)

    rundir.truncate_run(tmp_path, 5)
    assert rundir.read_table(tmp_path, "events")["step"].to_pylist() == [0, 1]
    assert not (tmp_path / "events" / "part-000001.parquet").exists()  # emptied: gone
    assert rundir.agent_steps(tmp_path) == [0]


def test_manifest_has_one_error_policy(tmp_path):
    from analysis import read_manifest as analysis_manifest
    from analysis.readers import NotAResultDir
    from server.runs import read_manifest as server_manifest
    from simcore.checkpoint import CheckpointError, read_manifest as checkpoint_manifest

    rundir.write_manifest(tmp_path, {"seed": 3, "status": "running"})
    assert rundir.read_manifest(tmp_path) == {"seed": 3, "status": "running"}
    assert not list(tmp_path.glob(".*tmp"))
    for text, reason in [(None, "not a run directory (no manifest.json)"), ('{"seed": 3, "sta', "corrupt"),
                         ("[1, 2]", "expected a JSON object, got list"), (b"\xff\xfe", "cannot read")]:
        path = tmp_path / "manifest.json"
        path.unlink(missing_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        elif text is not None:
            path.write_text(text)
        with pytest.raises(rundir.ManifestError, match=re.escape(reason)) as err:
            rundir.read_manifest(tmp_path)
        assert str(err.value).startswith("run_dir: ") and isinstance(err.value, ValueError)
        with pytest.raises(NotAResultDir, match=re.escape(reason)):
            analysis_manifest(tmp_path)
        with pytest.raises(CheckpointError, match=re.escape(reason)):
            checkpoint_manifest(tmp_path)
        assert server_manifest(tmp_path) is None  # a listing skips it


def test_resume_with_a_corrupt_manifest_exits_2(tmp_path, capsys):
    from simcore.cli import main

    (tmp_path / "manifest.json").write_text("{not json")
    assert main(["resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: run_dir: corrupt" in err and "Traceback" not in err


# -- no JAX on the reading side -----------------------------------------------------------------
NO_JAX = """
import sys
import numpy as np, polars as pl
from simcore import rundir
from analysis.results import ExperimentResults
out = sys.argv[1]
steps, seeds = 5, [0, 1, 2]
frames = [pl.DataFrame({"arm": [arm] * steps, "seed": [s] * steps, "step": list(range(steps)),
                        "new_deaths": np.arange(steps) * (2.0 if arm == "later" else 1.0) + s})
          for arm in ("baseline", "later") for s in seeds]
ExperimentResults(pl.concat(frames), baseline="baseline", arms=["baseline", "later"], seeds=seeds,
                  steps=steps).save(out, n_boot=200)
import analysis
res = analysis.load_experiment(out)
diff = res.paired("new_deaths:sum")["diff"].to_list()
assert diff == [10.0, 10.0, 10.0], diff
assert "jax" not in sys.modules, "jax was imported"
print("ok", sorted(m for m in sys.modules if m.startswith("simcore")))
"""


def test_reading_runs_and_experiments_imports_no_jax(tmp_path):
    res = subprocess.run([sys.executable, "-c", NO_JAX, str(tmp_path / "exp")], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok") and "simcore.experiments" not in res.stdout
    assert "simcore.rundir" in res.stdout  # analysis reads through the run-directory module


# -- a real run, killed, then resumed ----------------------------------------------------------
RUN = """
import math, sys, time, zlib
import llm_policy.backends as backends
from llm_policy.backends import ScriptedBackend

def script(prompt, options):  # prompt-dependent answers: a round that saw other state would log other rows
    p = 0.2 + 0.6 * (zlib.crc32(prompt.encode()) % 1000) / 1000
    return [math.log(p) if o.strip() == "yes" else math.log1p(-p) for o in options]

backends.make_backend = lambda spec: ScriptedBackend(script, identity="scripted:rundir")
from scenarios import load_scenario
from simcore.session import resume_run
from simcore.runs import run_scenario

mode, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
slow = (lambda sim, chunk: time.sleep(pause)) if pause else None
if mode == "resume":
    resume_run(out, on_chunk=slow)
else:
    sc = load_scenario("polarization_llm_small", ["run.steps=60", "run.chunk_size=6", "policy.every=6",
                                                  "surveys=[]", "output.sample_every=6"])
    run_scenario(sc, out, checkpoint_every=12 if mode == "checkpointed" else 0, on_chunk=slow)
"""
DROP_METRICS = ("wall_seconds", "llm_seconds", "llm_cache_hits")  # timing; a resume hits the run's own cache
DROP_CALLS = ("latency_s", "cache_hit")


def _script(mode, out, env, pause=0.0):
    return subprocess.Popen([sys.executable, "-c", RUN, mode, str(out), str(pause)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc):
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]


def test_sigkill_leaves_tables_readable_and_resume_equals_an_uninterrupted_run(cli_env, tmp_path):
    env = {**cli_env, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache")}
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    _finish(_script("plain", ref, env))  # also fills the compilation cache
    proc = _script("checkpointed", killed, env, pause=0.4)
    # settle: somewhere after the checkpoint at step 24, mid-flush or not
    kill_when(proc, lambda: len(rundir.list_checkpoints(killed)) >= 2, timeout=300,
              what="no second checkpoint within 300 s", settle=0.5)
    manifest = rundir.read_manifest(killed)
    assert manifest["status"] == "running" and manifest["steps_done"] < 60

    a = pl.read_parquet(ref / "metrics.parquet")
    calls_ref = pl.read_parquet(ref / "llm_calls.parquet")
    assert not (ref / "metrics.parts").exists() and calls_ref.height > 0
    # killed: every table reads up to its last flush, a prefix of the uninterrupted run's
    m = rundir.scan_table(killed, "metrics").collect()
    n = m.height
    assert 24 <= n < 60 and m["step"].to_list() == list(range(n)) and (killed / "metrics.parts").is_dir()
    assert m.drop(DROP_METRICS).equals(a.drop(DROP_METRICS).head(n))
    calls = rundir.scan_table(killed, "llm_calls").collect()
    last = calls["step"].max()
    assert last >= 24 and calls.drop(DROP_CALLS).equals(calls_ref.filter(pl.col("step") <= last).drop(DROP_CALLS))
    from analysis import scan_metrics
    assert scan_metrics(killed).collect().equals(m)

    _finish(_script("resume", killed, env))
    b = pl.read_parquet(killed / "metrics.parquet")
    assert b["step"].to_list() == list(range(60)) and not (killed / "metrics.parts").exists()
    assert b.drop(DROP_METRICS).equals(a.drop(DROP_METRICS))
    calls_b = pl.read_parquet(killed / "llm_calls.parquet")
    assert calls_b.drop(DROP_CALLS).equals(calls_ref.drop(DROP_CALLS))  # each round once, none lost
    assert rundir.read_table(killed, "agents", step=54).equals(rundir.read_table(ref, "agents", step=54))
    resumed = rundir.read_manifest(killed)
    assert resumed["status"] == "completed" and resumed["resumed"][0]["from_step"] in (12, 24, 36, 48)


def test_run_writer_appends_and_the_newest_copy_of_a_step_wins(tmp_path):
    from types import SimpleNamespace

    from simcore.io import RunWriter

    def chunk(a, b, v):
        steps = np.arange(a, b, dtype=np.int64)
        return SimpleNamespace(steps=steps, metrics={"v": np.full(b - a, v)}, samples={}, events={})

    w = RunWriter(tmp_path, {"seed": 0}, compact_every=2)
    for a, b, v in [(0, 10, 1.0), (10, 20, 1.0), (15, 25, 2.0), (25, 30, 2.0)]:
        w.submit(chunk(a, b, v))
    w.flush()
    df = rundir.scan_table(tmp_path, "metrics").collect()
    assert df["step"].to_list() == list(range(30)) and df["v"].to_list() == [1.0] * 15 + [2.0] * 15
    assert rundir.read_manifest(tmp_path)["steps_done"] == 30 and not (tmp_path / "metrics.parquet").exists()
    w.close()
    assert pl.read_parquet(tmp_path / "metrics.parquet").equals(df) and not (tmp_path / "metrics.parts").exists()
    assert rundir.read_manifest(tmp_path)["status"] == "completed"
    w = RunWriter(tmp_path, {"seed": 0})  # the same directory again, from step 20 on
    w.submit(chunk(20, 40, 3.0))
    w.close()
    df = pl.read_parquet(tmp_path / "metrics.parquet")
    assert df["step"].to_list() == list(range(40)) and df["v"].to_list() == [1.0] * 15 + [2.0] * 5 + [3.0] * 20
