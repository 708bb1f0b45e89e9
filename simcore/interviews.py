"""Interviews: ask one agent (or one archetype) of a run a question about the run at step N.

``simcore interview RUN_DIR --step N (--agent ID | --archetype KEY) "question"`` and the server's
``POST /api/runs/{id}/interviews`` both call :func:`interview` (the server through
:mod:`simcore.session`, which re-exports it). An interview:

1. **restores** the run's state at step N (:func:`restore`): the nearest checkpoint at or before N,
   advanced to N by a :class:`~simcore.session.RunSession` built exactly as
   :meth:`~simcore.session.RunSession.resume` builds one (same scenario, seed, checkpoint, policies),
   driven by the session's own loop. The session runs in a scratch directory, so the run's own
   files are only read: its LLM policy answers from the run's response cache through a
   :class:`~llm_policy.backends.ReplayBackend` (a question the run never asked fails loudly rather
   than diverging), its call log up to the checkpoint is copied to the scratch directory, and live
   interventions recorded after the checkpoint are applied as the live run applied them;
2. builds the **context**: the persona (``personas:`` templates, or a ``feature: level`` listing),
   the agent's features and statistics at N, its sampled rows up to N, its local environment (what
   the model's registry entry's ``interview_context`` gives, plus the interventions in force) and,
   when the run has a ``deep_agents`` table, its memories;
3. **asks** the backend: with ``options``, one log-prob-scored call (probabilities reported, they sum
   to 1); otherwise free text bounded by ``max_tokens``;
4. **appends** one row to the run's ``interviews`` table (:mod:`simcore.rundir`).

Archetype keys: ``feature=level[,feature=level...]`` over exactly the ``group_by`` features of one
of the run's policy decisions or survey items (any order, level codes as in the model's labels,
e.g. ``age_band=30t39,borough=Bronx,case_trend=rising``); a run without a policy accepts any
combination of the model's features. The archetype's context is its persona and its members'
aggregates at N.

Bad input raises :class:`scenarios.ScenarioError` (``field: reason``; the CLI exits 2) before anything
is restored or written.
"""
from __future__ import annotations

import datetime as _dt
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from scenarios import ScenarioError

from . import rundir

TABLE = "interviews"
MAX_HISTORY = 12  # sampled rows shown
MAX_MEMORIES = 8  # deep-agent memories shown (reflections first, then observations)
CHARS_PER_TOKEN = 4  # a free answer's maxLength: max_tokens * this
JSON_FRAME_TOKENS = 16  # what {"answer": "..."} costs beyond the answer
RETRIES = 2


@dataclass
class Restored:
    """A run's state at ``step``, on the host, and what it was rebuilt from."""

    scenario: Any
    built: Any
    state: Any
    params: Any
    schedule: dict[str, np.ndarray]
    step: int
    checkpoint_step: int
    seconds: float
    seed: int = 0  # the run's seed (the checkpoint's: an experiment's or an overridden one, not always run.seed)


