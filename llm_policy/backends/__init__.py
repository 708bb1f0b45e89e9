"""LLM backends behind the :class:`llm_policy.types.Backend` protocol.

Heavy dependencies (llama-cpp-python, vllm) are imported lazily inside the
backend constructors, so importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

from llm_policy.backends.fake import ScriptedBackend
from llm_policy.backends.replay import ReplayBackend, ReplayMiss
from llm_policy.types import Backend, BackendUnavailable

__all__ = ["Backend", "BackendUnavailable", "ReplayBackend", "ReplayMiss", "ScriptedBackend", "make_backend"]

_KINDS = ("llamacpp", "openai", "vllm", "replay")


def make_backend(spec: dict) -> Backend:
    """Build a backend from a plain dict (e.g. from a scenario YAML).

    ``{"kind": "llamacpp", "model_path": None, "n_ctx": 2048, ...}``
    ``{"kind": "openai", "endpoints": ["http://h1:8000", ...], "model": "...", ...}``
    ``{"kind": "vllm", "model": "...", **engine_kwargs}``
    ``{"kind": "replay", "cache": "runs/llm_cache.sqlite"}``

    Any kind except ``replay`` also accepts ``"cache": path`` to wrap the
    backend in a :class:`~llm_policy.cache.CachedBackend` on that SQLite file.
    Remaining keys are passed to the backend's constructor.  Raises
    ``ValueError`` for an unknown kind, ``BackendUnavailable`` if the backend
    cannot start.
    """
    from llm_policy.backends.llamacpp import LlamaCppBackend
    from llm_policy.backends.openai import OpenAIBackend
    from llm_policy.backends.replay import ReplayBackend
    from llm_policy.backends.vllm import VLLMBackend
    from llm_policy.cache import CachedBackend, ResponseCache

    constructors: dict[str, Any] = {
        "llamacpp": LlamaCppBackend,
        "openai": OpenAIBackend,
        "vllm": VLLMBackend,
        "replay": ReplayBackend,
    }
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"backend spec must be a dict with a 'kind' key, got {spec!r}")
    kwargs = dict(spec)
    kind = kwargs.pop("kind")
    if kind not in constructors:
        raise ValueError(f"unknown backend kind {kind!r}; expected one of {sorted(constructors)}")
    if kind == "replay":
        return constructors[kind](**kwargs)
    cache_path = kwargs.pop("cache", None)
    try:
        backend = constructors[kind](**kwargs)
    except TypeError as exc:  # bad keys in the spec
        raise ValueError(f"bad {kind!r} backend spec {spec!r}: {exc}") from exc
    if cache_path is not None:
        return CachedBackend(backend, ResponseCache(cache_path))
    return backend

