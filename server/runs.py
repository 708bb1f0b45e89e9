"""Live runs: one worker thread per simulation, commanded through a queue.

A :class:`RunController` is a thread and a command queue over a
:class:`simcore.session.RunSession`, the same session ``simcore run`` uses (build, the
scenario's LLM policy with its cache and call log, writer, checkpoints). The session's
loop asks the controller before each chunk how far it may go (``allowance``): there the
worker applies the commands queued by the HTTP side (pause, resume, step, stop,
intervene), and waits while paused. HTTP handlers never touch the simulation
themselves, so a slow or vanished client can never stall a run. Live runs checkpoint
every ``checkpoint_every`` steps (and where they stop), and a finished or killed one
continues from its latest checkpoint with :meth:`RunManager.resume`.

Each finished chunk is turned into JSON rows once, in the worker, and appended to
an in-memory history; stream subscribers keep a cursor into that list and are woken
through the event loop (``call_soon_threadsafe``), so fifty clients cost fifty
cursor reads, not fifty copies of the data.

:class:`RunManager` keeps the live controllers, enforces the concurrency limit and
lists past runs from their ``manifest.json`` files.
"""
from __future__ import annotations

import asyncio
import bisect
import concurrent.futures as cf
import datetime as _dt
import json
import logging
import math
import queue
import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from scenarios import Scenario, ScenarioError
from simcore import rundir

log = logging.getLogger("simcore.server")

ACTIVE = ("queued", "building", "running", "paused")
FINISHED = ("completed", "stopped", "failed", "interrupted")
MODES = ("set", "multiply", "add")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,159}$")


class RunError(Exception):
    """A command that cannot be applied in the run's current state (HTTP 409)."""


class RunLimitError(Exception):
    """Too many concurrent runs (HTTP 429)."""


def valid_run_id(run_id: str) -> bool:
    """Ids are single path components made of safe characters, never ``.``/``..``."""
    return bool(_ID_RE.match(run_id)) and ".." not in run_id


def _session():
    """``simcore.session``, imported when a run starts (it imports JAX; listing past runs does not)."""
    import simcore.session

    return simcore.session


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def rows_from_chunk(steps: np.ndarray, columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per-step JSON-ready rows. Non-finite floats become ``None`` (JSON has no NaN)."""
    names = list(columns)
    lists = []
    for name in names:
        col = np.asarray(columns[name])
        if col.dtype.kind == "f" and not np.isfinite(col).all():
            lists.append([None if not math.isfinite(v) else v for v in col.tolist()])
        else:
            lists.append(col.tolist())
    out = []
    for i, step in enumerate(steps.tolist()):
        row = {"step": step}
        for name, values in zip(names, lists):
            row[name] = values[i]
        out.append(row)
    return out


def flush_interval(rows: int) -> float:
    """Seconds between writer submits for a run with ``rows`` steps written: 0.5 s, growing past 5,000 rows."""
    return min(60.0, max(0.5, rows / 10_000))


# -- the stream hub: history + wake-ups on the event loop -----------------------------------
class Hub:
    """The run's rows for streaming, plus an asyncio wake-up the worker thread can trigger.

    Rows are kept as the chunks' own numpy columns (about 8 bytes per value, so a long
    run stays small) and turned into JSON per requested slice on the event loop; the text
    is cached, so subscribers woken together share one serialisation. Row ``i`` is step
    ``i``: runs start at 0 and append in order. Once the run is over and nobody streams
    from memory, the rows are released: ``metrics.parquet`` has them all.
    """

    def __init__(self) -> None:
        self.n = 0  # rows so far
        self.version = 0  # bumps on every change (rows, status, interventions)
        self.subscribers = 0  # live streams reading from memory (event loop thread only)
        self.released = False
        self._chunks: list[tuple[int, dict[str, np.ndarray]]] = []  # (first step, columns)
        self._starts: list[int] = []
        self._finished = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._payloads: dict[tuple, str] = {}

    def extend(self, first_step: int, columns: dict[str, np.ndarray]) -> None:
        """Worker thread: append one chunk's rows."""
        length = len(next(iter(columns.values())))
        with self._lock:
            self._chunks.append((first_step, columns))
            self._starts.append(first_step)
            self.n = first_step + length
        self.touch()

    def payload(self, start: int, stop: int, cols: list[str] | None) -> str:
        """JSON array of rows [start, stop): every column, or ``step`` plus those of ``cols`` the run has."""
        key = (start, stop, None if cols is None else tuple(cols))
        hit = self._payloads.get(key)
        if hit is not None:
            return hit
        with self._lock:
            first = max(0, bisect.bisect_right(self._starts, start) - 1)
            parts = [c for c in self._chunks[first:] if c[0] < stop]
        rows: list[dict[str, Any]] = []
        for t0, columns in parts:
            length = len(next(iter(columns.values())))
            lo, hi = max(start, t0) - t0, min(stop, t0 + length) - t0
            if hi <= lo:
                continue
            picked = columns if cols is None else {k: columns[k] for k in cols if k in columns}
            rows.extend(rows_from_chunk(np.arange(t0 + lo, t0 + hi), {k: v[lo:hi] for k, v in picked.items()}))
        hit = json.dumps(rows, separators=(",", ":"))
        if len(self._payloads) >= 64:
            self._payloads.pop(next(iter(self._payloads)))
        self._payloads[key] = hit
        return hit

    def finish(self) -> None:
        """Worker thread, at the end of the run: release the rows once no stream reads them."""
        self._finished = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.release_if_idle)
                return
            except RuntimeError:  # the loop closed meanwhile: nobody can be streaming
                pass
        self.release_if_idle()

    def release_if_idle(self) -> None:
        if self._finished and self.subscribers == 0 and not self.released:
            with self._lock:
                self._chunks, self._starts = [], []
            self._payloads.clear()
            self.released = True

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def touch(self) -> None:
        self.version += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # loop closed between the check and the call: nobody is listening
                pass

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, seen_version: int, timeout: float) -> None:
        """Return when ``version`` differs from ``seen_version`` (or after ``timeout``)."""
        if self.version != seen_version:
            return
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        if self.version != seen_version:  # changed while the event was being created
            return
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return