# -- input -------------------------------------------------------------------------------------------
def parse_options(options: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a|b|c"`` (or a list) -> options; None or "" -> () (a free answer)."""
    if options is None or options == "":
        return ()
    items = [o.strip() for o in (options.split("|") if isinstance(options, str) else options)]
    if len(items) < 2 or any(not o for o in items):
        raise ScenarioError("options", f"give at least two non-empty options separated by '|', got {options!r}")
    if len(set(items)) != len(items):
        raise ScenarioError("options", f"options must be distinct, got {options!r}")
    return tuple(items)


def archetype_groupings(manifest: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The ``group_by`` tuples a key may name: the policy's decisions' and survey items' (in order, unique)."""
    sc = manifest.get("scenario") or {}
    found: list[tuple[str, ...]] = []
    for d in (sc.get("policy") or {}).get("decisions") or []:
        found.append(tuple(d.get("group_by") or ()))
    for survey in sc.get("surveys") or []:
        for item in survey.get("items") or []:
            if item.get("group_by"):
                found.append(tuple(item["group_by"]))
    return list(dict.fromkeys(g for g in found if g))


def _key_forms(groupings, labels) -> str:
    return "; ".join(",".join(f"{f}={'|'.join(labels.get(f, ()))}" for f in g) for g in groupings)


def parse_archetype(key: str, manifest: Mapping[str, Any]) -> dict[str, str]:
    """``"feature=level,..."`` -> {feature: level code}, checked against the run's groupings and labels."""
    labels = {k: tuple(v) for k, v in (manifest.get("labels") or {}).items()}
    groupings = archetype_groupings(manifest)
    valid = f"valid keys: {_key_forms(groupings, labels)}" if groupings else \
        f"features: {', '.join(sorted(labels))}"
    out: dict[str, str] = {}
    for part in str(key).split(","):
        name, sep, level = (s.strip() for s in part.partition("="))
        if not sep or not name or not level:
            raise ScenarioError("archetype", f"expected feature=level[,feature=level...], got {key!r} ({valid})")
        if name in out:
            raise ScenarioError("archetype", f"feature {name!r} given twice in {key!r} ({valid})")
        if name not in labels:
            raise ScenarioError("archetype", f"unknown feature {name!r} ({valid})")
        if level not in labels[name]:
            raise ScenarioError("archetype", f"unknown level {level!r} of {name} ({valid})")
        out[name] = level
    if groupings and set(out) not in [set(g) for g in groupings]:
        raise ScenarioError("archetype", f"{key!r} is not an archetype of this run ({valid})")
    return out


def _run_cache(run_dir: Path, manifest: Mapping[str, Any]) -> Path | None:
    named = manifest.get("llm_cache")
    for cand in ([Path(named)] if named else []) + [run_dir / "llm_cache.sqlite"]:
        if cand.is_file():
            return cand
    return None


def _check(run_dir, step, question, agent, archetype, options, max_tokens, backend):
    """Every bad-input check, before anything is restored or written; returns (manifest, options, key levels)."""
    run_dir = Path(run_dir)
    try:
        manifest = rundir.read_manifest(run_dir)
    except rundir.ManifestError as exc:
        raise ScenarioError("run_dir", exc.reason) from None
    if not isinstance(question, str) or not question.strip():
        raise ScenarioError("question", "is empty: give the question to ask")
    if (agent is None) == (archetype is None or archetype == ""):
        raise ScenarioError("agent", "give exactly one of --agent ID and --archetype KEY")
    done = int(manifest.get("steps_done") or 0)
    step = int(step)
    if step < 0 or step > done:
        raise ScenarioError("step", f"must be between 0 and the run's last step {done}, got {step}")
    ckpts = [s for s, _ in rundir.list_checkpoints(run_dir) if s <= step]
    if not ckpts:
        have = [s for s, _ in rundir.list_checkpoints(run_dir)]
        raise ScenarioError("step", f"no checkpoint at or before step {step} in {run_dir / 'checkpoints'} "
                                    f"(checkpoints: {have or 'none'}; run with --checkpoint-every N)")
    opts = parse_options(options)
    if int(max_tokens) < 1:
        raise ScenarioError("max_tokens", f"must be >= 1, got {max_tokens}")
    levels = None
    if agent is not None:
        n = int(manifest.get("n_agents") or 0)
        if not (0 <= int(agent) < n):
            raise ScenarioError("agent", f"unknown agent id {agent}: the run has agents 0..{n - 1}")
    else:
        levels = parse_archetype(archetype, manifest)
    policy = (manifest.get("scenario") or {}).get("policy")
    if backend is None and policy is None:
        raise ScenarioError("backend", "the run has no policy block: pass a backend (--backend KIND)")
    if isinstance(backend, (str, Mapping)):
        from llm_policy.backends import check_backend_spec

        try:
            spec = {"kind": backend} if isinstance(backend, str) else dict(backend)
            if spec.get("kind") == "replay":
                spec.setdefault("cache", "the run's llm_cache.sqlite")  # filled in when opened
            check_backend_spec(spec)
        except ValueError as exc:
            raise ScenarioError("backend", str(exc)) from None
    return manifest, step, opts, levels


# -- restore -----------------------------------------------------------------------------------------
def restore(run_dir: str | Path, step: int, *, backend: Any = None) -> Restored:
    """The run's state at ``step``: its nearest checkpoint at or before ``step``, advanced by a session.

    ``backend`` replaces the replay of the run's LLM answers (an object or factory, as
    :class:`~simcore.session.RunSession` takes); by default the run's LLM policy answers from the
    run's own response cache (:class:`~llm_policy.backends.ReplayBackend`). Nothing in ``run_dir``
    is written.
    """
    import jax

    from .checkpoint import load_checkpoint
    from .session import RunSession

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    manifest = rundir.read_manifest(run_dir)
    found = [(s, p) for s, p in rundir.list_checkpoints(run_dir) if s <= int(step)]
    if not found:
        raise ScenarioError("step", f"no checkpoint at or before step {step}")
    ckpt = load_checkpoint(found[-1][1])
    scenario = ckpt.scenario()
    total = int(ckpt.meta.get("steps") or manifest.get("steps") or scenario.run.steps)
    cache = _run_cache(run_dir, manifest)
    if (scenario.policy is not None or scenario.deep_agents is not None) and backend is None:
        if cache is None:
            raise ScenarioError("run_dir", "the run's LLM answers cannot be replayed: no llm_cache.sqlite")
        from llm_policy.backends import ReplayBackend

        identity = manifest.get("llm_backend")
        backend = lambda: ReplayBackend(cache, identity=identity)  # noqa: E731 - a factory, opened by the session
    scratch = Path(tempfile.mkdtemp(prefix="simcore-interview-"))
    try:
        counted = ckpt.llm_calls_logged or 0
        if counted:  # the policy restores its call log up to the checkpoint: a copy, so the run's stays as it is
            log = rundir.read_table(run_dir, "llm_calls").slice(0, counted)
            appender = rundir.TableAppender(scratch, "llm_calls")
            appender.append(log)
            appender.close()
        # as RunSession.resume builds it, in a scratch directory and writing nothing of its own
        session = RunSession(scenario, scratch, steps=total, seed=ckpt.seed, resume_from=ckpt, write=False,
                             backend=backend, llm_cache=cache)
        with session:
            for rec in manifest.get("live_interventions") or []:  # made after the checkpoint, in their order
                if ckpt.step < int(rec["step"]) <= int(step):
                    session.sim.intervene(rec["param"], float(rec["value"]), start=int(rec["start"]),
                                          end=int(rec["end"]), mode=rec.get("mode", "set"))
            session.run(int(step) - ckpt.step)
            sim = session.sim
            state = jax.device_get(sim.state)
            params = sim.params
            schedule = {k: np.asarray(jax.device_get(v)) for k, v in sim.schedule.items()}
            reached = sim.step
        built = session.built
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if reached != int(step):
        raise RuntimeError(f"restore reached step {reached}, wanted {step}")
    return Restored(scenario, built, state, params, schedule, int(step), ckpt.step, time.perf_counter() - t0,
                    int(ckpt.seed))


# -- context -----------------------------------------------------------------------------------------
def _words(scenario, feature: str, code: str) -> str:
    """A level code in words: ``personas.labels``, else a decision's labels, else the code."""
    if scenario.personas is not None and code in scenario.personas.labels.get(feature, {}):
        return scenario.personas.labels[feature][code]
    for d in (scenario.policy.decisions if scenario.policy is not None else ()):
        if code in d.labels.get(feature, {}):
            return d.labels[feature][code]
    return code


def _fmt(x: float) -> str:
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.0f}" if abs(x) >= 100 or x == int(x) else f"{x:.3g}"


def _history(run_dir: Path, agent: int, step: int, labels: Mapping[str, Sequence[str]]) -> list[str]:
    if not rundir.agent_steps(run_dir):
        return []
    import polars as pl

    rows = (rundir.scan_table(run_dir, "agents").filter((pl.col("agent") == agent) & (pl.col("step") <= step))
            .sort("step").collect())
    out = []
    for row in rows.tail(MAX_HISTORY).iter_rows(named=True):
        parts = []
        for k, v in row.items():
            if k in ("agent", "step"):
                continue
            lab = labels.get(k)
            parts.append(f"{k.replace('_', ' ')} {lab[int(v)] if lab and 0 <= int(v) < len(lab) else _fmt(v)}")
        out.append(f"day {row['step']}: " + ", ".join(parts))
    return out


def _memories(run_dir: Path, agent: int, step: int) -> list[str]:
    """The agent's deep-agent memories up to ``step`` (reflections first, then observations and decisions)."""
    if not rundir.has_table(run_dir, "deep_agents"):
        return []
    import polars as pl

    rows = (rundir.scan_table(run_dir, "deep_agents").filter((pl.col("agent_id") == agent) & (pl.col("step") <= step))
            .collect())
    if rows.height == 0:
        return []
    rank = pl.when(pl.col("kind") == "reflection").then(0).otherwise(1)
    rows = (rows.with_columns(rank.alias("_rank"))
            .sort(["_rank", "step"], descending=[False, True], maintain_order=True).head(MAX_MEMORIES))
    return [f"day {r['step']} ({r['kind']}): {r['text']}" for r in rows.iter_rows(named=True)]


def _in_force(scenario, step: int, live: Sequence[Mapping]) -> str:
    """The scenario's interventions and the live ones in force at ``step``."""
    names = [iv.name or iv.param for iv in scenario.interventions if iv.start <= step < iv.end]
    names += [f"{r['param']} {r.get('mode', 'set')} {r['value']}" for r in live if r["start"] <= step < r["end"]]
    return ", ".join(dict.fromkeys(names)) or "none"


def _environment(r: Restored, run_dir: Path, members: np.ndarray) -> list[str]:
    """The model's own local-environment lines (its registry entry's ``interview_context``), if it has one."""
    from scenarios.registry import REGISTRY, resolve

    ref = REGISTRY.entry_for(r.scenario).interview_context
    if ref is None:
        return []
    import polars as pl

    metrics = (rundir.scan_table(run_dir, "metrics").filter(pl.col("step") <= r.step).sort("step").collect()
               if rundir.has_table(run_dir, "metrics") else pl.DataFrame())
    return list(resolve(ref)(r.built, r.state, r.params, members, metrics, r.step))


def build_context(r: Restored, run_dir: str | Path, *, agent: int | None = None,
                  levels: Mapping[str, str] | None = None, live: Sequence[Mapping] = ()) -> tuple[str, np.ndarray]:
    """The context text of an agent (or of an archetype: ``levels``) at the restored step, and its members."""
    import jax

    from llm_policy.personas import render_persona

    run_dir = Path(run_dir)
    model, sc = r.built.model, r.scenario
    feats = {k: np.asarray(v) for k, v in jax.device_get(model.features(r.state, r.params)).items()} \
        if model.features is not None else {}
    stats = {k: np.asarray(v) for k, v in jax.device_get(model.stats(r.state, r.params)).items()} \
        if model.stats is not None else {}
    if agent is not None:
        members = np.array([int(agent)], np.int64)
        codes = {f: model.labels[f][int(v[agent])] for f, v in feats.items()}
    else:
        mask = np.ones(r.built.n_agents, bool)
        for f, code in levels.items():
            mask &= feats[f] == list(model.labels[f]).index(code)
        members = np.flatnonzero(mask)
        if len(members) == 0:
            raise ScenarioError("archetype", f"no agent has {','.join(f'{k}={v}' for k, v in levels.items())} "
                                             f"at step {r.step}")
        codes = dict(levels)
    try:
        persona = render_persona(sc.personas, r.seed, codes)
    except KeyError as exc:  # an archetype key that leaves out a field the persona templates name
        raise ScenarioError("archetype", f"the persona templates name {exc}: include it in the key") from None
    date = ""
    if sc.policy is not None:
        date = (_dt.date.fromisoformat(sc.policy.start_date) + _dt.timedelta(days=r.step)).strftime(" (%d %B %Y)")
    lines = [persona, ""]
    if agent is not None:
        lines.append(f"You are agent {agent}. On day {r.step}{date}:")
        lines += [f"- {f.replace('_', ' ')}: {_words(sc, f, c)}" for f, c in codes.items()]
        lines += [f"- {s.replace('_', ' ')}: {_fmt(v[agent])}" for s, v in stats.items()]
    else:
        lines.append(f"You speak for the {len(members):,} people with "
                     f"{', '.join(f'{f.replace(chr(95), chr(32))} {_words(sc, f, c)}' for f, c in codes.items())}. "
                     f"On day {r.step}{date}, among them:")
        for f, v in feats.items():
            if f in codes:
                continue
            counts = np.bincount(v[members].astype(np.int64), minlength=len(model.labels[f]))
            shares = [f"{_words(sc, f, model.labels[f][i])} {100 * c / len(members):.0f}%"
                      for i, c in enumerate(counts) if c]
            lines.append(f"- {f.replace('_', ' ')}: {', '.join(shares)}")
        lines += [f"- mean {s.replace('_', ' ')}: {_fmt(v[members].mean())}" for s, v in stats.items()]
    env = _environment(r, run_dir, members)
    lines += [f"- {e}" for e in env]
    lines.append(f"- interventions in force: {_in_force(sc, r.step, live)}")
    if agent is not None:
        hist = _history(run_dir, int(agent), r.step, model.labels)
        if hist:
            lines += ["", "Your earlier days:"] + [f"- {h}" for h in hist]
        mem = _memories(run_dir, int(agent), r.step)
        if mem:
            lines += ["", "Your memories:"] + [f"- {m}" for m in mem]
    return "\n".join(lines), members


def render_prompt(context: str, question: str, options: Sequence[str]) -> str:
    ask = f"\n\nInterviewer: {question.strip()}"
    if options:
        return context + ask + f"\n(Answer {', '.join(options[:-1])} or {options[-1]}.)\nAnswer:"
    return context + ask + "\nAnswer:"


# -- the backend ---------------------------------------------------------------------------------------
def open_answer_backend(run_dir: Path, manifest: Mapping[str, Any], backend: Any):
    """The backend the question goes to: ``backend`` (an object, a factory, a kind or a spec dict), else the
    run's own policy backend; a spec (the run's or given) is wrapped in the run's response cache."""
    from llm_policy.cache import CachedBackend, ResponseCache
    from llm_policy.policy import open_backend

    if backend is not None and not isinstance(backend, (str, Mapping)):
        return backend() if callable(backend) and not hasattr(backend, "score") else backend
    if isinstance(backend, str):
        spec = {"kind": backend}
    elif isinstance(backend, Mapping):
        spec = dict(backend)
    else:
        spec = dict((manifest["scenario"]["policy"] or {}).get("backend") or {})
    if spec.get("kind") == "replay" and "cache" not in spec:
        cache = _run_cache(run_dir, manifest)
        spec["cache"] = str(cache) if cache else str(run_dir / "llm_cache.sqlite")
    if not spec.get("kind"):
        raise ScenarioError("backend", "the run's policy names no backend kind: pass one")
    try:
        inner = open_backend(spec)
    except ScenarioError as exc:
        raise ScenarioError("backend", exc.reason) from None
    if spec.get("kind") == "replay" or isinstance(inner, CachedBackend):
        return inner
    cache = _run_cache(run_dir, manifest) or run_dir / "llm_cache.sqlite"
    return CachedBackend(inner, ResponseCache(cache))  # the run's response cache: an interview asked again is a hit


def _ask(backend, prompt: str, options: Sequence[str], max_tokens: int):
    """(answer, probabilities, tokens, retries, error)."""
    from llm_policy.types import BackendError, ScoreRequest, validate_json

    if options:
        req = ScoreRequest(prompt, tuple(" " + o for o in options), 1.0)
        res = None
        for attempt in range(RETRIES + 1):
            res = backend.score([req])[0]
            if res.ok and all(math.isfinite(p) for p in res.probs):
                probs = [float(p) for p in res.probs]
                return options[int(np.argmax(probs))], probs, int(res.prompt_tokens + res.completion_tokens), \
                    attempt + int(res.retries), None
        return "", [math.nan] * len(options), None, RETRIES, res.error or "non-finite probabilities"
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": CHARS_PER_TOKEN * max_tokens}},
              "required": ["answer"], "additionalProperties": False}
    err = None
    for attempt in range(RETRIES + 1):
        try:
            value = backend.generate_json(prompt, schema, max_tokens=max_tokens + JSON_FRAME_TOKENS, temperature=0.0)
        except BackendError as exc:
            err = str(exc)
            continue
        errors = validate_json(value, schema)  # the bound holds whatever the backend checks itself
        if errors:  # not retried: a greedy generation (and the response cache) would give it again
            return "", [], None, attempt, f"answer outside its bound: {'; '.join(errors)}"
        return str(value["answer"]).strip(), [], None, attempt, None
    return "", [], None, RETRIES, err


