"""Checkpoints: save a running simulation, resume a killed run bit for bit.

A checkpoint is a directory ``checkpoints/step=N/`` holding

- ``state.npz``     the state pytree's leaves (``leaf_00000`` ...), in tree order;
- ``schedule.npz``  every scheduled parameter's full table, live edits included;
- ``params.npz``    the small parameter leaves (at most ``SMALL_PARAM`` = 4096 elements:
                    rates, tables set with ``set_param``) and the model's
                    ``decision_targets`` (per-agent values host policies write), by tree path;
- ``policies.npz``  (where a host policy keeps arrays, e.g. a pending pipelined LLM round's
                    per-agent archetype codes: 4 bytes per agent and decision) ``p<i>/<name>``;
- ``meta.json``     format, step, root seed, planned steps, the resolved scenario,
                    the state's tree structure and leaf shapes, a fingerprint of the
                    large parameters, the LLM cache reference, host policies' state.

Large parameters (population attributes, contact graph) are *not* saved: they are
rebuilt from the scenario and seed by :func:`simcore.models.build`, which is
deterministic, and checked against the fingerprint on restore. A checkpoint of
the ``epidemic`` model therefore costs about 4 bytes per agent (compressed less),
not the ~130 bytes per agent the graph takes.

Randomness needs no saved generator: step ``t`` draws from
``fold_in(root_key(seed), t)``, so the root seed and the step are the RNG position.

Every checkpoint is written to a hidden temporary directory and renamed into
place; ``meta.json`` is written last, so a directory without it is incomplete and
ignored. A run killed at any moment (SIGKILL included) leaves its latest complete
checkpoint and metrics flushed at least up to it. Resuming truncates every table of the run
directory to the checkpoint's step (:func:`simcore.rundir.truncate_run`) and appends after it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from scenarios import Scenario, ScenarioError

from . import rundir

if TYPE_CHECKING:
    from .engine import HostPolicy, Simulation
    from .io import RunWriter

FORMAT = "simcore-checkpoint/1"
SMALL_PARAM = 4096  # parameter leaves up to this many elements are saved (rates, archetype tables)


class CheckpointError(ScenarioError):
    """A missing, incomplete or mismatched checkpoint; ``field: reason`` like scenario errors (CLI exit 2)."""


# -- pytree <-> flat arrays ------------------------------------------------------------------
def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(x) -> tuple[np.ndarray, str | None]:
    if _is_key(x):  # typed PRNG keys: save the raw key data and the implementation name
        return np.asarray(jax.random.key_data(x)), str(jax.random.key_impl(x))
    return np.asarray(x), None


def _path_str(path) -> str:
    return jax.tree_util.keystr(path)


def _top(path) -> str:
    first = path[0]
    return str(getattr(first, "key", getattr(first, "name", first)))


def params_fingerprint(params: Mapping[str, Any], live: Iterable[str] = ()) -> dict[str, str]:
    """Per large leaf: shape, dtype and a hash of a strided sample (cheap even for a GB graph).

    ``live`` names parameters that policies rewrite during a run; they are saved, not fingerprinted.
    """
    live = set(live)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(params))[0]:
        size = int(np.prod(np.shape(leaf)))
        if size <= SMALL_PARAM or _top(path) in live:
            continue
        flat = jnp.ravel(leaf)
        stride = max(1, size // 65536)
        sample = np.asarray(flat[::stride])
        digest = hashlib.blake2b(sample.tobytes(), digest_size=12).hexdigest()
        out[_path_str(path)] = f"{tuple(np.shape(leaf))}:{np.dtype(leaf.dtype).name}:{digest}"
    return out


def saved_params(params: Mapping[str, Any], live: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """The parameter leaves a checkpoint keeps: small ones, and the ``live`` (policy-written) ones."""
    live = set(live)
    return {_path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(dict(params))[0]
            if int(np.prod(np.shape(x))) <= SMALL_PARAM or _top(p) in live}


# -- writing ---------------------------------------------------------------------------------
def _write_npz(path: Path, arrays: Mapping[str, np.ndarray], compress: bool) -> None:
    with open(path, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, **arrays)


def save_checkpoint(
    directory: str | Path,
    *,
    step: int,
    seed: int,
    state: Any,
    schedule: Mapping[str, np.ndarray],
    params: Mapping[str, Any] | None = None,
    scenario: Scenario | Mapping[str, Any] | None = None,
    steps: int | None = None,
    fingerprint: Mapping[str, str] | None = None,
    live_params: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
    policy_arrays: Mapping[str, np.ndarray] | None = None,
    compress: bool = True,
) -> Path:
    """Write one checkpoint to ``directory/step=<step>/`` atomically; returns its path.

    ``params`` (optional) contributes its small leaves and those named in
    ``live_params`` (per-agent values host policies write, e.g. a model's
    ``decision_targets``), and, unless ``fingerprint`` is given, the fingerprint
    of the other large ones.
    """
    live_params = sorted(set(live_params))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".tmp-*"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    final = directory / f"step={int(step)}"
    tmp = directory / f".tmp-step={int(step)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    leaves, treedef = jax.tree_util.tree_flatten(state)
    arrays, leaf_meta = {}, []
    for i, leaf in enumerate(leaves):
        host, impl = _to_host(leaf)
        arrays[f"leaf_{i:05d}"] = host
        leaf_meta.append({"shape": list(host.shape), "dtype": host.dtype.name, "key_impl": impl})
    _write_npz(tmp / "state.npz", arrays, compress)
    _write_npz(tmp / "schedule.npz", {k: np.asarray(v) for k, v in schedule.items()}, compress)
    small = saved_params(params, live_params) if params is not None else {}
    if small:
        _write_npz(tmp / "params.npz", small, compress)
    if policy_arrays:
        _write_npz(tmp / "policies.npz", {k: np.asarray(v) for k, v in policy_arrays.items()}, compress)
    if isinstance(scenario, Scenario):
        scenario = scenario.model_dump(mode="json")
    meta = {
        "format": FORMAT,
        "step": int(step),
        "seed": int(seed),
        "steps": None if steps is None else int(steps),
        "steps_done": int(step),
        "scenario": scenario,
        "treedef": str(treedef),
        "leaves": leaf_meta,
        "saved_params": sorted(small),
        "live_params": live_params,
        "params_fingerprint": dict(fingerprint) if fingerprint is not None
        else (params_fingerprint(params, live_params) if params is not None else {}),
        "llm_cache": llm_cache_reference(scenario),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bytes": 0,
        **dict(extra or {}),
    }
    meta["bytes"] = sum(f.stat().st_size for f in tmp.iterdir())
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    if final.exists():  # re-written after a resume: swap, then drop the old copy
        old = directory / f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def llm_cache_reference(scenario: Mapping[str, Any] | None) -> str | None:
    """The LLM response cache a run uses (``policy.cache`` / ``policy.cache_path``), if any."""
    policy = (scenario or {}).get("policy") or {}
    for key in ("cache", "cache_path", "llm_cache"):
        value = policy.get(key)
        if isinstance(value, (str, os.PathLike)):
            return str(value)
    return None


def save_simulation(sim: "Simulation", directory: str | Path, *, scenario: Scenario | Mapping | None = None,
                    steps: int | None = None, fingerprint: Mapping[str, str] | None = None,
                    policies: Iterable["HostPolicy"] = (), extra: Mapping[str, Any] | None = None,
                    compress: bool = True) -> Path:
    """Checkpoint ``sim`` at its current step (state, schedule, small params, policies' state).

    A policy's ``state_dict()`` is JSON, except its ``"arrays"`` entry (name -> array), which
    goes to ``policies.npz`` and comes back in the blob ``load_state_dict`` receives.
    """
    pol, arrays = [], {}
    for i, p in enumerate(q for q in policies if hasattr(q, "state_dict")):
        blob = dict(p.state_dict())
        for name, arr in (blob.pop("arrays", None) or {}).items():
            arrays[f"p{i}/{name}"] = arr
        pol.append(blob)
    more = {"policies": pol, **dict(extra or {})} if pol else dict(extra or {})
    return save_checkpoint(directory, step=sim.step, seed=sim.seed, state=sim.state, schedule=sim.schedule,
                           params=sim.params, scenario=scenario, steps=steps, fingerprint=fingerprint,
                           live_params=getattr(sim.model, "decision_targets", ()), extra=more, policy_arrays=arrays,
                           compress=compress)


# -- reading ---------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A loaded checkpoint: host arrays plus metadata."""

    path: Path
    meta: dict
    leaves: list[np.ndarray]
    schedule: dict[str, np.ndarray]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    policy_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # policies.npz

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

    @property
    def llm_calls_logged(self) -> int | None:
        """The llm_calls rows the archetype policy had logged (its blob's ``rows_logged``), or None when the
        checkpoint holds no archetype policy. Other policies' blobs are not counted, even an older deep-agents
        blob that used the same key for its own table."""
        counts = [int(b["rows_logged"]) for b in self.meta.get("policies") or []
                  if isinstance(b, Mapping) and "rows_logged" in b
                  and b.get("kind", "archetype_policy") == "archetype_policy"]
        return max(counts) if counts else None

    def scenario(self) -> Scenario:
        from scenarios import validate

        if not self.meta.get("scenario"):
            raise CheckpointError("checkpoint", f"{self.path} records no scenario")
        return validate(self.meta["scenario"])

    def state_like(self, template: Any) -> Any:
        """The saved state in the tree structure of ``template`` (a freshly built state), checked leaf by leaf."""
        leaves, treedef = jax.tree_util.tree_flatten(template)
        if str(treedef) != self.meta["treedef"] or len(leaves) != len(self.leaves):
            raise CheckpointError("checkpoint", f"{self.path}: state structure differs from the model's "
                                                f"({len(self.leaves)} saved leaves, {len(leaves)} expected)")
        out = []
        for i, (fresh, saved, info) in enumerate(zip(leaves, self.leaves, self.meta["leaves"])):
            if info.get("key_impl"):
                arr = jax.random.wrap_key_data(jnp.asarray(saved), impl=info["key_impl"])
            else:
                arr = jnp.asarray(saved)
            if arr.shape != jnp.shape(fresh) or arr.dtype != fresh.dtype:
                raise CheckpointError("checkpoint", f"{self.path}: state leaf {i} is {arr.dtype}{list(arr.shape)}, "
                                                    f"the model builds {fresh.dtype}{list(jnp.shape(fresh))}")
            out.append(_placed_like(arr, fresh))
        return jax.tree_util.tree_unflatten(treedef, out)

    def params_like(self, params: Mapping[str, Any]) -> dict:
        """``params`` with the saved small leaves put back; large leaves checked against the fingerprint."""
        saved_fp = self.meta.get("params_fingerprint") or {}
        if saved_fp:
            now = params_fingerprint(params, self.meta.get("live_params") or ())
            bad = sorted(k for k in set(saved_fp) | set(now) if saved_fp.get(k) != now.get(k))
            if bad:
                raise CheckpointError("checkpoint", f"{self.path}: rebuilt parameters differ from the saved run's "
                                                    f"({', '.join(bad[:3])}); same scenario, seed and code version?")
        missing = set(self.params) - {_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(dict(params))[0]}
        if missing:
            raise CheckpointError("checkpoint", f"{self.path}: saved parameters unknown to the model: {sorted(missing)}")

        def put(path, leaf):
            key = _path_str(path)
            if key not in self.params:
                return leaf
            return _placed_like(jnp.asarray(self.params[key], dtype=jnp.asarray(leaf).dtype).reshape(jnp.shape(leaf)),
                                leaf)

        return jax.tree_util.tree_map_with_path(put, dict(params))

    def restore_into(self, sim: "Simulation", policies: Iterable["HostPolicy"] = ()) -> None:
        """Put state, step, schedule, small params and policies' state into a freshly built ``sim``."""
        if sim.seed != self.seed:
            raise CheckpointError("checkpoint", f"{self.path}: saved with seed {self.seed}, simulation has {sim.seed}")
        sim.state = self.state_like(sim.state)
        sim.params = self.params_like(sim.params)
        unknown = set(self.schedule) ^ set(sim.schedule)
        if unknown:
            raise CheckpointError("checkpoint", f"{self.path}: scheduled parameters differ: {sorted(unknown)}")
        sim.schedule = {k: np.array(v, np.float32) for k, v in self.schedule.items()}
        sim.step = self.step
        saved = list(self.meta.get("policies") or [])
        with_state = [p for p in policies if hasattr(p, "load_state_dict")]
        if len(saved) != len(with_state) and saved:
            raise CheckpointError("checkpoint", f"{self.path}: saved the state of {len(saved)} host policies, "
                                                f"the run has {len(with_state)}")
        for i, (policy, blob) in enumerate(zip(with_state, saved)):
            mine = {k.split("/", 1)[1]: v for k, v in self.policy_arrays.items() if k.split("/", 1)[0] == f"p{i}"}
            policy.load_state_dict({**blob, "arrays": mine} if mine else blob)


def _placed_like(arr: jax.Array, template: Any) -> jax.Array:
    """``arr`` on the devices and with the sharding of ``template`` (a sharded run stays sharded)."""
    sharding = getattr(template, "sharding", None)
    return jax.device_put(arr, sharding) if sharding is not None else arr


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise CheckpointError("checkpoint", f"not a complete checkpoint (no meta.json): {path}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError("checkpoint", f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    state = _load_npz(path / "state.npz")
    leaves = [state[f"leaf_{i:05d}"] for i in range(len(meta["leaves"]))]
    params = _load_npz(path / "params.npz") if (path / "params.npz").exists() else {}
    arrays = _load_npz(path / "policies.npz") if (path / "policies.npz").exists() else {}
    return Checkpoint(path, meta, leaves, _load_npz(path / "schedule.npz"), params, arrays)


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run directory (or of a ``checkpoints`` folder), by step."""
    return rundir.list_checkpoints(run_dir)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


# -- checkpointing a run and resuming it -------------------------------------------------------
class Checkpointer:
    """A host policy that checkpoints every ``every`` steps into ``run_dir/checkpoints``.

    It runs before the other policies at a step, so a resumed run repeats their
    updates at that step. It flushes the run writer first, so ``metrics.parquet``
    always reaches the latest checkpoint. ``keep`` keeps only the newest ones.
    """

    def __init__(self, every: int, run_dir: str | Path, *, scenario: Scenario, steps: int,
                 writer: "RunWriter | None" = None, policies: Iterable["HostPolicy"] = (),
                 keep: int | None = None, start_step: int = 0, extra: Mapping[str, Any] | None = None,
                 flush: "Callable[[], None] | None" = None):
        if every < 1:
            raise ValueError(f"checkpoint every must be >= 1, got {every}")
        self.every = int(every)
        self.dir = Path(run_dir) / "checkpoints"
        self.scenario = scenario
        self.steps = steps
        self.writer = writer
        self.flush = flush  # the session's: hands its buffered chunks to the writer first
        self.policies = list(policies)
        self.keep = keep
        self.start_step = start_step
        self.extra = {k: v for k, v in (extra or {}).items() if v is not None}
        self._fingerprint: dict | None = None
        self.seconds = 0.0
        self.written: list[Path] = []

    def update(self, sim: "Simulation") -> None:
        if sim.step == self.start_step:  # nothing new since the start (or since the checkpoint resumed from)
            return
        self.save(sim)

    def save(self, sim: "Simulation") -> Path:
        t0 = time.perf_counter()
        if self.flush is not None:
            self.flush()
        if self.writer is not None:
            self.writer.flush()
        if self._fingerprint is None:
            self._fingerprint = params_fingerprint(sim.params, getattr(sim.model, "decision_targets", ()))
        path = save_simulation(sim, self.dir, scenario=self.scenario, steps=self.steps,
                               fingerprint=self._fingerprint, policies=self.policies, extra=self.extra)
        self.written.append(path)
        if self.keep:
            for _, old in list_checkpoints(self.dir)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.seconds += time.perf_counter() - t0
        if self.writer is not None:
            self.writer.update_manifest(last_checkpoint=sim.step, checkpoint_seconds=round(self.seconds, 4))
        return path


def truncate_outputs(run_dir: str | Path, step: int) -> None:
    """Drop everything a run wrote for steps >= ``step`` (metrics and llm_calls rows, agent samples, events,
    later checkpoints): :func:`simcore.rundir.truncate_run`."""
    rundir.truncate_run(run_dir, step)


def read_manifest(run_dir: str | Path) -> dict:
    """:func:`simcore.rundir.read_manifest`, its error as a :class:`CheckpointError` (CLI exit 2)."""
    try:
        return rundir.read_manifest(run_dir)
    except rundir.ManifestError as exc:
        raise CheckpointError(exc.field, exc.reason) from None


def resume_manifest(run_dir: Path, ckpt: Checkpoint, fresh: Mapping[str, Any]) -> dict:
    """The manifest a resumed run continues with: the old one, refreshed, plus a ``resumed`` record.

    Also truncates the run directory's outputs to the checkpoint's step.
    """
    old = read_manifest(run_dir)
    if old.get("seed") is not None and int(old["seed"]) != ckpt.seed:
        raise CheckpointError("checkpoint", f"{ckpt.path}: seed {ckpt.seed} but the run directory has {old['seed']}")
    # an LLM policy's checkpoint counts its call-log rows and cuts llm_calls itself (load_state_dict)
    counted = ckpt.llm_calls_logged is not None
    rundir.truncate_run(run_dir, ckpt.step,
                        tables=[t for t in rundir.APPENDED + rundir.PARTITIONED if not (counted and t == "llm_calls")])
    history = list(old.get("resumed") or [])
    history.append({"from_step": ckpt.step, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "previous_status": old.get("status")})
    out = {**old, **{k: v for k, v in fresh.items() if k not in ("start_time",)}}
    out.update(status="running", steps_done=ckpt.step, resumed=history)
    out.pop("end_time", None)
    return out


def checkpoint_size(path: str | Path, n_agents: int | None = None) -> dict[str, float]:
    """Bytes on disk of a checkpoint directory, and per agent when ``n_agents`` is given."""
    total = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    out = {"bytes": float(total)}
    if n_agents:
        out["bytes_per_agent"] = total / n_agents
    return out


__all__ = [
    "Checkpoint", "CheckpointError", "Checkpointer", "FORMAT", "checkpoint_size", "latest_checkpoint",
    "list_checkpoints", "llm_cache_reference", "load_checkpoint", "params_fingerprint", "resume_manifest",
    "restore_simulation", "save_checkpoint", "save_simulation", "saved_params", "truncate_outputs",
]


def restore_simulation(checkpoint: "str | Path | Checkpoint", *, chunk_size: int | None = None,
                       policies: Iterable["HostPolicy"] = ()):
    """A :class:`~simcore.engine.Simulation` continuing from ``checkpoint``; returns ``(sim, built)``.

    The population and graph are rebuilt from the saved scenario with the
    checkpoint's ``population_seed`` (the run seed unless an experiment shared one
    population across replicates), then checked against the saved fingerprint.
    """
    from .engine import Simulation
    from .models import build

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    scenario = ckpt.scenario()
    steps = ckpt.meta.get("steps") or scenario.run.steps
    built = build(scenario, seed=int(ckpt.meta.get("population_seed", ckpt.seed)), steps=steps)
    sim = Simulation(built.model, built.state, built.params, built.schedule, seed=ckpt.seed,
                     chunk_size=chunk_size or scenario.run.chunk_size, sample_idx=built.sample_idx)
    ckpt.restore_into(sim, policies)
    return sim, built