# -- commands ---------------------------------------------------------------------------------
@dataclass
class Command:
    kind: str  # pause | resume | step | stop | intervene
    args: dict[str, Any] = field(default_factory=dict)
    done: cf.Future = field(default_factory=cf.Future)


class RunController:
    """One simulation in its own thread. Public methods are thread-safe and never block on the run."""

    def __init__(
        self,
        run_id: str,
        run_dir: Path,
        scenario: Scenario,
        *,
        source: str,
        overrides: list[str],
        start_paused: bool = False,
        max_chunk: int = 5,
        policy_factory: Callable[[Scenario, Any], tuple[list, Callable | None]] | None = None,
        checkpoint_every: int = 0,
        resume: bool = False,
    ):
        self.id = run_id
        self.dir = run_dir
        self.scenario = scenario
        self.source = source
        self.overrides = list(overrides)
        self.steps = scenario.run.steps
        self.seed = scenario.run.seed
        self.chunk = max(1, min(scenario.run.chunk_size, max_chunk))
        self.policy_factory = policy_factory
        self.checkpoint_every = int(checkpoint_every)
        self.resuming = resume  # continue self.dir from its latest checkpoint
        self.status = "queued"
        self.step = 0
        self.error: str | None = None
        self.created = _now()
        self.live_interventions: list[dict[str, Any]] = []
        self.steps_per_second: float | None = None  # wall clock, chunk to chunk, smoothed
        self.schedule_now: dict[str, float] = {}
        self.hub = Hub()
        self.labels: dict[str, list[str]] = {}
        self.network: dict[str, Any] | None = None
        self.network_error: str | None = None
        self._net_state: np.ndarray | None = None
        self._net_step = -1
        self._net_view = None  # the session's NetworkView (simcore.netview)
        self._paused = start_paused
        self._pending_steps = 0
        self._step_waiters: list[tuple[int, cf.Future]] = []
        self._stop = False
        self._queue: queue.Queue[Command] = queue.Queue()
        self._cmd_lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=f"simcore-run-{run_id}", daemon=True)
        self._session = None  # the RunSession, once the worker made it
        self._last_end: float | None = None

    # -- HTTP side ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def command(self, kind: str, **args: Any) -> cf.Future:
        """Queue a command; the returned future resolves once the worker has applied it."""
        with self._cmd_lock:
            if not self.active:
                raise RunError(f"run {self.id} is {self.status}")
            if kind == "step" and not (self._paused or any(c.kind == "pause" for c in list(self._queue.queue))):
                raise RunError("step needs a paused run (pause it first)")
            cmd = Command(kind, args)
            self._queue.put(cmd)
        return cmd.done

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scenario": self.scenario.name,
            "model": self.scenario.model.kind,
            "agents": self.scenario.population.size,
            "status": self.status,
            "step": self.step,
            "steps": self.steps,
            "seed": self.seed,
            "live": True,
            "created": self.created,
            "steps_per_second": self.steps_per_second,
            "error": self.error,
        }

    def detail(self) -> dict[str, Any]:
        from scenarios import REGISTRY

        return {
            **self.summary(),
            "source": self.source,
            "overrides": self.overrides,
            "chunk": self.chunk,
            "scheduled_params": list(REGISTRY.entry_for(self.scenario).scheduled_params(self.scenario)),
            "schedule_now": dict(self.schedule_now),
            "live_interventions": list(self.live_interventions),
        }

    def network_view(self) -> dict[str, Any] | None:
        if self.network is None:
            return None
        states = self._net_state
        return {**self.network, "step": self._net_step,
                "state": None if states is None else states.tolist()}

    # -- worker side ------------------------------------------------------------------------
    def _set_status(self, status: str) -> None:
        self.status = status
        self.hub.touch()

    def _main(self) -> None:
        final = "failed"
        try:
            final = self._run()
        except Exception as exc:  # the run fails, the server lives on; the reason goes to the manifest
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("run %s failed:\n%s", self.id, traceback.format_exc())
            final = "failed"
        finally:
            session = self._session
            if session is not None:
                try:
                    if self.error and session.writer is not None:
                        session.writer.update_manifest(error=self.error)
                    final = session.close(final if final == "failed" else None)
                except Exception as exc:  # a policy or the writer failed at the end: reported, status changes
                    self.error = self.error or f"{type(exc).__name__}: {exc}"
                    final = "failed"
                if session.sim is not None:
                    self.step = session.sim.step
                session.sim = None  # frees device memory; the network view keeps its last state
            for _, fut in self._step_waiters:
                fut.set_result({"status": final, "step": self.step})
            self._step_waiters = []
            with self._cmd_lock:  # no command can slip in between the final status and the drain
                self.status = final
                self._fail_pending()
            self._set_status(final)
            self.hub.finish()

    def _fail_pending(self) -> None:
        while True:
            try:
                cmd = self._queue.get_nowait()
            except queue.Empty:
                return
            cmd.done.set_exception(RunError(f"run {self.id} ended ({self.status})"))

    def _make_session(self):
        from simcore.session import RunSession

        factory = None
        if self.policy_factory is not None:
            factory = lambda built: self.policy_factory(self.scenario, built)  # noqa: E731
        kw = dict(chunk_size=self.chunk, short_chunks_of_one=True, submit_interval=flush_interval,
                  policy_factory=factory)
        if self.resuming:
            return RunSession.resume(self.dir, checkpoint_every=self.checkpoint_every or None, **kw)
        extra = {"server": {"source": self.source, "overrides": self.overrides, "run_id": self.id},
                 "live_interventions": []}
        return RunSession(self.scenario, self.dir, steps=self.steps, seed=self.seed, manifest_extra=extra,
                          checkpoint_every=self.checkpoint_every, **kw)

    def _run(self) -> str:
        self._set_status("building")
        session = self._session = self._make_session()
        session.open()  # build, the scenario's LLM layer, writer, checkpointer: as `simcore run` does
        built, sim = session.built, session.sim
        self.labels = {k: list(v) for k, v in built.model.labels.items()}
        self.live_interventions = list(session.live_interventions)
        self.step = sim.step
        if sim.step > 0:  # resumed: the stream starts with what the run directory already holds
            self._replay_history(sim.step)
        self._init_network(session)
        session.built = None  # the session needs no more of the build; the population can go
        del built
        self._refresh_schedule(sim)
        self._set_status("paused" if self._paused else "running")
        session.run(on_chunk=self._chunk_done, allowance=self._allowance)
        session.flush()
        self._capture_network(sim, force=True)
        return "completed" if sim.step >= self.steps else "stopped"

    def _replay_history(self, upto: int) -> None:
        from .data import read_metrics

        table = read_metrics(self.dir, end=upto)
        if table.num_rows:
            self.hub.extend(0, {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names if c != "step"})

    def _allowance(self) -> int | None:
        """Before each chunk (worker thread): apply queued commands; wait while paused. Steps allowed now."""
        session = self._session
        while True:
            idle = self._paused and self._pending_steps == 0
            if idle:
                session.flush(sync=True)  # paused: what is shown is on disk
            self._drain(session, block=idle)
            if self._stop:
                return 0
            if self._paused and self._pending_steps == 0:
                self._last_end = None  # a pause is not a slow step
                continue
            return self._pending_steps if self._paused else None

    def _chunk_done(self, session, chunk, cols) -> None:
        sim = session.sim
        length = len(chunk.steps)
        now = time.perf_counter()
        if self._paused:
            self._pending_steps -= length
        if self._last_end is not None:
            rate = length / max(now - self._last_end, 1e-9)
            self.steps_per_second = rate if self.steps_per_second is None else 0.8 * self.steps_per_second + 0.2 * rate
        self._last_end = now
        self.step = sim.step
        self._refresh_schedule(sim)
        self._capture_network(sim)
        self.hub.extend(int(chunk.steps[0]), {**chunk.metrics, **cols})
        if self._step_waiters and self._pending_steps == 0:
            session.flush(sync=True)  # a step call answers with its rows on disk
        self._settle_steps(sim)

    def _drain(self, session, *, block: bool) -> None:
        while True:
            try:
                cmd = self._queue.get(timeout=0.5) if block else self._queue.get_nowait()
            except queue.Empty:
                if block and not self._stop:
                    continue  # paused: keep waiting for a command
                return
            block = False
            try:
                result = self._apply(cmd, session)
            except (RunError, ScenarioError) as exc:
                cmd.done.set_exception(exc)
            except (ValueError, KeyError) as exc:
                cmd.done.set_exception(RunError(str(exc)))
            else:
                if result is not None:
                    cmd.done.set_result(result)

    def _apply(self, cmd: Command, session) -> dict[str, Any]:
        sim = session.sim
        if cmd.kind in ("pause", "resume", "stop"):
            self._settle_steps(sim, force=True)
        if cmd.kind == "pause":
            session.flush(sync=True)  # the answer to pause means: these rows are on disk
            self._paused = True
            self._pending_steps = 0
            self._set_status("paused")
        elif cmd.kind == "resume":
            self._paused = False
            self._pending_steps = 0
            self._set_status("running")
        elif cmd.kind == "step":
            if not self._paused:
                raise RunError("step needs a paused run (pause it first)")
            n = min(int(cmd.args.get("n", 1)), self.steps - sim.step)
            self._pending_steps += n
            # answered once the steps have run (see _settle_steps), not when queued
            self._step_waiters.append((sim.step + self._pending_steps, cmd.done))
            return None
        elif cmd.kind == "stop":
            self._stop = True
        elif cmd.kind == "intervene":
            return self._intervene(session, **cmd.args)
        else:
            raise RunError(f"unknown command {cmd.kind!r}")
        return {"status": self.status, "step": sim.step}

    def _settle_steps(self, sim, force: bool = False) -> None:
        keep = []
        for target, fut in self._step_waiters:
            if force or sim.step >= target:
                fut.set_result({"status": self.status, "step": sim.step})
            else:
                keep.append((target, fut))
        self._step_waiters = keep

    def _intervene(self, session, *, param: str, value: float, mode: str = "set",
                   start: int | None = None, end: int | None = None) -> dict[str, Any]:
        record = session.intervene(param, value, mode=mode, start=start, end=end)  # manifest on disk records it
        self.live_interventions = list(session.live_interventions)
        self._refresh_schedule(session.sim)
        self.hub.touch()
        return record

    def _refresh_schedule(self, sim) -> None:
        row = min(sim.step, self.steps - 1)
        self.schedule_now = {k: float(np.asarray(v[row]).reshape(-1)[0]) for k, v in sim.schedule.items()}

    # -- the small network view (the session's; on disk for past runs) ----------------------------
    def _init_network(self, session) -> None:
        if session.network is None:
            self.network_error = session.network_error
            return
        self.network = session.network.graph
        self._net_view = session.network

    def _capture_network(self, sim, force: bool = False) -> None:
        if self.network is None:
            return
        if not force and self._net_step >= 0 and sim.step - self._net_step < max(5, self.chunk):
            return
        self._net_state = self._net_view.state(sim.state)
        self._net_step = sim.step


