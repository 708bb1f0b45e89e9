"""``ReplayBackend``: answer only from a :class:`ResponseCache`.

Pointing it at the cache file of a past run reproduces that run's LLM answers
exactly (bit-identical probabilities), without any model.  A request the past
run never asked raises :class:`ReplayMiss` naming the request's cache key.
"""

from __future__ import annotations

import os
from typing import Sequence

from llm_policy.cache import ResponseCache, complete_key, json_key, score_key
from llm_policy.types import BackendUnavailable, ScoreRequest, ScoreResult

__all__ = ["ReplayBackend", "ReplayMiss"]


class ReplayMiss(LookupError):
    """A replayed run asked something the recorded run did not."""

    def __init__(self, key: str, identity: str, prompt: str) -> None:
        self.key = key
        self.identity = identity
        self.prompt = prompt
        preview = prompt if len(prompt) <= 80 else prompt[:37] + " ... " + prompt[-38:]
        super().__init__(
            f"replay miss: no cached answer for prompt hash {key} (identity {identity!r}, "
            f"prompt {preview!r}); the recorded run never asked this -- the replayed run has diverged "
            f"or the cache is from another run/model"
        )

    def __str__(self) -> str:  # LookupError would repr() the message
        return self.args[0]


class ReplayBackend:
    """Serve score/generate_json strictly from ``cache`` (a path or a
    :class:`ResponseCache`).

    ``identity`` selects which recorded backend to replay; if omitted, the
    cache must hold results of exactly one identity.
    """

    def __init__(self, cache: ResponseCache | str | os.PathLike[str], identity: str | None = None) -> None:
        if isinstance(cache, ResponseCache):
            self.cache = cache
            self._owns_cache = False
        else:
            if not os.path.exists(cache):
                raise BackendUnavailable(f"replay cache file not found: {cache}")
            self.cache = ResponseCache(cache)
            self._owns_cache = True
        if identity is None:
            ids = self.cache.identities()
            if len(ids) != 1:
                raise BackendUnavailable(
                    f"replay cache {self.cache.path} holds {len(ids)} backend identities {ids!r}; "
                    "pass identity= to choose one"
                )
            identity = ids[0]
        self.identity = identity

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        requests = list(requests)
        results = self.cache.get_many(self.identity, requests)
        for req, res in zip(requests, results):
            if res is None:
                raise ReplayMiss(score_key(self.identity, req), self.identity, req.prompt)
        return results  # type: ignore[return-value]

    def generate_json(self, prompt: str, schema: dict, *, max_tokens: int = 64, temperature: float = 0.0) -> dict:
        value = self.cache.get_json(self.identity, prompt, schema, max_tokens, temperature)
        if value is None:
            raise ReplayMiss(json_key(self.identity, prompt, schema, max_tokens, temperature), self.identity, prompt)
        return value

    def complete(self, prompt: str, *, max_tokens: int = 64, stop=(), temperature: float = 0.0, seed: int = 0) -> str:
        text = self.cache.get_text(self.identity, prompt, max_tokens, stop, temperature, seed)
        if text is None:
            raise ReplayMiss(complete_key(self.identity, prompt, max_tokens, stop, temperature, seed), self.identity,
                             prompt)
        return text

    def close(self) -> None:
        if self._owns_cache:
            self.cache.close()

    def __repr__(self) -> str:
        return f"ReplayBackend({str(self.cache.path)!r}, identity={self.identity!r})"
