"""LLM backends behind the :class:`llm_policy.types.Backend` protocol.

Heavy dependencies (llama-cpp-python, vllm) are imported lazily inside the
backend constructors, so importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

from llm_policy.backends.fake import ScriptedBackend
from llm_policy.backends.replay import ReplayBackend, ReplayMiss
from llm_policy.types import Backend, BackendUnavailable

__all__ = ["Backend", "BackendUnavailable", "ReplayBackend", "ReplayMiss", "ScriptedBackend", "check_backend_spec",
           "make_backend"]

_KINDS = ("llamacpp", "openai", "vllm", "replay")


def _constructor(kind: str) -> Any:
    """The backend class for ``kind`` (its module imported only now: httpx and friends cost time)."""
    if kind == "llamacpp":
        from llm_policy.backends.llamacpp import LlamaCppBackend
        return LlamaCppBackend
    if kind == "openai":
        from llm_policy.backends.openai import OpenAIBackend
        return OpenAIBackend
    if kind == "vllm":
        from llm_policy.backends.vllm import VLLMBackend
        return VLLMBackend
    if kind == "replay":
        return ReplayBackend
    raise ValueError(f"kind: unknown backend kind {kind!r} (known: {', '.join(_KINDS)})")


def check_backend_spec(spec: dict) -> None:
    """What :func:`make_backend` would refuse, without starting anything: an unknown kind, keys its
    constructor does not take, required keys left out. Raises ``ValueError("key: reason")``."""
    import inspect

    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError("kind: needs a 'kind' (" + ", ".join(_KINDS) + ")")
    kwargs = dict(spec)
    kind = kwargs.pop("kind")
    cls = _constructor(kind) if isinstance(kind, str) else _constructor(repr(kind))
    if kind != "replay":
        kwargs.pop("cache", None)  # make_backend's own key: wraps the backend in a response cache
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key for backend {kind!r} "
                             f"(known: {', '.join(k for k in params if k != 'self')})")
    missing = [k for k, p in params.items() if p.default is p.empty and k not in kwargs
               and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if missing:
        raise ValueError(f"{missing[0]}: is required for backend {kind!r}")


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
    from llm_policy.cache import CachedBackend, ResponseCache

    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"backend spec must be a dict with a 'kind' key, got {spec!r}")
    kwargs = dict(spec)
    kind = kwargs.pop("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown backend kind {kind!r}; expected one of {sorted(_KINDS)}")
    cls = _constructor(kind)
    if kind == "replay":
        return cls(**kwargs)
    cache_path = kwargs.pop("cache", None)
    try:
        backend = cls(**kwargs)
    except TypeError as exc:  # bad keys in the spec
        raise ValueError(f"bad {kind!r} backend spec {spec!r}: {exc}") from exc
    if cache_path is not None:
        return CachedBackend(backend, ResponseCache(cache_path))
    return backend