# -- past runs on disk ----------------------------------------------------------------------------
def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """A past run's manifest, or None where it is missing or corrupt (a listing skips such a directory)."""
    try:
        return rundir.read_manifest(run_dir)
    except rundir.ManifestError:
        return None


def summary_from_manifest(run_id: str, m: dict[str, Any]) -> dict[str, Any]:
    return {"id": run_id, **rundir.manifest_summary(m), "live": False, "steps_per_second": None}


class RunManager:
    """Live controllers plus the runs directory."""

    def __init__(self, runs_dir: Path, *, max_runs: int = 4, max_chunk: int = 5,
                 policy_factory: Callable | None = None, checkpoint_every: int = 100):
        self.runs_dir = Path(runs_dir)
        self.checkpoint_every = int(checkpoint_every)  # live runs checkpoint this often (0: never)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.max_runs = max_runs
        self.max_chunk = max_chunk
        self.policy_factory = policy_factory
        self.live: dict[str, RunController] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._manifest_cache: dict[str, tuple[float, dict[str, Any]]] = {}

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        for ctl in self.live.values():
            ctl.hub.attach(loop)

    # -- runs ----------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path | None:
        """The directory of an existing run, or None. Never leaves the runs directory."""
        if not valid_run_id(run_id):
            return None
        path = (self.runs_dir / run_id)
        try:
            resolved = path.resolve(strict=True)
        except OSError:
            return None
        if resolved.parent != self.runs_dir.resolve() or not (resolved / "manifest.json").is_file():
            return None
        return resolved

    def exists(self, run_id: str) -> bool:
        return run_id in self.live or self.run_dir(run_id) is not None

    def start(self, scenario: Scenario, *, source: str, overrides: Iterable[str], start_paused: bool = False) -> RunController:
        with self._lock:
            active = [c for c in self.live.values() if c.active]
            if len(active) >= self.max_runs:
                raise RunLimitError(f"{len(active)} runs already active (limit {self.max_runs}); stop one first")
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            run_id = f"{_session().slug(scenario.name)}-{stamp}"
            while (self.runs_dir / run_id).exists() or run_id in self.live:
                run_id += "x"
            # the server decides where output goes; the manifest says so truthfully
            scenario = scenario.model_copy(update={"output": scenario.output.model_copy(update={"dir": str(self.runs_dir)})})
            ctl = RunController(run_id, self.runs_dir / run_id, scenario, source=source, overrides=list(overrides),
                                start_paused=start_paused, max_chunk=self.max_chunk,
                                policy_factory=self.policy_factory, checkpoint_every=self.checkpoint_every)
            ctl.hub.attach(self._loop)
            self.live[run_id] = ctl
        ctl.start()
        return ctl

    def resume(self, run_id: str, *, start_paused: bool = False) -> RunController:
        """Continue a finished, stopped or killed run from its latest checkpoint, live, in its own directory."""
        session = _session()
        with self._lock:
            ctl = self.live.get(run_id)
            if ctl is not None and ctl.active:
                raise RunError(f"run {run_id} is {ctl.status}")
            d = self.run_dir(run_id)
            m = self.manifest(run_id) if d is not None else None
            if d is None or m is None:
                raise KeyError(run_id)
            session.resume_point(d, field="run")  # CheckpointError (a ScenarioError): nothing to resume from
            if m.get("status") == "completed":
                raise RunError(f"run {run_id} completed all its {m.get('steps')} steps")
            active = [c for c in self.live.values() if c.active]
            if len(active) >= self.max_runs:
                raise RunLimitError(f"{len(active)} runs already active (limit {self.max_runs}); stop one first")
            server = m.get("server") or {}
            ctl = RunController(run_id, d, Scenario.model_validate(m["scenario"]), source=server.get("source", "resume"),
                                overrides=server.get("overrides", []), start_paused=start_paused,
                                max_chunk=self.max_chunk, policy_factory=self.policy_factory,
                                checkpoint_every=int(m.get("checkpoint_every") or self.checkpoint_every),
                                resume=True)
            ctl.hub.attach(self._loop)
            self.live[run_id] = ctl
        ctl.start()
        return ctl

    def get_live(self, run_id: str) -> RunController | None:
        return self.live.get(run_id) if valid_run_id(run_id) else None

    def manifest(self, run_id: str) -> dict[str, Any] | None:
        d = self.run_dir(run_id)
        if d is None:
            return None
        try:
            mtime = (d / "manifest.json").stat().st_mtime
        except OSError:
            return None
        hit = self._manifest_cache.get(run_id)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        m = read_manifest(d)
        if m is not None:
            self._manifest_cache[run_id] = (mtime, m)
        return m

    def list_runs(self) -> list[dict[str, Any]]:
        out = {rid: ctl.summary() for rid, ctl in list(self.live.items())}
        for path in self.runs_dir.iterdir():
            rid = path.name
            if rid in out or not path.is_dir():
                continue
            m = self.manifest(rid)
            if m is not None:
                out[rid] = summary_from_manifest(rid, m)
        return sorted(out.values(), key=lambda r: (r.get("created") or "", r["id"]), reverse=True)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop every live run and wait for its writer to flush (status ``stopped``)."""
        ctls = [c for c in self.live.values() if c.active]
        for ctl in ctls:
            ctl._stop = True  # seen by a paused worker within 0.5 s, by a running one after its chunk
            try:
                ctl.command("stop")
            except RunError:
                continue
        deadline = time.monotonic() + timeout
        for ctl in ctls:
            if not ctl.join(max(0.0, deadline - time.monotonic())):
                log.warning("run %s did not stop within %.0f s", ctl.id, timeout)
