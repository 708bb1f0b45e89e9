"""Run directory output: a background writer that keeps every file readable.

Layout of a run directory::

    manifest.json            resolved scenario, seed, versions, device, times, status
    metrics.parquet          one row per step (always a ``step`` column)
    agents/step=N/part-P.parquet   sampled agent rows every K steps (hive partitions; P = process)
    events/part-NNNNNN[-pP].parquet  typed event trace, one file per chunk, where a model emits events
    hosts/host-P.json        (multi-process runs) what process P wrote; merged into the manifest

In a multi-process run (:mod:`simcore.distributed`) process 0 writes the manifest
and ``metrics.parquet`` (global reductions, the same on every process); each
process writes the agent rows and events of the agents it owns, and the manifest's
``hosts`` lists every process's files.

Each file is written under a temporary name and renamed into place, so a run killed
at any moment (SIGKILL included) leaves every visible file complete up to the
last flushed chunk. ``metrics.parquet`` is small (one row per step) and is
rewritten whole at each flush.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def atomic_write_table(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def atomic_write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


class RunWriter:
    """Writes chunks from a background thread; ``submit`` returns at once.

    An error in the writer thread is re-raised by the next ``submit`` or ``close``:
    output is never dropped silently.
    """

    def __init__(self, run_dir: str | Path, manifest: Mapping[str, Any], *, sample_every: int = 0,
                 max_pending: int = 8, process_id: int = 0, num_processes: int = 1,
                 owned: list[tuple[int, int]] | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process_id, self.num_processes = int(process_id), int(num_processes)
        self.lead = self.process_id == 0
        self.owned = owned  # agent ranges this process writes; None = all
        self.files: set[str] = set()
        self.manifest = dict(manifest)
        self.manifest.setdefault("status", "running")
        self.manifest.setdefault("start_time", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.manifest.setdefault("steps_done", 0)
        self.sample_every = int(sample_every)
        self._metrics: list[pa.RecordBatch] = []
        existing = self.dir / "metrics.parquet"
        if existing.exists():  # resuming: keep what was flushed
            self._metrics = pq.read_table(existing).to_batches()
        self._suffix = f"-p{self.process_id}" if self.num_processes > 1 else ""
        events_dir = self.dir / "events"
        self._event_part = len(list(events_dir.glob(f"part-*{self._suffix}.parquet"))) if events_dir.exists() else 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._extra: dict[str, Any] = {}
        self._write_manifest()
        self._thread = threading.Thread(target=self._loop, name="simcore-writer", daemon=True)
        self._thread.start()

    # -- producer side -------------------------------------------------------
    def submit(self, chunk, extra_metrics: Mapping[str, np.ndarray] | None = None) -> None:
        """Queue a :class:`~simcore.engine.Chunk` (plus host-side metric columns of the same length)."""
        self._raise_if_failed()
        self._queue.put(("chunk", chunk, dict(extra_metrics or {})))

    def update_manifest(self, **fields: Any) -> None:
        self._raise_if_failed()
        self._queue.put(("manifest", fields, None))

    def flush(self) -> None:
        """Block until everything queued so far is on disk."""
        done = threading.Event()
        self._queue.put(("flush", done, None))
        while not done.wait(0.05):
            self._raise_if_failed()
        self._raise_if_failed()

    def close(self, status: str = "completed") -> None:
        self._queue.put(("close", status, None))
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"run writer failed: {self._error!r}") from self._error

    # -- writer thread ---------------------------------------------------------
    def _loop(self) -> None:
        while True:
            kind, payload, extra = self._queue.get()
            try:
                if kind == "chunk":
                    self._write_chunk(payload, extra)
                elif kind == "manifest":
                    self.manifest.update(payload)
                    self._write_manifest()
                elif kind == "flush":
                    payload.set()
                elif kind == "close":
                    self.manifest["status"] = payload
                    self.manifest["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                    self._write_manifest()
                    return
            except BaseException as exc:  # surfaced to the producer by _raise_if_failed
                self._error = exc
                if kind == "flush":
                    payload.set()
                if kind == "close":
                    return

    def _write_manifest(self) -> None:
        if self.num_processes > 1:
            (self.dir / "hosts").mkdir(exist_ok=True)
            atomic_write_json({"process_id": self.process_id, "owned_agents": self.owned,
                               "steps_done": self.manifest["steps_done"], "status": self.manifest["status"],
                               "files": sorted(self.files)},
                              self.dir / "hosts" / f"host-{self.process_id}.json")
        if self.lead:
            atomic_write_json(self.manifest, self.dir / "manifest.json")

    def merge_hosts(self) -> None:
        """(Process 0, after every process has closed) list every process's files in the manifest."""
        hosts = [json.loads(f.read_text()) for f in sorted((self.dir / "hosts").glob("host-*.json"))]
        hosts.sort(key=lambda h: h["process_id"])
        self.manifest["hosts"] = hosts
        self.manifest["files"] = sorted({f for h in hosts for f in h["files"]})
        atomic_write_json(self.manifest, self.dir / "manifest.json")

    def _mine(self, agent: np.ndarray) -> np.ndarray:
        if self.owned is None:
            return np.ones(np.shape(agent), bool)
        from ..distributed import owned_mask
        return owned_mask(agent, self.owned)

    def _write_chunk(self, chunk, extra: Mapping[str, np.ndarray]) -> None:
        if self.lead:
            self._write_metrics(chunk, extra)
        self._write_agents(chunk)
        self.manifest["steps_done"] = int(chunk.steps[-1]) + 1
        self._write_manifest()

    def _write_metrics(self, chunk, extra: Mapping[str, np.ndarray]) -> None:
        cols = {"step": pa.array(chunk.steps, pa.int64())}
        for name, values in {**chunk.metrics, **extra}.items():
            cols[name] = pa.array(np.asarray(values))
        batch = pa.RecordBatch.from_pydict(cols)
        if self._metrics and batch.schema != self._metrics[0].schema:
            batch = batch.select(self._metrics[0].schema.names).cast(self._metrics[0].schema)
        # A resumed run re-runs steps after its checkpoint: keep only the newest copy of a step.
        first = int(chunk.steps[0])
        self._metrics = [b.filter(pc.less(b.column("step"), first)) for b in self._metrics]
        self._metrics.append(batch)
        atomic_write_table(pa.Table.from_batches(self._metrics), self.dir / "metrics.parquet")
        self.files.add("metrics.parquet")

    def _write_agents(self, chunk) -> None:
        if chunk.samples and self.sample_every > 0:
            agent = chunk.samples.get("agent")
            if agent is None:
                raise ValueError("model.sample must return an 'agent' column")
            for i, step in enumerate(chunk.steps):
                if step % self.sample_every:
                    continue
                mine = self._mine(agent[i])
                part = self.dir / "agents" / f"step={int(step)}"
                part.mkdir(parents=True, exist_ok=True)
                table = pa.table({k: np.asarray(v[i])[mine] for k, v in chunk.samples.items()})
                name = f"part-{self.process_id}.parquet"
                atomic_write_table(table, part / name)
                self.files.add(f"agents/step={int(step)}/{name}")

        if chunk.events:
            valid = chunk.events["valid"].astype(bool)
            if "agent" in chunk.events:
                valid &= self._mine(chunk.events["agent"])
            elif not self.lead:
                valid[:] = False  # events that name no agent are process 0's to write
            if valid.any():
                steps = np.broadcast_to(chunk.steps[:, None], valid.shape)[valid]
                cols = {"step": steps.astype(np.int64)}
                cols.update({k: v[valid] for k, v in chunk.events.items() if k != "valid"})
                (self.dir / "events").mkdir(exist_ok=True)
                name = f"part-{self._event_part:06d}{self._suffix}.parquet"
                atomic_write_table(pa.table(cols), self.dir / "events" / name)
                self.files.add(f"events/{name}")
                self._event_part += 1