# -- the interview -------------------------------------------------------------------------------------
def interview(run_dir: str | Path, step: int, question: str, *, agent: int | None = None,
              archetype: str | None = None, options: str | Sequence[str] | None = None, max_tokens: int = 64,
              backend: Any = None, replay_backend: Any = None) -> dict[str, Any]:
    """Ask ``question`` of agent ``agent`` (or archetype ``archetype``) of the run at ``step``; returns the row
    appended to ``interviews``.

    ``options``: ``"a|b|c"`` or a list: a choice scored from log-probs (``probs`` in option order); else a
    free answer of at most ``max_tokens`` tokens. ``backend``: an object or factory, a kind (``"llamacpp"``)
    or a backend spec dict; default: the run's policy backend with its response cache (a run without a
    policy needs one). ``replay_backend``: what the restore's LLM policy answers from (default: the run's
    cache, replayed). Bad input: :class:`~scenarios.ScenarioError`, nothing written.
    """
    run_dir = Path(run_dir)
    manifest, step, opts, levels = _check(run_dir, step, question, agent, archetype, options, max_tokens, backend)
    restored = restore(run_dir, step, backend=replay_backend)
    context, members = build_context(restored, run_dir, agent=None if agent is None else int(agent), levels=levels,
                                     live=manifest.get("live_interventions") or [])
    prompt = render_prompt(context, question, opts)
    answerer = open_answer_backend(run_dir, manifest, backend)
    try:
        t0 = time.perf_counter()
        answer, probs, tokens, retries, error = _ask(answerer, prompt, opts, int(max_tokens))
        seconds = time.perf_counter() - t0
        identity = getattr(answerer, "identity", type(answerer).__name__)
    finally:
        close = getattr(answerer, "close", None)
        if close is not None:
            close()
    row = {
        "step": int(step), "agent_id": None if agent is None else int(agent),
        "archetype": None if agent is not None else ",".join(f"{k}={v}" for k, v in levels.items()),
        "n_members": int(len(members)), "question": question.strip(), "options": list(opts), "answer": answer,
        "probs": [float(p) for p in probs], "prompt": prompt, "backend": identity, "tokens": tokens,
        "max_tokens": int(max_tokens), "retries": int(retries), "error": error,
        "restore_seconds": float(restored.seconds), "seconds": float(seconds),
        "checkpoint_step": int(restored.checkpoint_step),
        "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    append_interview(run_dir, row)
    return row


def append_interview(run_dir: str | Path, row: Mapping[str, Any]) -> None:
    """One row onto the run's ``interviews`` table (one part file, then compacted into ``interviews.parquet``)."""
    import pyarrow as pa

    table = pa.Table.from_pylist([dict(row)], schema=ROW_SCHEMA)
    appender = rundir.TableAppender(run_dir, TABLE)
    appender.append(table)
    appender.close()


def read_interviews(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every interview of a run, oldest first ([] if none)."""
    if not rundir.has_table(run_dir, TABLE):
        return []
    return rundir.read_table(run_dir, TABLE).to_pylist()


def _row_schema():
    import pyarrow as pa

    return pa.schema([
        ("step", pa.int64()), ("agent_id", pa.int64()), ("archetype", pa.string()), ("n_members", pa.int64()),
        ("question", pa.string()), ("options", pa.list_(pa.string())), ("answer", pa.string()),
        ("probs", pa.list_(pa.float64())), ("prompt", pa.string()), ("backend", pa.string()),
        ("tokens", pa.int64()), ("max_tokens", pa.int64()), ("retries", pa.int64()), ("error", pa.string()),
        ("restore_seconds", pa.float64()), ("seconds", pa.float64()), ("checkpoint_step", pa.int64()),
        ("time", pa.string()),
    ])


ROW_SCHEMA = _row_schema()

__all__ = ["ROW_SCHEMA", "Restored", "append_interview", "archetype_groupings", "build_context", "interview",
           "parse_archetype", "parse_options", "read_interviews", "render_prompt", "restore"]
