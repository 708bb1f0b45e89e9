"""``ScriptedBackend``: a deterministic TEST DOUBLE.

It runs no model.  Log-probabilities come from a user function of the prompt,
so unit tests can check the plumbing (softmax, temperature, caching, policy
code) against analytically known numbers.  Never use it for a real run.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Mapping, Sequence

from llm_policy.types import BackendError, ScoreRequest, ScoreResult, validate_json

__all__ = ["ScriptedBackend"]

LogprobFn = Callable[[str, tuple[str, ...]], "Sequence[float] | Mapping[str, float]"]


class ScriptedBackend:
    """Test double: ``fn(prompt, options)`` returns the options' logprobs, either
    as a sequence aligned with ``options`` or as a mapping option -> logprob.

    If ``fn`` raises, that request's result carries the error (like a real
    backend's per-request failure).  ``json_fn(prompt, schema)`` answers
    ``generate_json`` (default: raise).  Every ``score`` batch is recorded in
    ``calls`` for assertions.
    """

    def __init__(
        self,
        fn: LogprobFn,
        *,
        identity: str = "scripted:test",
        json_fn: Callable[[str, dict], Any] | None = None,
        text_fn: Callable[[str, int], str] | None = None,
    ) -> None:
        self.fn = fn
        self.json_fn = json_fn
        self.text_fn = text_fn
        self.completions: list[tuple[str, int, int]] = []  # (prompt, max_tokens, seed) of each complete call
        self.identity = identity
        self.calls: list[list[ScoreRequest]] = []
        self.closed = False
        self._lock = threading.Lock()

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        requests = list(requests)
        with self._lock:
            self.calls.append(requests)
        out = []
        for req in requests:
            n_prompt = len(req.prompt.split())
            n_completion = sum(len(o.split()) or 1 for o in req.options)
            try:
                raw = self.fn(req.prompt, req.options)
                if isinstance(raw, Mapping):
                    lp = [float(raw.get(o, -math.inf)) for o in req.options]
                else:
                    lp = [float(x) for x in raw]
                if len(lp) != len(req.options):
                    raise ValueError(f"script returned {len(lp)} logprobs for {len(req.options)} options")
            except Exception as exc:  # noqa: BLE001 - reported per request
                out.append(ScoreResult.failure(len(req.options), f"{type(exc).__name__}: {exc}"))
                continue
            out.append(
                ScoreResult.from_logprobs(
                    lp, req.temperature, prompt_tokens=n_prompt, completion_tokens=n_completion
                )
            )
        return out

    def generate_json(self, prompt: str, schema: dict, *, max_tokens: int = 64, temperature: float = 0.0) -> dict:
        if self.json_fn is None:
            raise BackendError("ScriptedBackend has no json_fn")
        value = self.json_fn(prompt, schema)
        errs = validate_json(value, schema)
        if errs:
            raise BackendError("; ".join(errs))
        return value

    def complete(self, prompt: str, *, max_tokens: int = 64, stop: Sequence[str] = (), temperature: float = 0.0,
                 seed: int = 0) -> str:
        """``text_fn(prompt, seed)``, cut at the first ``stop`` string and to ``max_tokens`` words."""
        with self._lock:
            self.completions.append((prompt, max_tokens, seed))
        if self.text_fn is None:
            raise BackendError("ScriptedBackend has no text_fn")
        text = str(self.text_fn(prompt, seed))
        for s in stop:
            text = text.split(s, 1)[0]
        return " ".join(text.split(" ")[:max_tokens])

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"ScriptedBackend(identity={self.identity!r})"
