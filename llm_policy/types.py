"""Core types shared by every LLM backend.

A backend answers two kinds of questions:

* :meth:`Backend.score` -- "how likely is each of these options as the
  continuation of this prompt?"  The answer is a :class:`ScoreResult` holding
  per-option log-probabilities and the softmax of those log-probabilities at
  the request's temperature.  This is how archetype decisions are made: we
  read the model's distribution, we never parse free text.
* :meth:`Backend.generate_json` -- constrained (grammar / JSON-schema) generation
  for decisions that need more than picking one option.

Failures are values, not exceptions: a request that could not be answered
comes back as a ``ScoreResult`` with ``error`` set and NaN probabilities (never
a silent 0.0), so one bad request does not sink a whole batch.  Only a backend
that cannot start at all raises (:class:`BackendUnavailable`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "ScoreRequest",
    "ScoreResult",
    "ThreadRequest",
    "ThreadResult",
    "run_threads",
    "softmax",
    "parse_json_output",
    "validate_json",
]


class BackendUnavailable(Exception):
    """A backend cannot start at all (missing model file, server unreachable,
    optional dependency not installed).  The message is meant for a human; the
    CLI turns it into exit code 2."""


class BackendError(RuntimeError):
    """A single call failed after all retries (raised by ``generate_json`` only;
    ``score`` reports failures inside :class:`ScoreResult` instead)."""


@dataclass(frozen=True)
class ScoreRequest:
    """Score each option as a literal continuation of ``prompt``.

    Options are appended to the prompt verbatim, so include the separator the
    model expects, typically a leading space: ``prompt="...Answer:"``,
    ``options=(" yes", " no")``.  ``temperature`` only shapes ``probs`` (softmax of
    logprobs / temperature); ``temperature == 0`` means arg-max (ties split
    evenly).
    """

    prompt: str
    options: tuple[str, ...]
    temperature: float = 1.0

    def __post_init__(self) -> None:
        opts = tuple(self.options)
        object.__setattr__(self, "options", opts)
        if not isinstance(self.prompt, str):
            raise TypeError("ScoreRequest.prompt must be a str")
        if len(opts) < 1:
            raise ValueError("ScoreRequest needs at least one option")
        if any(not isinstance(o, str) or o == "" for o in opts):
            raise ValueError("ScoreRequest options must be non-empty strings")
        if len(set(opts)) != len(opts):
            raise ValueError(f"ScoreRequest options must be distinct: {opts!r}")
        t = float(self.temperature)
        if not (t >= 0.0) or math.isinf(t):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature!r}")
        object.__setattr__(self, "temperature", t)


def softmax(logprobs: Sequence[float], temperature: float = 1.0) -> tuple[float, ...]:
    """Numerically stable softmax(logprobs / temperature).

    ``temperature == 0`` gives the arg-max distribution (ties share the mass).
    ``-inf`` entries get probability 0.  Raises ``ValueError`` if no entry is
    finite (there is no distribution to speak of) or if any entry is NaN.
    """
    lp = [float(x) for x in logprobs]
    if not lp:
        return ()
    if any(math.isnan(x) for x in lp):
        raise ValueError("softmax of NaN logprobs")
    finite = [x for x in lp if x != -math.inf]
    if not finite:
        raise ValueError("all logprobs are -inf")
    if any(x == math.inf for x in lp):
        raise ValueError("+inf logprob")
    m = max(finite)
    if temperature == 0.0:
        winners = [i for i, x in enumerate(lp) if x == m]
        share = 1.0 / len(winners)
        return tuple(share if i in winners else 0.0 for i in range(len(lp)))
    ex = [math.exp((x - m) / temperature) if x != -math.inf else 0.0 for x in lp]
    z = math.fsum(ex)
    return tuple(e / z for e in ex)


@dataclass(frozen=True)
class ScoreResult:
    """Answer to one :class:`ScoreRequest`.

    ``logprobs[i]`` is log P(option_i | prompt) summed over the option's tokens
    (for the first-token strategy of the HTTP backend: the first token's
    logprob; for sampled fallbacks: ``temperature * log(frequency)``, see
    ``method``).  ``probs = softmax(logprobs / temperature)``.  A failed request
    has ``error`` set and NaN ``logprobs``/``probs``.

    ``method`` says how the numbers were obtained: ``"logprobs"`` (read from the
    model's distribution), ``"sampled"`` (frequencies of constrained samples --
    a Monte-Carlo estimate), or ``"error"``.
    """

    logprobs: tuple[float, ...]
    probs: tuple[float, ...]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    retries: int = 0
    cached: bool = False
    error: str | None = None
    method: str = "logprobs"

    @property
    def ok(self) -> bool:
        return self.error is None

    # -- constructors -----------------------------------------------------
    @classmethod
    def from_logprobs(
        cls,
        logprobs: Sequence[float],
        temperature: float,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        latency_s: float = 0.0,
        retries: int = 0,
        method: str = "logprobs",
    ) -> "ScoreResult":
        """Build a successful result; turns an invalid logprob vector (NaN, all
        -inf) into a failed result instead of raising."""
        lp = tuple(float(x) for x in logprobs)
        try:
            probs = softmax(lp, temperature)
        except ValueError as exc:
            return cls.failure(
                len(lp),
                f"invalid logprobs {lp!r}: {exc}",
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_s=latency_s,
                retries=retries,
            )
        return cls(
            logprobs=lp,
            probs=probs,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
            latency_s=float(latency_s),
            retries=int(retries),
            method=method,
        )

    @classmethod
    def failure(
        cls,
        n_options: int,
        error: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        latency_s: float = 0.0,
        retries: int = 0,
    ) -> "ScoreResult":
        nan = (math.nan,) * n_options
        return cls(
            logprobs=nan,
            probs=nan,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
            latency_s=float(latency_s),
            retries=int(retries),
            error=str(error) or "unknown error",
            method="error",
        )


@dataclass(frozen=True)
class ThreadRequest:
    """One agent's turn: a prompt, an optional free continuation, then questions that follow it.

    Equivalent to ``text = complete(prompt, max_tokens, stop)`` when ``generate`` (else ``""``) and
    then ``score(ScoreRequest(prompt + text + q.prompt, q.options, q.temperature))`` for every
    question ``q``: each question's ``prompt`` is the text appended after the prompt and the
    generated text.  A backend with a ``threads`` method answers many of them together, keeping
    each prompt's KV cache for its continuation and questions (llama.cpp: the generation of all
    threads in lockstep, one decode per token for the whole batch); :func:`run_threads` falls back
    to ``complete`` and ``score`` for any other backend.
    """

    prompt: str
    questions: tuple[ScoreRequest, ...] = ()
    generate: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "questions", tuple(self.questions))


@dataclass(frozen=True)
class ThreadResult:
    """``text``: the continuation (``""`` without ``generate``; None when it failed, with ``error``);
    ``scores``: one result per question (failed ones carry their error)."""

    text: str | None
    scores: tuple[ScoreResult, ...]
    error: str | None = None
    latency_s: float = 0.0


def run_threads(backend: Any, requests: Sequence[ThreadRequest], *, max_tokens: int, stop: Sequence[str] = ("\n",)
                ) -> list[ThreadResult]:
    """Answer ``requests`` through ``backend.threads`` when it has one, else one ``complete`` and one
    ``score`` batch per request (greedy, temperature 0 for the continuation)."""
    import time

    fn = getattr(backend, "threads", None)
    if fn is not None:
        return list(fn(requests, max_tokens=max_tokens, stop=stop))
    out = []
    for req in requests:
        t0 = time.perf_counter()
        text = ""
        if req.generate:
            try:
                text = backend.complete(req.prompt, max_tokens=max_tokens, stop=list(stop), temperature=0.0)
            except BackendError as exc:
                out.append(ThreadResult(None, tuple(ScoreResult.failure(len(q.options), f"no continuation: {exc}")
                                                    for q in req.questions), error=str(exc),
                                        latency_s=time.perf_counter() - t0))
                continue
        scores = backend.score([ScoreRequest(req.prompt + text + q.prompt, q.options, q.temperature)
                                for q in req.questions]) if req.questions else []
        out.append(ThreadResult(text, tuple(scores), latency_s=time.perf_counter() - t0))
    return out


@runtime_checkable
class Backend(Protocol):
    """What the policy layer needs from an LLM.

    ``identity`` names backend *and* model weights (e.g.
    ``"llamacpp:gemma-3-270m-q4_k_m:a5fd3b62230a"``); it is part of every cache
    key, so two backends with the same identity must give the same answers.
    """

    identity: str

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score a batch; one result per request, in order.  Never raises for a
        per-request failure (the result carries ``error``)."""
        ...

    def generate_json(
        self,
        prompt: str,
        schema: dict,
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
    ) -> dict:
        """Generate a JSON value constrained by ``schema``; raises
        :class:`BackendError` if no schema-valid value could be produced."""
        ...

    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int = 64,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        seed: int = 0,
    ) -> str:
        """Plain free-text continuation of ``prompt``: at most ``max_tokens`` tokens, cut before
        any ``stop`` string; greedy when ``temperature`` is 0, else sampled with ``seed``. Raises
        :class:`BackendError` when no text could be produced."""
        ...

    def close(self) -> None:
        ...


