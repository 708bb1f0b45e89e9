"""Run directory output: a background writer that keeps every file readable.

The layout, the manifest and each table's files belong to :mod:`simcore.rundir`; this
module only decides *when* to write (a background thread, one flush per chunk):

- ``metrics``: one part file per chunk (:class:`simcore.rundir.TableAppender`), O(new rows)
  per flush, compacted into ``metrics.parquet`` when the writer closes;
- ``agents/step=N/part-P.parquet`` every ``sample_every`` steps, ``events/part-NNNNNN[-pP].parquet``
  per chunk;
- ``manifest.json`` (``steps_done`` after every chunk), ``hosts/host-P.json`` in multi-process runs.

In a multi-process run (:mod:`simcore.distributed`) process 0 writes the manifest
and the metrics (global reductions, the same on every process); each
process writes the agent rows and events of the agents it owns, and the manifest's
``hosts`` lists every process's files.

Every file is written under a temporary name and renamed into place, so a run killed
at any moment (SIGKILL included) leaves every table readable up to the last flushed
chunk (read it with :func:`simcore.rundir.read_table`).
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from .. import rundir


class RunWriter:
    """Writes chunks from a background thread; ``submit`` returns at once.

    An error in the writer thread is re-raised by the next ``submit`` or ``close``:
    output is never dropped silently.
    """

    def __init__(self, run_dir: str | Path, manifest: Mapping[str, Any], *, sample_every: int = 0,
                 max_pending: int = 8, compact_every: int = rundir.COMPACT_EVERY,
                 process_id: int = 0, num_processes: int = 1,
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
        self._metrics = rundir.TableAppender(self.dir, "metrics", compact_every=compact_every) if self.lead else None
        self._next_step: int | None = None  # the step after the last metrics row written
        self._suffix = rundir.event_suffix(self.process_id, self.num_processes)
        self._event_part = rundir.next_event_part(self.dir, self._suffix)
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
                    if self._metrics is not None:
                        self._metrics.close()  # one metrics.parquet again
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
            rundir.write_host(self.dir, self.process_id,
                              {"process_id": self.process_id, "owned_agents": self.owned,
                               "steps_done": self.manifest["steps_done"], "status": self.manifest["status"],
                               "files": sorted(self.files)})
        if self.lead:
            rundir.write_manifest(self.dir, self.manifest)

    def merge_hosts(self) -> None:
        """(Process 0, after every process has closed) list every process's files in the manifest."""
        hosts = rundir.read_hosts(self.dir)
        self.manifest["hosts"] = hosts
        self.manifest["files"] = sorted({f for h in hosts for f in h["files"]})
        rundir.write_manifest(self.dir, self.manifest)

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
        first = int(chunk.steps[0])
        # steps written before and written again (a run continuing in its directory, at its first chunk,
        # or a caller re-running steps): the newest copy wins, so drop the old rows from that step on
        reopened = self._next_step is None and rundir.has_table(self.dir, "metrics")
        if reopened or (self._next_step is not None and first < self._next_step):
            self._metrics.truncate(first)
        self._metrics.append(pa.table(cols))  # one part file: O(rows of this chunk)
        self._next_step = int(chunk.steps[-1]) + 1
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
                table = pa.table({k: np.asarray(v[i])[mine] for k, v in chunk.samples.items()})
                self.files.add(rundir.write_agents(self.dir, int(step), self.process_id, table))

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
                self.files.add(rundir.write_events(self.dir, self._event_part, pa.table(cols), self._suffix))
                self._event_part += 1
