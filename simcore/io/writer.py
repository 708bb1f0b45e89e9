"""Run directory output: a background writer that keeps every file readable.

Layout of a run directory::

    manifest.json            resolved scenario, seed, versions, device, times, status
    metrics.parquet          one row per step (always a ``step`` column)
    agents/step=N/part-0.parquet   sampled agent rows every K steps (hive partitions)
    events/part-NNNNNN.parquet     typed event trace, one file per chunk, where a model emits events

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
                 max_pending: int = 8):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = dict(manifest)
        self.manifest.setdefault("status", "running")
        self.manifest.setdefault("start_time", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.manifest.setdefault("steps_done", 0)
        self.sample_every = int(sample_every)
        self._metrics: list[pa.RecordBatch] = []
        existing = self.dir / "metrics.parquet"
        if existing.exists():  # resuming: keep what was flushed
            self._metrics = pq.read_table(existing).to_batches()
        self._event_part = len(list((self.dir / "events").glob("part-*.parquet"))) if (self.dir / "events").exists() else 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._extra: dict[str, Any] = {}
        atomic_write_json(self.manifest, self.dir / "manifest.json")
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
                    atomic_write_json(self.manifest, self.dir / "manifest.json")
                elif kind == "flush":
                    payload.set()
                elif kind == "close":
                    self.manifest["status"] = payload
                    self.manifest["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                    atomic_write_json(self.manifest, self.dir / "manifest.json")
                    return
            except BaseException as exc:  # surfaced to the producer by _raise_if_failed
                self._error = exc
                if kind == "flush":
                    payload.set()
                if kind == "close":
                    return

    def _write_chunk(self, chunk, extra: Mapping[str, np.ndarray]) -> None:
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

        if chunk.samples and self.sample_every > 0:
            agent = chunk.samples.get("agent")
            for i, step in enumerate(chunk.steps):
                if step % self.sample_every:
                    continue
                part = self.dir / "agents" / f"step={int(step)}"
                part.mkdir(parents=True, exist_ok=True)
                table = pa.table({k: np.asarray(v[i]) for k, v in chunk.samples.items()})
                if agent is None:
                    raise ValueError("model.sample must return an 'agent' column")
                atomic_write_table(table, part / "part-0.parquet")

        if chunk.events:
            valid = chunk.events["valid"].astype(bool)
            if valid.any():
                steps = np.broadcast_to(chunk.steps[:, None], valid.shape)[valid]
                cols = {"step": steps.astype(np.int64)}
                cols.update({k: v[valid] for k, v in chunk.events.items() if k != "valid"})
                (self.dir / "events").mkdir(exist_ok=True)
                atomic_write_table(pa.table(cols), self.dir / "events" / f"part-{self._event_part:06d}.parquet")
                self._event_part += 1

        self.manifest["steps_done"] = int(chunk.steps[-1]) + 1
        atomic_write_json(self.manifest, self.dir / "manifest.json")
