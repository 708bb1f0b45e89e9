"""The run directory: its layout, its manifest, and every table's reader and writer.

This module imports no JAX (numpy, pyarrow; polars only inside :func:`scan_table`), so
``analysis``, the server and tools can read runs without the engine.

Layout::

    manifest.json                  resolved scenario, seed, versions, device, times, status
    metrics.parquet                one row per step (``step`` column)             } appended
    metrics.parts/part-A.parquet   rows flushed since the last compaction         } tables,
    llm_calls.parquet              one row per LLM call (``step``: the step it    } see below
    llm_calls.parts/...            was applied at)                                }
    events/part-NNNNNN[-pP].parquet   typed event trace, one file per chunk (P = process in a
                                   multi-process run); never compacted
    agents/step=N/part-P.parquet   sampled agent rows every K steps (hive partitions)
    surveys.parquet                survey answers, one row per (survey, step, item,  } appended
    surveys.parts/...              archetype, option)                                }
    personas.parquet               the population's distinct personas, written once
    interviews.parquet             questions asked of the run's agents (``simcore interview``), appended;
                                   kept on resume (:data:`KEPT_ON_RESUME`)
    deep_agents.parquet            deep agents' memories, reflections and decisions (``deep_agents:``), appended
    network_nodes.parquet          the dashboard's network view: <= 150 sampled agents with their layout
                                   (``x``, ``y``); what the view shows in the Parquet metadata
    network_edges.parquet          its edges (``i``, ``j``: node positions; ``layer``), written once
    network_states.parquet         the nodes' states now and then (``step``, ``node``, ``state``); appended
    checkpoints/step=N/            see :mod:`simcore.checkpoint`
    hosts/host-P.json              (multi-process runs) what process P wrote

**Appended tables** (:data:`APPENDED`: ``metrics``, ``llm_calls``, ``surveys``, ``network_states``, ``interviews``, ``deep_agents``). A flush writes only the new
rows, as one part file ``NAME.parts/part-A.parquet`` (``A``: the part's sequence number), so a
flush costs O(new rows), not O(run length). Every :data:`COMPACT_EVERY` parts are merged into
one ``part-A-B.parquet`` (parts ``A..B``). Closing the table (the end of a run, stopped or
completed) merges everything into ``NAME.parquet``, whose Parquet metadata key
``simcore.parts_through`` records the last part it holds, and removes ``NAME.parts/``. So a
closed run has one plain file per table, readable by anything::

    pl.read_parquet("run/metrics.parquet")

During a run, or after a kill, the table is ``NAME.parquet`` (if a compaction happened) plus
``NAME.parts/*.parquet``. Every file is written under a hidden temporary name and renamed into
place, so a SIGKILL at any moment leaves every table readable up to its last flush. The readers
here (:func:`read_table`, :func:`scan_table`, :func:`table_files`) pick the exact set of files:
a file whose parts another file already holds (left by a kill in the middle of a compaction)
is skipped, and removed the next time the table is opened for writing. The same dataset by
hand, with polars, pyarrow or duckdb, is the glob of both (exact unless a compaction was
interrupted)::

    pl.scan_parquet(["run/metrics.parquet", "run/metrics.parts/*.parquet"])   # whichever exist
    duckdb: SELECT * FROM read_parquet(['run/metrics.parquet', 'run/metrics.parts/*.parquet'])

**Resume** truncates every table to the checkpoint's step (:func:`truncate_run`): rows with
``step >= S`` are dropped from each file (files left empty are deleted), agent partitions and
checkpoints after ``S`` are removed; the resumed run appends after the parts that remain.

**Manifest error policy.** :func:`read_manifest` raises :class:`ManifestError` (a
:class:`RunDirError`, itself a ``ValueError``) when ``manifest.json`` is missing, is not valid
JSON or is not a JSON object: never ``None``, never a partial dict. Callers that list many
directories catch :class:`ManifestError`. :func:`write_manifest` writes atomically.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
HOSTS = "hosts"
APPENDED = ("metrics", "llm_calls", "surveys", "network_states", "interviews", "deep_agents")  # part files per flush, compacted at close
PARTITIONED = ("events", "agents")  # folders of part files, never compacted
SINGLE = ("personas", "network_nodes", "network_edges")  # one file, written whole
TABLES = APPENDED + PARTITIONED + SINGLE
# asked of the run after the fact, not written by it: a resume (truncate_run) leaves their rows alone
KEPT_ON_RESUME = ("interviews",)
COMPACT_EVERY = 64  # parts merged into one file every this many flushes
PARTS_THROUGH = b"simcore.parts_through"

_PART = re.compile(r"^part-(\d+)(?:-(\d+))?\.parquet$")
_STEP_DIR = re.compile(r"^step=(\d+)$")


class RunDirError(ValueError):
    """A run directory (or one of its tables) that is missing, incomplete or unreadable.

    ``field`` and ``reason`` as in scenario errors (``str(err)`` is ``field: reason``).
    """

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}" if field else reason)


class ManifestError(RunDirError):
    """``manifest.json`` is missing, not valid JSON, or not a JSON object."""


class MissingTable(RunDirError):
    """The run directory has no file of this table (never written, or no rows yet)."""


# -- atomic files -------------------------------------------------------------------------------
def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_table(table: pa.Table, path: str | Path, metadata: Mapping[bytes, bytes] | None = None) -> None:
    """Write ``table`` to ``path`` under a temporary name, then rename it into place."""
    path = Path(path)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    tmp = _tmp(path)
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def atomic_write_json(obj: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


# -- the manifest -------------------------------------------------------------------------------
def manifest_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / MANIFEST


def is_run_dir(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` has a ``manifest.json`` file (not whether it is readable)."""
    return manifest_path(run_dir).is_file()


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The run's manifest; :class:`ManifestError` if it is missing, corrupt or not an object."""
    path = manifest_path(run_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestError("run_dir", f"not a run directory (no {MANIFEST}): {run_dir}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError("run_dir", f"cannot read {path}: {exc}") from None
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ManifestError("run_dir", f"corrupt {path}: {exc}") from None
    if not isinstance(manifest, dict):
        raise ManifestError("run_dir", f"corrupt {path}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def manifest_summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a run listing shows, from a manifest (None where it records none)."""
    sc = manifest.get("scenario") or {}
    return {
        "scenario": sc.get("name"),
        "model": (sc.get("model") or {}).get("kind"),
        "agents": manifest.get("n_agents"),
        "status": manifest.get("status"),
        "step": manifest.get("steps_done", 0),
        "steps": manifest.get("steps"),
        "seed": manifest.get("seed"),
        "created": manifest.get("start_time"),
        "error": manifest.get("error"),
    }


def write_manifest(run_dir: str | Path, manifest: Mapping[str, Any]) -> None:
    atomic_write_json(dict(manifest), manifest_path(run_dir))


def write_host(run_dir: str | Path, process_id: int, record: Mapping[str, Any]) -> None:
    """``hosts/host-P.json``: what process ``P`` of a multi-process run wrote."""
    d = Path(run_dir) / HOSTS
    d.mkdir(exist_ok=True)
    atomic_write_json(dict(record), d / f"host-{int(process_id)}.json")


def read_hosts(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every process's ``hosts/host-P.json``, by process id."""
    hosts = [json.loads(f.read_text()) for f in sorted((Path(run_dir) / HOSTS).glob("host-*.json"))]
    return sorted(hosts, key=lambda h: h["process_id"])


# -- appended tables: which files make the table ------------------------------------------------
def _check_appended(name: str) -> None:
    if name not in APPENDED:
        raise ValueError(f"{name!r} is not an appended table (those are {', '.join(APPENDED)})")


def table_path(run_dir: str | Path, name: str) -> Path:
    """``run_dir/NAME.parquet``: the whole table of a closed run (for any table but events and agents)."""
    if name in PARTITIONED:
        raise ValueError(f"{name!r} is a folder of part files: use partition_files")
    return Path(run_dir) / f"{name}.parquet"


def parts_dir(run_dir: str | Path, name: str) -> Path:
    _check_appended(name)
    return Path(run_dir) / f"{name}.parts"


def _pieces(run_dir: str | Path, name: str) -> list[tuple[int, int, Path]]:
    """Every file of an appended table with the range of parts it holds (root file first: -1)."""
    out = []
    root = table_path(run_dir, name)
    if root.is_file():
        through = (pq.read_schema(root).metadata or {}).get(PARTS_THROUGH)
        out.append((-1, int(through) if through is not None else -1, root))
    d = parts_dir(run_dir, name)
    if d.is_dir():
        for p in d.iterdir():
            m = _PART.match(p.name)
            if m:
                a = int(m.group(1))
                out.append((a, int(m.group(2)) if m.group(2) else a, p))
    return out


def _select(pieces: list[tuple[int, int, Path]]) -> tuple[list[tuple[int, int, Path]], list[Path]]:
    """(the files that make the table, in order; the files another already holds)."""
    keep, stale, through = [], [], -2
    for first, last, path in sorted(pieces, key=lambda p: (p[0], -p[1])):
        if first > through:
            keep.append((first, last, path))
            through = max(through, last)
        else:
            stale.append(path)
    return keep, stale


def table_files(run_dir: str | Path, name: str) -> list[Path]:
    """The files that hold table ``name`` now, in row order (empty if it has none)."""
    if name in APPENDED:
        return [p for _, _, p in _select(_pieces(run_dir, name))[0]]
    if name in PARTITIONED:
        return partition_files(run_dir, name)
    path = table_path(run_dir, name)
    return [path] if path.is_file() else []


def has_table(run_dir: str | Path, name: str) -> bool:
    return bool(table_files(run_dir, name))


def partition_files(run_dir: str | Path, name: str, step: int | None = None) -> list[Path]:
    """Part files of ``events`` (by chunk) or ``agents`` (all sampled steps, or one ``step``)."""
    base = Path(run_dir) / name
    if name == "events":
        return sorted(base.glob("part-*.parquet")) if base.is_dir() else []
    if name == "agents":
        if step is not None:
            return sorted((base / f"step={int(step)}").glob("part-*.parquet"))
        return sorted(base.glob("step=*/part-*.parquet"), key=lambda p: (int(p.parent.name[5:]), p.name))
    raise ValueError(f"{name!r} is not a partitioned table (those are {', '.join(PARTITIONED)})")


def agent_steps(run_dir: str | Path) -> list[int]:
    """The steps with sampled agent rows."""
    base = Path(run_dir) / "agents"
    if not base.is_dir():
        return []
    return sorted(int(m.group(1)) for p in base.iterdir()
                  if (m := _STEP_DIR.match(p.name)) and any(p.glob("part-*.parquet")))


def _missing(run_dir, name) -> MissingTable:
    return MissingTable(name, f"no {name} rows in {run_dir}")


def table_schema(run_dir: str | Path, name: str) -> pa.Schema:
    """The table's schema (from its first file; the simcore metadata dropped)."""
    files = table_files(run_dir, name)
    if not files:
        raise _missing(run_dir, name)
    return pq.read_schema(files[0]).remove_metadata()


def read_table(run_dir: str | Path, name: str, *, columns: list[str] | None = None,
               step: int | None = None) -> pa.Table:
    """The whole of table ``name`` as one pyarrow Table (compacted file and parts, in row order).

    ``step`` selects one sampled step of ``agents``. :class:`MissingTable` if the table has no file.
    """
    files = partition_files(run_dir, name, step) if name == "agents" else table_files(run_dir, name)
    if not files:
        raise _missing(run_dir, name)
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables, promote_options="default").replace_schema_metadata(None)


def scan_table(run_dir: str | Path, name: str):
    """Table ``name`` as one polars LazyFrame over its exact files (``agents``: ``step`` from the folders)."""
    import polars as pl

    if name == "agents":
        root = Path(run_dir) / "agents"
        if not agent_steps(run_dir):
            raise _missing(run_dir, name)
        return pl.scan_parquet(root / "step=*" / "*.parquet", hive_partitioning=True,
                               hive_schema={"step": pl.Int64})
    files = table_files(run_dir, name)
    if not files:
        raise _missing(run_dir, name)
    return pl.scan_parquet(files)


# -- appended tables: the writer ----------------------------------------------------------------
def _normalize(table: pa.Table, schema: pa.Schema | None, name: str) -> pa.Table:
    """``table`` in the table's schema; null-typed columns (all-None so far) as strings."""
    if schema is None:
        fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
        return table.cast(pa.schema(fields)) if any(pa.types.is_null(f.type) for f in table.schema) else table
    if table.schema.remove_metadata() == schema:
        return table
    have, want = set(table.column_names), set(schema.names)
    if have != want:
        raise ValueError(f"{name}: columns differ from the table's: missing {sorted(want - have)}, "
                         f"new {sorted(have - want)}")
    return table.select(schema.names).cast(schema)


class TableAppender:
    """Appends rows to an appended table (:data:`APPENDED`): one part file per :meth:`append`.

    Opened lazily at the first append (after any truncation of a resumed run). Not thread-safe:
    one writer per table. :meth:`close` compacts the table into ``NAME.parquet``.
    """

    def __init__(self, run_dir: str | Path, name: str, *, compact_every: int = COMPACT_EVERY):
        _check_appended(name)
        self.dir = Path(run_dir)
        self.name = name
        self.compact_every = int(compact_every)
        self._open = False
        self._next = 0
        self._singles: list[tuple[int, Path]] = []
        self._schema: pa.Schema | None = None
        self.rows_written = 0

    def _start(self) -> None:
        d = parts_dir(self.dir, self.name)
        keep, stale = _select(_pieces(self.dir, self.name))
        for path in stale:  # left by a kill in the middle of a compaction
            path.unlink(missing_ok=True)
        if d.is_dir():
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        self._next = max((last for _, last, _ in keep), default=-1) + 1
        self._singles = [(a, p) for a, b, p in keep if a == b and p.parent == d]
        self._schema = pq.read_schema(keep[-1][2]).remove_metadata() if keep else None
        self._open = True

    @property
    def schema(self) -> pa.Schema | None:
        if not self._open:
            self._start()
        return self._schema

    def append(self, table: pa.Table | pa.RecordBatch) -> None:
        """Write ``table``'s rows as one new part file (nothing for zero rows)."""
        if not self._open:
            self._start()
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if table.num_rows == 0:
            return
        table = _normalize(table, self._schema, self.name)
        self._schema = table.schema.remove_metadata()
        d = parts_dir(self.dir, self.name)
        d.mkdir(parents=True, exist_ok=True)
        seq = self._next
        path = d / f"part-{seq:06d}.parquet"
        atomic_write_table(table, path)
        self._next += 1
        self._singles.append((seq, path))
        self.rows_written += table.num_rows
        if self.compact_every and len(self._singles) >= self.compact_every:
            self._merge_singles()

    def _merge_singles(self) -> None:
        first, last = self._singles[0][0], self._singles[-1][0]
        files = [p for _, p in self._singles]
        merged = pa.concat_tables([pq.read_table(p) for p in files])
        atomic_write_table(merged, parts_dir(self.dir, self.name) / f"part-{first:06d}-{last:06d}.parquet")
        for p in files:  # a kill before these are gone leaves files the readers skip
            p.unlink()
        self._singles = []

    def truncate(self, step: int) -> None:
        """Drop the rows with ``step >= step`` (before the next append)."""
        truncate_table(self.dir, self.name, step)
        self._open = False

    def close(self) -> None:
        """Compact the table into ``NAME.parquet`` and remove ``NAME.parts/``."""
        compact_table(self.dir, self.name)
        self._open = False


def compact_table(run_dir: str | Path, name: str) -> Path | None:
    """Merge every file of appended table ``name`` into ``NAME.parquet``; None if it has no rows."""
    keep, stale = _select(_pieces(run_dir, name))
    d = parts_dir(run_dir, name)
    root = table_path(run_dir, name)
    if keep and not (len(keep) == 1 and keep[0][2] == root):
        through = max(last for _, last, _ in keep)
        table = pa.concat_tables([pq.read_table(p) for _, _, p in keep]).replace_schema_metadata(None)
        atomic_write_table(table, root, {PARTS_THROUGH: str(through).encode()})
    if d.is_dir():  # now all held by the compacted file (a kill here leaves files the readers skip)
        shutil.rmtree(d)
    return root if keep else None


def truncate_table(run_dir: str | Path, name: str, step: int) -> None:
    """Drop the rows of table ``name`` with ``step >= step`` (files left empty are deleted)."""
    if name in PARTITIONED:
        if name == "agents":
            base = Path(run_dir) / "agents"
            if base.is_dir():
                for part in base.iterdir():
                    m = _STEP_DIR.match(part.name)
                    if m and int(m.group(1)) >= step:
                        shutil.rmtree(part)
            return
        files = partition_files(run_dir, name)
    elif name in APPENDED:
        keep, stale = _select(_pieces(run_dir, name))
        for path in stale:
            path.unlink(missing_ok=True)
        files = [p for _, _, p in keep]
    else:
        files = table_files(run_dir, name)
    for path in files:
        meta = pq.read_schema(path).metadata
        table = pq.read_table(path)
        if "step" not in table.column_names:
            raise RunDirError(name, f"{path} has no 'step' column")
        kept = table.filter(pc.less(table.column("step"), step))
        if kept.num_rows == table.num_rows:
            continue
        if kept.num_rows == 0 and not (name in APPENDED and path == table_path(run_dir, name)):
            path.unlink()
        else:  # a compacted file stays (with its record of the parts it holds), however few rows
            atomic_write_table(kept.replace_schema_metadata(None), path, meta)


def replace_table(run_dir: str | Path, name: str, table: pa.Table) -> Path:
    """Write appended table ``name`` whole, as ``NAME.parquet``, replacing every row it had (an experiment
    arm's metrics, known at once)."""
    _check_appended(name)
    d = parts_dir(run_dir, name)
    if d.is_dir():
        shutil.rmtree(d)
    path = table_path(run_dir, name)
    atomic_write_table(table.replace_schema_metadata(None), path)
    return path


def keep_rows(run_dir: str | Path, name: str, n: int) -> int:
    """Cut appended table ``name`` to its first ``n`` rows (one compacted file); returns the rows kept.

    A resumed LLM run uses this rather than :func:`truncate_table`: a checkpoint counts the call-log
    rows it covers, and a pipelined round's rows carry the later step they apply at.
    """
    root = compact_table(run_dir, name)
    if root is None:
        return 0
    table = pq.read_table(root)
    if table.num_rows > n:  # the compacted file keeps its record of the parts it holds
        atomic_write_table(table.slice(0, int(n)).replace_schema_metadata(None), root, pq.read_schema(root).metadata)
    return min(int(n), table.num_rows)


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (``step=N/meta.json``) of a run directory or of a ``checkpoints`` folder, by step."""
    base = Path(run_dir)
    if (base / CHECKPOINTS).is_dir():
        base = base / CHECKPOINTS
    if not base.is_dir():
        return []
    found = []
    for p in base.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "meta.json").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def truncate_run(run_dir: str | Path, step: int, tables: Iterable[str] = APPENDED + PARTITIONED) -> None:
    """Drop everything a run wrote for steps >= ``step``: rows of every table, agent samples, later checkpoints.

    The tables of :data:`KEPT_ON_RESUME` (interviews) are never cut: they are not the run's output.
    """
    for name in tables:
        if name not in KEPT_ON_RESUME:
            truncate_table(run_dir, name, step)
    for s, path in list_checkpoints(run_dir):
        if s > step:
            shutil.rmtree(path)


# -- single-file and partitioned tables ---------------------------------------------------------
def write_table(run_dir: str | Path, name: str, table: pa.Table) -> Path:
    """Write a single-file table (:data:`SINGLE`: ``personas``, the network view) whole, atomically."""
    if name not in SINGLE:
        raise ValueError(f"{name!r} is not a single-file table (those are {', '.join(SINGLE)})")
    path = table_path(run_dir, name)
    atomic_write_table(table, path)
    return path


def write_agents(run_dir: str | Path, step: int, process_id: int, table: pa.Table) -> str:
    """``agents/step=N/part-P.parquet``; returns its path relative to the run directory."""
    rel = f"agents/step={int(step)}/part-{int(process_id)}.parquet"
    path = Path(run_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_table(table, path)
    return rel


def event_suffix(process_id: int, num_processes: int) -> str:
    return f"-p{int(process_id)}" if num_processes > 1 else ""


def next_event_part(run_dir: str | Path, suffix: str = "") -> int:
    """The number of the next ``events/part-NNNNNN{suffix}.parquet`` (after those on disk)."""
    d = Path(run_dir) / "events"
    nums = [int(p.name[5:11]) for p in d.glob(f"part-*{suffix}.parquet")
            if p.name[5:11].isdigit() and p.name[11:] == f"{suffix}.parquet"] if d.is_dir() else []
    return max(nums, default=-1) + 1


def write_events(run_dir: str | Path, part: int, table: pa.Table, suffix: str = "") -> str:
    """``events/part-NNNNNN{suffix}.parquet``; returns its path relative to the run directory."""
    rel = f"events/part-{int(part):06d}{suffix}.parquet"
    path = Path(run_dir) / rel
    path.parent.mkdir(exist_ok=True)
    atomic_write_table(table, path)
    return rel


NETWORK_META = b"simcore.network"


def write_network(run_dir: str | Path, graph: Mapping[str, Any]) -> None:
    """The network view's subgraph (``nodes``, ``x``, ``y``, ``edges`` [i, j, layer], ``layers``, ``graph``,
    ``labels``, ``colour``): ``network_nodes`` (its metadata: what the view shows) and ``network_edges``."""
    edges = np.asarray(graph["edges"], np.int64).reshape(-1, 3)
    meta = {k: graph[k] for k in ("graph", "labels", "colour", "layers")}
    write_table(run_dir, "network_edges", pa.table({"i": edges[:, 0], "j": edges[:, 1], "layer": edges[:, 2]}))
    atomic_write_table(pa.table({"node": np.asarray(graph["nodes"], np.int64), "x": np.asarray(graph["x"], np.float64),
                                 "y": np.asarray(graph["y"], np.float64)}),
                       table_path(run_dir, "network_nodes"), {NETWORK_META: json.dumps(meta).encode()})


def network_states_table(step: int, nodes: Any, states: Any) -> pa.Table:
    """Rows of ``network_states``: each node's state code at ``step``."""
    nodes = np.asarray(nodes, np.int64)
    return pa.table({"step": np.full(len(nodes), int(step), np.int64), "node": nodes,
                     "state": np.asarray(states, np.int32)})


def read_network(run_dir: str | Path) -> dict[str, Any] | None:
    """The network view as written (the same keys as :func:`write_network`'s), with ``step`` and ``state``:
    the nodes' states at the last step recorded (``step`` -1, ``state`` None where none is yet).
    None where the run recorded no view."""
    nodes_path = table_path(run_dir, "network_nodes")
    if not nodes_path.is_file() or not table_path(run_dir, "network_edges").is_file():
        return None
    raw = (pq.read_schema(nodes_path).metadata or {}).get(NETWORK_META)
    if raw is None:
        raise RunDirError("network_nodes", f"{nodes_path} has no {NETWORK_META.decode()} metadata")
    nodes = pq.read_table(nodes_path)
    edges = pq.read_table(table_path(run_dir, "network_edges"))
    out = {"nodes": nodes.column("node").to_pylist(), "x": nodes.column("x").to_pylist(),
           "y": nodes.column("y").to_pylist(),
           "edges": np.stack([edges.column(c).to_numpy() for c in ("i", "j", "layer")], 1).tolist(),
           **json.loads(raw), "step": -1, "state": None}
    if has_table(run_dir, "network_states"):
        states = read_table(run_dir, "network_states")
        last = pc.max(states.column("step")).as_py()
        if last is not None:
            at = states.filter(pc.equal(states.column("step"), last))
            by_node = dict(zip(at.column("node").to_pylist(), at.column("state").to_pylist()))
            out["step"], out["state"] = int(last), [by_node.get(n) for n in out["nodes"]]
    return out


def column_table(columns: Mapping[str, Any]) -> pa.Table:
    """A pyarrow Table from numpy-like columns."""
    return pa.table({k: np.asarray(v) for k, v in columns.items()})


__all__ = [
    "APPENDED", "CHECKPOINTS", "COMPACT_EVERY", "HOSTS", "KEPT_ON_RESUME", "MANIFEST", "ManifestError", "MissingTable", "PARTITIONED",
    "RunDirError", "SINGLE", "TABLES", "TableAppender", "agent_steps", "atomic_write_json", "atomic_write_table",
    "column_table", "compact_table", "event_suffix", "has_table", "is_run_dir", "list_checkpoints", "manifest_path", "manifest_summary",
    "next_event_part", "partition_files", "parts_dir", "network_states_table", "read_hosts", "read_manifest", "read_network", "read_table", "replace_table", "scan_table",
    "table_files", "table_path", "table_schema", "truncate_run", "truncate_table", "write_agents", "write_events",
    "write_host", "write_manifest", "write_network", "write_table",
]
