"""Deep agents: a few agents with a memory stream, reflections and their own LLM decisions (docs/deep_agents.md).

A host policy (:class:`DeepAgents`) for ``K`` agents picked by the scenario's ``deep_agents:`` block.
Every ``deep_agents.every`` steps, before the step:

1. **Observe** -- one device gather of the K agents' rows of the model's ``features`` and
   ``stats`` (what the archetype policy groups on and shows: for the epidemic its own disease,
   labour and isolation state, its age band, borough and occupation, its borough's case trend and
   weekly cases) -> one small host transfer. Each agent's row becomes an observation memory's text,
   with the interventions in force. Importance (1..10): ``min(10, 1 + 3 * c)``, ``c`` = the number of
   features whose level changed since the agent's previous observation (its first: 1 + 3 = 4).
2. **Reflect** (every ``reflect_every`` steps) -- the top memories go into a prompt; the backend
   writes a short reflection (a plain ``complete`` cut at the line's end, at most ``reflection_tokens`` tokens); stored as a
   memory of importance 8. A failed call falls back to the top memory's text, counted.
3. **Decide** -- per decision, the top memories and the latest observation fill the prompt; the
   options are scored from log-probs; ``P = sum(value[o] * P(o))`` is the event's probability over
   ``every`` steps, ``h = 1 - (1 - P)**(1/every)`` its per-step hazard, and the target (the same one
   the archetype policy fills) receives ``logit(h)`` where the model maps answers on the device,
   else ``h``. A failed call gives NaN: the model's heuristic for that agent, counted.

The decision values are written into the model's per-agent target parameter at the K indices
only (``param.at[idx].set(values)``, a device op); every other agent's value is untouched. They
are re-applied at every step where the archetype policy (which rewrites the whole array) runs.

Retrieval score of memory ``m`` at step ``t`` for query ``q`` (weights ``w``):
``score = recency**w_recency * importance**w_importance * relevance**w_relevance`` with
``recency = decay**(t - m.step)``, ``importance = m.importance / 10`` and relevance, in (0, 1]:

* ``lexical``: ``(1 + |W(q) & W(m)|) / (1 + min(|W(q)|, |W(m)|))``, ``W`` = the set of lower-case
  words (``[a-z0-9]+``) of at least 3 characters;
* ``embedding``: ``(1 + cos(e(q), e(m))) / 2`` with the backend's ``embed``.

The ``top_k`` highest (ties: the newer memory, then the earlier stored) are retrieved.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa

from scenarios.loader import ScenarioError
from simcore.rundir import TableAppender

from .policy import RoundStats  # the archetype policy's counters: the same figures per round
from .types import ScoreRequest, ScoreResult, ThreadRequest, ThreadResult, run_threads

REFLECTION_IMPORTANCE = 8.0
DECISION_IMPORTANCE = 5.0
PROMPT_FIELDS = ("memories", "observation", "options", "step", "persona")
CONTEXT_FIELDS = ("memories", "observation", "step", "persona")
QUESTION_FIELDS = ("options", "step")  # a decision's prompt after a context: the question alone
REFLECTION_PROMPT = "What this person concludes: This person"  # ends inside the sentence: at a colon Gemma stops
REFLECTION_QUERY = "what matters most to me about my health, my work and my household"
SCHEMA = pa.schema([("step", pa.int64()), ("agent_id", pa.int64()), ("kind", pa.string()), ("text", pa.string()),
                    ("importance", pa.float32()), ("target", pa.string()), ("p", pa.float32())])
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class Memory:
    step: int
    kind: str
    text: str
    importance: float
    embedding: list[float] | None = None


def words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 3}


def lexical_relevance(query: str, text: str) -> float:
    """``(1 + |W(q) & W(m)|) / (1 + min(|W(q)|, |W(m)|))``: in (0, 1], 1 when one word set holds the other."""
    q, m = words(query), words(text)
    return (1 + len(q & m)) / (1 + min(len(q), len(m)))


def retrieval_scores(memories: list[Memory], step: int, relevance: np.ndarray, decay: float,
                     weights: Mapping[str, float]) -> np.ndarray:
    """The documented score of each memory at ``step`` (module docstring)."""
    age = np.array([step - m.step for m in memories], np.float64)
    recency = decay ** age
    importance = np.array([m.importance for m in memories], np.float64) / 10.0
    return (recency ** weights.get("recency", 1.0) * importance ** weights.get("importance", 1.0)
            * np.asarray(relevance, np.float64) ** weights.get("relevance", 1.0))


def top_memories(scores: np.ndarray, memories: list[Memory], top_k: int) -> list[int]:
    """Indices of the ``top_k`` best scores; ties: newer step first, then the earlier stored."""
    order = sorted(range(len(memories)), key=lambda i: (-scores[i], -memories[i].step, i))
    return order[:top_k]


def select_agents(spec, feats: Mapping[str, np.ndarray] | None, labels: Mapping[str, tuple], n: int,
                  seed: int) -> np.ndarray:
    """The deep agents' ids (sorted): ``ids``, a seeded ``sample`` of ``k``, or the first ``k`` matching ``rule``
    in a seeded order. ``feats`` (host arrays) is needed for ``rule`` only."""
    if spec.select == "ids":
        return np.array(sorted(spec.ids), np.int64)
    rng = np.random.default_rng([seed, 0xDEE9])
    if spec.select == "sample":
        return np.sort(rng.choice(n, size=spec.k, replace=False)).astype(np.int64)
    mask = np.ones(n, bool)
    for f, codes in spec.rule.items():
        levels = [labels[f].index(c) for c in codes]
        mask &= np.isin(np.asarray(feats[f]), levels)
    pool = np.flatnonzero(mask)
    if len(pool) < spec.k:
        raise ScenarioError("deep_agents.rule", f"{len(pool)} agents match the rule, k is {spec.k}")
    return np.sort(rng.permutation(pool)[:spec.k]).astype(np.int64)


def check_deep_agents(spec, *, n_agents: int, features: Mapping[str, tuple] | Iterable[str],
                      decision_targets: Iterable[str], policy_every: int | None = None,
                      has_embed: bool | None = None, need_backend: bool = True) -> None:
    """``deep_agents:`` against the model and the population (names only); raises ScenarioError."""
    from .policy import check_template

    levels = dict(features) if isinstance(features, Mapping) else {f: () for f in features}
    if spec.k > n_agents:
        raise ScenarioError("deep_agents.k", f"must be <= population.size ({n_agents}), got {spec.k}")
    if spec.select == "ids":
        if not spec.ids:
            raise ScenarioError("deep_agents.ids", "select: ids needs a non-empty list of agent ids")
        bad = [i for i in spec.ids if i >= n_agents]
        if bad:
            raise ScenarioError("deep_agents.ids", f"agent id {bad[0]} is out of range (population.size {n_agents})")
        if len(set(spec.ids)) != len(spec.ids):
            raise ScenarioError("deep_agents.ids", "ids must be distinct")
    if spec.select == "rule":
        if not spec.rule:
            raise ScenarioError("deep_agents.rule", "select: rule needs feature: [levels] conditions")
        for f, codes in spec.rule.items():
            if f not in levels:
                raise ScenarioError(f"deep_agents.rule.{f}", f"unknown feature {f!r} (features: "
                                    f"{', '.join(sorted(levels))})")
            unknown = [c for c in codes if levels[f] and c not in levels[f]]
            if unknown:
                raise ScenarioError(f"deep_agents.rule.{f}", f"unknown level {unknown[0]!r} "
                                    f"(levels: {', '.join(levels[f])})")
    for k, f in enumerate(spec.household):
        if f not in levels:
            raise ScenarioError(f"deep_agents.household[{k}]", f"unknown feature {f!r} (features: "
                                f"{', '.join(sorted(levels))})")
    if spec.reflect_every % spec.every:
        raise ScenarioError("deep_agents.reflect_every", f"must be a multiple of every ({spec.every}): reflections "
                            f"are written on decision steps, got {spec.reflect_every}")
    if spec.context:
        check_template("deep_agents.context", spec.context, set(CONTEXT_FIELDS))
    targets = tuple(decision_targets)
    seen = set()
    for i, d in enumerate(spec.decisions):
        if d.target not in targets:
            raise ScenarioError(f"deep_agents.decisions[{i}].target", f"unknown decision target {d.target!r} "
                                f"(targets: {', '.join(targets) or 'none'})")
        if d.target in seen:
            raise ScenarioError(f"deep_agents.decisions[{i}].target", f"{d.target!r} is decided twice")
        seen.add(d.target)
        check_template(f"deep_agents.decisions[{i}].prompt", d.prompt,
                       set(QUESTION_FIELDS if spec.context else PROMPT_FIELDS))

    if need_backend and spec.k and spec.backend is None and policy_every is None:
        raise ScenarioError("deep_agents.backend", "needs a backend (or a policy: block whose backend it shares)")
    if spec.relevance == "embedding" and has_embed is False:
        raise ScenarioError("deep_agents.relevance", "embedding relevance needs a backend with embed(); "
                            "use relevance: lexical")


class DeepAgents:
    """Host policy (see the module docstring). ``every`` is the cadence the session calls it on: the gcd
    of ``deep_agents.every`` and the archetype policy's, so its values survive the archetype rounds."""

    def __init__(self, spec, model, backend, ids: np.ndarray, *, policy_every: int | None = None,
                 interventions: Iterable = (), temperature: float = 1.0):
        self.spec = spec
        self.model = model
        self.backend = backend
        self.ids = np.asarray(ids, np.int64)
        self.temperature = temperature
        self.observe_every = spec.observe_every or spec.every
        own = math.gcd(spec.every, self.observe_every)
        self.every = math.gcd(own, policy_every) if policy_every else own
        self.mates: list[np.ndarray] = []  # each agent's household members (set by make_deep_agents)
        self._mates_idx = None
        self.interventions = [(iv.name, int(iv.start), int(iv.end)) for iv in interventions]
        self.memories: list[list[Memory]] = [[] for _ in self.ids]
        self.last_seen: list[dict | None] = [None] * len(self.ids)  # levels, statistics, interventions as shown
        self.values: dict[str, np.ndarray] = {}  # target -> K values (NaN: heuristic)
        self.rows: list[dict] = []
        self.stats = RoundStats()
        self._log: TableAppender | None = None
        self._logged = 0
        self._idx = None
        self.owns_backend = False  # set by make_deep_agents when it opened the backend itself
        self._cache = None  # the response cache attach opened (closed with the policy)

    # -- set-up ------------------------------------------------------------------------------
    def attach(self, run_dir: Path) -> None:
        """Log next to the run; an own backend's answers go to the run's response cache, as the archetype
        policy's do, so an interview's restore replays them instead of asking the model again."""
        from .backends.replay import ReplayBackend
        from .cache import CachedBackend, ResponseCache

        self._log = TableAppender(run_dir, "deep_agents")
        self._logged = len(self.rows)
        if not isinstance(self.backend, (CachedBackend, ReplayBackend)):
            self._cache = ResponseCache(Path(run_dir) / "llm_cache.sqlite")
            self.backend = CachedBackend(self.backend, self._cache)

    # -- the round ---------------------------------------------------------------------------
    def update(self, sim) -> None:
        step = int(sim.step)
        deciding = step % self.spec.every == 0
        if len(self.ids) and (deciding or step % self.observe_every == 0):
            obs = self.observe(sim, keep_unchanged=deciding)
            if deciding:
                reflecting = bool(self.spec.reflect_every and step > 0 and step % self.spec.reflect_every == 0)
                self.deliberate(step, obs, reflecting)
        self.apply(sim)
        self._flush()

    def observe(self, sim, keep_unchanged: bool = True) -> list[str]:
        """Gather the K rows (and their households' members' rows) on the device, one transfer; store one
        observation memory per agent -- on a step between decisions only where something changed."""
        import jax
        import jax.numpy as jnp

        if self._idx is None:
            self._idx = jnp.asarray(self.ids, jnp.int32)
        idx = self._idx
        feats = self.model.features(sim.state, sim.params) if self.model.features else {}
        stats = self.model.stats(sim.state, sim.params) if self.model.stats else {}
        if self._mates_idx is None and self.spec.household and self.mates:
            self._mates_idx = jnp.asarray(np.concatenate(self.mates).astype(np.int32))
        rows = jax.device_get({"f": {k: jnp.take(v, idx, axis=0) for k, v in feats.items()},
                               "s": {k: jnp.take(v, idx, axis=0) for k, v in stats.items()},
                               "h": {k: jnp.take(feats[k], self._mates_idx, axis=0) for k in self.spec.household}
                               if self._mates_idx is not None else {}})
        bounds = np.cumsum([0] + [len(m) for m in self.mates]) if rows["h"] else None
        step = int(sim.step)
        active = ", ".join(dict.fromkeys(n for n, a, b in self.interventions if n and a <= step < b)) or "none"
        texts = []
        for j, agent in enumerate(self.ids):
            codes = {k: int(v[j]) for k, v in rows["f"].items()}
            level = {k: (self.model.labels[k][c] if self.model.labels.get(k) else str(c)) for k, c in codes.items()}
            stats_now = {k: _num(float(v[j])) for k, v in rows["s"].items()}
            if bounds is not None:  # the household as one more statistic: "2 S, 1 I" per listed feature
                a, b = bounds[j], bounds[j + 1]
                for k, v in rows["h"].items():
                    counts = np.bincount(np.asarray(v[a:b], np.int64), minlength=len(self.model.labels[k]))
                    stats_now[f"household {k}"] = (", ".join(f"{n} {self.model.labels[k][c]}" for c, n in
                                                             enumerate(counts) if n) or "lives alone")
            was = self.last_seen[j]
            # the first observation is the whole row; later ones only what changed (a feature with its former
            # level, a statistic, the interventions in force): an unchanged row costs no prompt tokens
            if was is None:
                parts = [f"{_name(k)} {v}" for k, v in level.items()] + [f"{_name(k)} {v}" for k, v in stats_now.items()]
                parts.append(f"interventions in force: {active}")
                changed = 1
            else:
                moved = [k for k, v in level.items() if was["f"].get(k) != v]  # a level per code: changed codes
                parts = [f"{_name(k)} {level[k]} (was {was['f'][k]})" for k in moved]
                parts += [f"{_name(k)} {v}" for k, v in stats_now.items() if was["s"].get(k) != v]
                if was["active"] != active:
                    parts.append(f"interventions in force: {active}")
                changed = len(moved)
            text = f"Day {step}: " + ("; ".join(parts) if parts else "no change") + "."
            importance = float(min(10, 1 + 3 * changed))
            self.last_seen[j] = {"f": level, "s": stats_now, "active": active}
            if parts or keep_unchanged:  # between decisions an unchanged day is not a memory
                self._remember(j, step, "observation", text, importance)
            texts.append(text)
        return texts

    def retrieve(self, j: int, query: str, step: int, *, exclude: Memory | None = None) -> list[Memory]:
        mems = [m for m in self.memories[j] if m is not exclude]
        if not mems:
            return []
        if self.spec.relevance == "embedding":
            q = np.asarray(self.backend.embed([query])[0], np.float64)
            e = np.array([m.embedding for m in mems], np.float64)
            cos = e @ q / np.maximum(np.linalg.norm(e, axis=1) * np.linalg.norm(q), 1e-12)
            rel = (1.0 + cos) / 2.0
        else:
            rel = np.array([lexical_relevance(query, m.text) for m in mems])
        scores = retrieval_scores(mems, step, rel, self.spec.decay, self.spec.weights)
        return [mems[i] for i in top_memories(scores, mems, self.spec.top_k)]

    def persona(self, j: int) -> str:
        """The agent's features at its latest observation, ``name level`` each (``{persona}``)."""
        seen = self.last_seen[j]
        return ", ".join(f"{_name(k)} {v}" for k, v in seen["f"].items()) if seen else ""

    def _listing(self, memories: list[Memory]) -> str:
        return "\n".join(f"- {m.text}" for m in memories)

    def _question_fields(self, d, step: int) -> dict:
        return {"options": ", ".join(d.options[:-1]) + " or " + d.options[-1], "step": step}

    def deliberate(self, step: int, observations: list[str], reflecting: bool) -> None:
        """The round's reflections (when due) and decisions, as one :class:`ThreadRequest` per agent.

        With ``deep_agents.context`` the agent's turn is one thread: the context (its memories, retrieved
        once for the round, and today's observation), then the reflection it writes, then each decision's
        question after it -- the backend keeps the thread's KV cache from one part to the next (llama.cpp:
        every agent's reflection generated in lockstep). Without it, reflections are their own prompt and
        each decision prompt is complete in itself, retrieved again after the reflection."""
        spec = self.spec
        bound = spec.reflection_tokens
        queries = [f"{obs} {REFLECTION_QUERY} " + " ".join(d.prompt for d in spec.decisions) for obs in observations]
        # today's observation is shown as such (and is the query's core), not again among the memories
        today = [self.memories[j][-1] for j in range(len(self.ids))]
        tops = [self.retrieve(j, q, step, exclude=today[j]) for j, q in enumerate(queries)]
        if spec.context:
            questions = tuple(
                ScoreRequest("\n" + d.prompt.format_map(self._question_fields(d, step)),
                             tuple(" " + o for o in d.options), self.temperature) for d in spec.decisions)
            contexts = [spec.context.format_map({"memories": self._listing(top), "observation": observations[j],
                                                 "step": step, "persona": self.persona(j)})
                        for j, top in enumerate(tops)]
            reqs = [ThreadRequest(c + "\n" + REFLECTION_PROMPT if reflecting else c, questions, reflecting)
                    for c in contexts]
            results = self._run(reqs, bound)
            if reflecting:
                self._reflections(step, results, tops, reqs)
            for i, d in enumerate(spec.decisions):
                self._decisions(step, d, [r.scores[i] for r in results])
            return
        if reflecting:
            reqs = [ThreadRequest(f"Memories of agent {int(agent)}:\n{self._listing(top)}\n{REFLECTION_PROMPT}", (),
                                  True) for agent, top in zip(self.ids, tops)]
            self._reflections(step, self._run(reqs, bound), tops, reqs)
            tops = [self.retrieve(j, q, step, exclude=today[j]) for j, q in enumerate(queries)]  # reflections too now
        for d in spec.decisions:
            fields = self._question_fields(d, step)
            reqs = [ThreadRequest("", (ScoreRequest(d.prompt.format_map({
                **fields, "memories": self._listing(top), "observation": observations[j], "persona": self.persona(j)}),
                tuple(" " + o for o in d.options), self.temperature),)) for j, top in enumerate(tops)]
            self._decisions(step, d, [r.scores[0] for r in self._run(reqs, bound)])

    def _run(self, reqs: list[ThreadRequest], bound: int) -> list[ThreadResult]:
        t0 = time.perf_counter()
        results = run_threads(self.backend, reqs, max_tokens=bound, stop=["\n"])
        self.stats.seconds += time.perf_counter() - t0
        return results

    def _reflections(self, step: int, results: list[ThreadResult], tops: list[list[Memory]],
                     reqs: list[ThreadRequest]) -> None:
        # a plain continuation cut at the line's end, the prompt ending inside the sentence: through
        # generate_json a base model rarely closed its JSON string inside the token bound (73 of 75 failed)
        bound = self.spec.reflection_tokens
        for j, res in enumerate(results):
            self.stats.calls += 1
            text = (res.text or "").strip()
            if res.text is None or not text:  # counted; the top memory stands in
                self.stats.fallbacks += 1
                why = res.error or "empty reflection"
                text = f"(no reflection: {why}) " + (tops[j][0].text if tops[j] else "")
            else:
                text = f"This person {text}"[:4 * bound]
            if not reqs[j].questions:  # a reflection alone: its words (a thread's questions count its tokens)
                self.stats.prompt_tokens += len(reqs[j].prompt.split())
            self._remember(j, step, "reflection", text, REFLECTION_IMPORTANCE)

    def _decisions(self, step: int, d, results: list[ScoreResult]) -> None:
        every = self.spec.every
        weights = np.array([d.value.get(o, 0.0) for o in d.options])
        vals = np.full(len(self.ids), np.nan, np.float32)
        as_logit = d.target in self.model.decision_logits
        for j, r in enumerate(results):
            self.stats.calls += 1
            self.stats.prompt_tokens += r.prompt_tokens
            self.stats.completion_tokens += r.completion_tokens
            ok = r.error is None and all(math.isfinite(p) for p in r.probs)
            if not ok:
                self.stats.fallbacks += 1
                text, p_event = f"{d.target}: no answer ({r.error}); the heuristic decides", math.nan
            else:
                p_event = float(np.clip(np.asarray(r.probs) @ weights, 0.0, 1.0))
                h = min(max(1.0 - (1.0 - p_event) ** (1.0 / every), 1e-6), 1.0 - 1e-6)
                vals[j] = math.log(h) - math.log1p(-h) if as_logit else h
                best = d.options[int(np.argmax(r.probs))]
                text = f"Decided {d.target}: most likely '{best}' (P(event) = {p_event:.2f})."
            self._remember(j, step, "decision", text, DECISION_IMPORTANCE, target=d.target, p=p_event)
        self.values[d.target] = vals

    def apply(self, sim) -> None:
        """Write the K values into the model's per-agent targets at the K indices only (device ops)."""
        import jax.numpy as jnp

        for target, vals in self.values.items():
            old = sim.params[target]
            sim.set_param(target, old.at[self._idx].set(jnp.asarray(vals, old.dtype)))

    def _remember(self, j: int, step: int, kind: str, text: str, importance: float, *, target: str = "",
                  p: float = math.nan) -> None:
        emb = None
        if self.spec.relevance == "embedding":
            emb = [float(x) for x in self.backend.embed([text])[0]]
        self.memories[j].append(Memory(step, kind, text, float(importance), emb))
        self.rows.append({"step": step, "agent_id": int(self.ids[j]), "kind": kind, "text": text,
                          "importance": float(importance), "target": target, "p": float(p)})

    # -- outputs and checkpoints ---------------------------------------------------------------
    def _flush(self) -> None:
        if self._log is None or self._logged >= len(self.rows):
            return
        self._log.append(pa.Table.from_pylist(self.rows[self._logged:], schema=SCHEMA))
        self._logged = len(self.rows)

    def state_dict(self) -> dict:
        self._flush()
        # "deep_rows_logged", not "rows_logged": that key counts the archetype policy's llm_calls rows
        return {"kind": "deep_agents", "ids": [int(i) for i in self.ids], "deep_rows_logged": len(self.rows),
                "memories": [[vars(m).copy() for m in ms] for ms in self.memories],
                "last_seen": self.last_seen, "stats": vars(self.stats).copy(),
                "targets": list(self.values), "arrays": {f"deep_{t}": v for t, v in self.values.items()}}

    def load_state_dict(self, blob: Mapping[str, Any]) -> None:
        if [int(i) for i in blob["ids"]] != [int(i) for i in self.ids]:
            raise ScenarioError("checkpoint", "the checkpoint's deep agents are not this run's")
        self.memories = [[Memory(**m) for m in ms] for ms in blob["memories"]]
        if "last_seen" in blob:
            self.last_seen = list(blob["last_seen"])
        else:  # a checkpoint from before observations said only what changed: rebuild what they compare with
            self.last_seen = [None if c is None else {
                "f": {k: (self.model.labels[k][int(v)] if self.model.labels.get(k) else str(v)) for k, v in c.items()},
                "s": {}, "active": None} for c in blob["last_codes"]]
        self.stats = RoundStats(**blob["stats"])
        arrays = blob.get("arrays") or {}
        self.values = {t: np.asarray(arrays[f"deep_{t}"], np.float32) for t in blob.get("targets") or []}
        self.rows = [r for r in self.rows][: int(blob.get("deep_rows_logged", blob.get("rows_logged", 0)))]
        self._logged = len(self.rows)  # the table was truncated to the checkpoint's step by the resume
        if self._idx is None:
            import jax.numpy as jnp

            self._idx = jnp.asarray(self.ids, jnp.int32)

    def finish(self, sim) -> None:
        self._flush()

    def close(self) -> None:
        self._flush()
        if self._log is not None:
            self._log.close()
        if self.owns_backend and hasattr(self.backend, "close"):
            self.backend.close()
        if self._cache is not None:
            self._cache.close()
            self._cache = None


