"""The economy's in-context LLM planner: a host policy that proposes next year's marginal rates.

Every ``every`` years it shows the model the bracket thresholds, the objective, and the last
``history`` years (rates in force, output, revenue, post-tax Gini, welfare) and asks for the next
schedule as JSON constrained by a schema: ``{"rates": [integer percent, one per bracket]}`` with
each entry in ``[0, 100 x max_rate]``. The embedded llama.cpp backend turns the schema into a
grammar (so only valid JSON can be sampled); OpenAI-compatible servers get it as structured-output
/ ``json_schema`` / GBNF, and whatever comes back is validated again.

A proposal that fails (backend error, schema violation, wrong length) is replaced by the last
valid schedule, and counted: ``planner_fallbacks`` (with ``planner_calls``) are model parameters,
so they reach ``metrics.parquet`` as per-step columns. Every call is kept in ``self.log``.
"""
from __future__ import annotations

import json
import time
from typing import Any

import jax
import numpy as np

from simcore.distributed import broadcast_from_lead

from .types import BackendError, BackendUnavailable, validate_json


def rates_schema(n_brackets: int, max_rate: float) -> dict:
    top = int(np.floor(100 * max_rate + 1e-9))
    return {
        "type": "object",
        "properties": {"rates": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": top},
                                 "minItems": n_brackets, "maxItems": n_brackets}},
        "required": ["rates"],
        "additionalProperties": False,
    }


def parse_rates(value: Any, n_brackets: int, max_rate: float) -> np.ndarray:
    """Rates (fractions) from a generated JSON value; raises BackendError if it is not a valid schedule."""
    errs = validate_json(value, rates_schema(n_brackets, max_rate))
    if errs:
        raise BackendError("; ".join(errs[:3]))
    return np.asarray(value["rates"], np.float64) / 100.0


def _money(x: float) -> str:
    return f"${x:,.0f}"


class TaxPlannerPolicy:
    """Host policy: ``update(sim)`` reads last year's outcome from the state and sets ``llm_rates``."""

    def __init__(self, backend, *, thresholds, base_rates, max_rate: float, every: int = 1, history: int = 6,
                 temperature: float = 0.0, max_tokens: int = 96, inequality_aversion: float = 1.0):
        self.backend = backend
        self.thresholds = [float(t) for t in thresholds]
        self.max_rate = float(max_rate)
        self.every = int(every)
        self.history_len = int(history)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.epsilon = float(inequality_aversion)
        self.last_valid = np.asarray(base_rates, np.float64)
        self.history: list[dict] = []
        self.calls = 0
        self.fallbacks = 0
        self.log: list[dict] = []

    @property
    def n_brackets(self) -> int:
        return len(self.thresholds)

    def brackets_text(self) -> str:
        out = []
        for j, lo in enumerate(self.thresholds):
            hi = self.thresholds[j + 1] if j + 1 < self.n_brackets else None
            out.append(f"bracket {j + 1}: {_money(lo)}" + (f" to {_money(hi)}" if hi else " and above"))
        return "; ".join(out)

    def prompt(self) -> str:
        lines = [
            "You are the tax planner of an economy of workers who each choose how many hours to work.",
            f"Marginal income-tax brackets: {self.brackets_text()}.",
            "All revenue is returned to every worker as an equal lump sum.",
            f"Goal: maximise social welfare (Atkinson mean of utilities, inequality aversion {self.epsilon:g}).",
            "Past years (marginal rates in percent per bracket, then outcomes per worker):",
        ]
        for h in self.history[-self.history_len:]:
            rates = ", ".join(str(int(round(100 * r))) for r in h["rates"])
            lines.append(f"year {h['year']}: rates [{rates}] -> output {_money(h['output'])}, "
                         f"revenue {_money(h['revenue'])}, post-tax Gini {h['gini']:.3f}, "
                         f"welfare {_money(h['welfare'])}")
        lines.append(f"Propose next year's marginal rates, one integer percent per bracket "
                     f"({self.n_brackets} numbers, each 0 to {int(100 * self.max_rate)}), as JSON "
                     '{"rates": [...]}.')
        lines.append("JSON:")
        return "\n".join(lines)

    def observe(self, sim) -> None:
        st = sim.state
        n = st.income.shape[0]
        vals = jax.device_get({"rates": st.rates, "output": st.output, "revenue": st.revenue,
                               "gini": st.gini_post, "welfare": st.welfare_atkinson})
        self.history.append({"year": int(sim.step) - 1, "rates": [float(r) for r in vals["rates"]],
                             "output": float(vals["output"]) / n, "revenue": float(vals["revenue"]) / n,
                             "gini": float(vals["gini"]), "welfare": float(vals["welfare"])})

    def propose(self) -> np.ndarray:
        prompt = self.prompt()
        schema = rates_schema(self.n_brackets, self.max_rate)
        t0 = time.perf_counter()
        error = None
        value: Any = None
        try:
            value = self.backend.generate_json(prompt, schema, max_tokens=self.max_tokens,
                                               temperature=self.temperature)
            rates = parse_rates(value, self.n_brackets, self.max_rate)
        except (BackendError, BackendUnavailable, OSError, TypeError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            rates = self.last_valid
            self.fallbacks += 1
        self.calls += 1
        self.log.append({"year": self.history[-1]["year"] + 1 if self.history else 0, "prompt": prompt,
                         "output": json.dumps(value) if value is not None else None, "error": error,
                         "fallback": error is not None, "rates": [float(r) for r in rates],
                         "seconds": time.perf_counter() - t0})
        self.last_valid = np.asarray(rates, np.float64)
        return self.last_valid

    def update(self, sim) -> None:
        self.observe(sim)
        rates = self.propose() if jax.process_index() == 0 else self.last_valid
        rates = broadcast_from_lead(np.asarray(rates, np.float32))
        self.last_valid = np.asarray(rates, np.float64)
        sim.set_param("llm_rates", np.asarray(rates, np.float32))
        sim.set_param("planner_calls", np.float32(self.calls))
        sim.set_param("planner_fallbacks", np.float32(self.fallbacks))

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def host_policies(scenario):
    """The economy's host policies (its registry entry's ``host_policies``): a factory of the LLM planner
    where ``model.params.planner.kind`` is ``llm``, else None."""
    prm = scenario.model.params
    if prm.planner.kind != "llm":
        return None
    return lambda: [make_planner_policy(prm, None)]


def make_planner_policy(prm, cfg, backend=None) -> TaxPlannerPolicy:
    """The planner for economy params ``prm``; starts ``prm.planner.backend`` unless ``backend`` is given."""
    from scenarios.loader import ScenarioError

    from .backends import make_backend

    spec = prm.planner
    if backend is None:
        try:
            backend = make_backend(dict(spec.backend))
        except BackendUnavailable as exc:
            raise ScenarioError("model.params.planner.backend",
                                f"backend {spec.backend.get('kind')!r} cannot start: {exc}") from None
        except ValueError as exc:
            raise ScenarioError("model.params.planner.backend", str(exc)) from None
    return TaxPlannerPolicy(backend, thresholds=prm.schedule.thresholds, base_rates=prm.schedule.rates,
                            max_rate=prm.max_rate, every=spec.every, history=spec.history,
                            temperature=spec.temperature, max_tokens=spec.max_tokens,
                            inequality_aversion=prm.inequality_aversion)