# ---------------------------------------------------------------------------
# A small JSON-schema checker (the subset that grammar-constrained decoding
# supports: type, properties, required, additionalProperties, enum, const,
# items, min/maxItems, minimum/maximum, min/maxLength).  Backends use it to
# validate what a server returned -- a server may ignore the constraint.
# ---------------------------------------------------------------------------

_TYPE_CHECKS: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate_json(value: Any, schema: dict, path: str = "$") -> list[str]:
    """Return a list of violations of ``schema`` by ``value`` (empty = valid)."""
    errors: list[str] = []
    if not isinstance(schema, dict) or not schema:
        return errors
    typ = schema.get("type")
    if typ is not None:
        types = typ if isinstance(typ, list) else [typ]
        if not any(_TYPE_CHECKS.get(t, lambda v: True)(value) for t in types):
            return [f"{path}: expected type {typ}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in enum {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != const {schema['const']!r}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for req in schema.get("required", []):
            if req not in value:
                errors.append(f"{path}: missing required property {req!r}")
        for k, v in value.items():
            if k in props:
                errors.extend(validate_json(v, props[k], f"{path}.{k}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected property {k!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors.extend(validate_json(v, schema["additionalProperties"], f"{path}.{k}"))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                errors.extend(validate_json(item, schema["items"], f"{path}[{i}]"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
    return errors


def parse_json_output(text: str, schema: dict) -> dict:
    """Parse generated text as JSON and validate it; raises BackendError."""
    import json

    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise BackendError(f"generated text is not valid JSON ({exc}): {text[:200]!r}") from None
    errs = validate_json(value, schema)
    if errs:
        raise BackendError(f"generated JSON violates schema: {'; '.join(errs[:5])}: {text[:200]!r}")
    return value


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the shared prefix of two token sequences (how much KV cache a prompt can reuse)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