def _name(key: str) -> str:
    return key.replace("_", " ")


def _num(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "n/a"


def make_deep_agents(scenario, built, policy=None, *, backend: Any = None, seed: int = 0):
    """The scenario's deep agents, or None (no block, or ``k: 0`` with no ids)."""
    spec = scenario.deep_agents
    if spec is None or (spec.select != "ids" and spec.k == 0):
        return None
    import jax

    model = built.model
    levels = {f: tuple(v) for f, v in model.labels.items()} if model.features else {}
    check_deep_agents(spec, n_agents=built.n_agents, features=levels, decision_targets=model.decision_targets,
                      policy_every=policy.every if policy is not None else None, need_backend=backend is None)
    feats = (jax.device_get(model.features(built.state, built.params)) if spec.select == "rule" else None)
    ids = select_agents(spec, feats, levels, built.n_agents, seed)
    owned = False
    if spec.backend is None and policy is not None:
        backend = policy.backend  # the run's own backend, already wrapped in its response cache: shared
    elif backend is not None:  # the session's (a replay in an interview's restore, a test double)
        if callable(backend) and not hasattr(backend, "score"):
            backend, owned = backend(), True
    elif spec.backend is not None:
        from .policy import open_backend

        backend, owned = open_backend(dict(spec.backend)), True
    if backend is None:
        raise ScenarioError("deep_agents.backend", "needs a backend (or a policy: block whose backend it shares)")
    if spec.relevance == "embedding" and not hasattr(backend, "embed"):
        raise ScenarioError("deep_agents.relevance", "embedding relevance needs a backend with embed(); "
                            "use relevance: lexical")
    temperature = scenario.policy.temperature if scenario.policy is not None else 1.0
    deep = DeepAgents(spec, model, backend, ids, policy_every=policy.every if policy is not None else None,
                      interventions=scenario.interventions, temperature=temperature)
    deep.owns_backend = owned
    if spec.household:
        attrs = getattr(built.population, "attributes", None) or {}
        if "household" not in attrs:
            raise ScenarioError("deep_agents.household", f"the {scenario.population.kind!r} population has no "
                                "households")
        hh = np.asarray(attrs["household"])
        members = [np.flatnonzero(hh == hh[a]) for a in ids]  # K scans of the population, once
        deep.mates = [m[m != a] for m, a in zip(members, ids)]
    return deep
