"""Persistent response cache (SQLite) and a caching backend wrapper.

Key = sha256 of the canonical JSON of

    {"identity": backend identity, "prompt": rendered prompt,
     "options": [...], "temperature": t}

so the same question asked of the same model (weights identified by the
backend identity) hits the cache across runs when runs share the file.  JSON
generations are keyed the same way on (identity, prompt, schema, max_tokens,
temperature) in a second table.

Only successful results are stored: a result with ``error`` set is never
cached, so a transient failure is retried next time.

The file uses WAL journaling (readers don't block the writer, several
processes may share one file) and every connection access is serialised by a
lock, so one ``ResponseCache`` may be used from many threads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from llm_policy.types import ScoreRequest, ScoreResult, ThreadRequest, ThreadResult, run_threads

__all__ = ["CachedBackend", "ResponseCache", "complete_key", "json_key", "score_key"]

_SCHEMA_VERSION = 1


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def score_key(identity: str, request: ScoreRequest) -> str:
    """Cache key of a scoring request for a backend identity (hex sha256)."""
    payload = {
        "kind": "score",
        "identity": identity,
        "prompt": request.prompt,
        "options": list(request.options),
        "temperature": float(request.temperature),
    }
    return hashlib.sha256(_canon(payload).encode("utf-8")).hexdigest()


def json_key(identity: str, prompt: str, schema: dict, max_tokens: int, temperature: float) -> str:
    """Cache key of a ``generate_json`` call (hex sha256)."""
    payload = {
        "kind": "json",
        "identity": identity,
        "prompt": prompt,
        "schema": schema,
        "max_tokens": int(max_tokens),
        "temperature": float(temperature),
    }
    return hashlib.sha256(_canon(payload).encode("utf-8")).hexdigest()


def complete_key(identity: str, prompt: str, max_tokens: int, stop: Sequence[str], temperature: float,
                 seed: int) -> str:
    """Cache key of a ``complete`` call (hex sha256): the seed is part of it even for greedy decoding."""
    payload = {
        "kind": "complete",
        "identity": identity,
        "prompt": prompt,
        "max_tokens": int(max_tokens),
        "stop": list(stop),
        "temperature": float(temperature),
        "seed": int(seed),
    }
    return hashlib.sha256(_canon(payload).encode("utf-8")).hexdigest()


def _enc_floats(xs: Sequence[float]) -> str:
    # JSON has no -inf; store as strings where needed.
    return json.dumps([x if math.isfinite(x) else repr(x) for x in xs])


def _dec_floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in json.loads(s))


class ResponseCache:
    """SQLite-backed store of :class:`ScoreResult` (and JSON generations).

    ``get``/``put`` work on (identity, request); ``hits``/``misses``/``hit_rate``
    count this instance's ``get`` calls (they are not persisted).
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(path), timeout=timeout_s, check_same_thread=False, isolation_level=None
        )
        self._hits = 0
        self._misses = 0
        with self._lock:
            c = self._conn
            if str(path) != ":memory:":
                c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            c.execute(
                """CREATE TABLE IF NOT EXISTS scores (
                    key TEXT PRIMARY KEY,
                    identity TEXT NOT NULL,
                    prompt TEXT NOT NULL,
                    options TEXT NOT NULL,
                    temperature REAL NOT NULL,
                    logprobs TEXT NOT NULL,
                    probs TEXT NOT NULL,
                    prompt_tokens INTEGER NOT NULL,
                    completion_tokens INTEGER NOT NULL,
                    latency_s REAL NOT NULL,
                    retries INTEGER NOT NULL,
                    method TEXT NOT NULL,
                    created_at REAL NOT NULL)"""
            )
            c.execute(
                """CREATE TABLE IF NOT EXISTS json_responses (
                    key TEXT PRIMARY KEY,
                    identity TEXT NOT NULL,
                    prompt TEXT NOT NULL,
                    value TEXT NOT NULL,
                    created_at REAL NOT NULL)"""
            )
            c.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
            c.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),)
            )

    # -- statistics -------------------------------------------------------
    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before any lookup."""
        n = self._hits + self._misses
        return self._hits / n if n else 0.0

    def stats(self) -> dict[str, float]:
        return {"hits": self._hits, "misses": self._misses, "hit_rate": self.hit_rate, "entries": len(self)}

    def reset_stats(self) -> None:
        with self._lock:
            self._hits = 0
            self._misses = 0

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def identities(self) -> list[str]:
        """Backend identities that have stored score results."""
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT identity FROM scores ORDER BY identity").fetchall()
        return [r[0] for r in rows]

    # -- scores -----------------------------------------------------------
    def get(self, identity: str, request: ScoreRequest) -> ScoreResult | None:
        return self.get_many(identity, [request])[0]

    def get_many(self, identity: str, requests: Sequence[ScoreRequest]) -> list[ScoreResult | None]:
        keys = [score_key(identity, r) for r in requests]
        found: dict[str, tuple] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = ",".join("?" * len(chunk))
                for row in self._conn.execute(
                    f"SELECT key, logprobs, probs, prompt_tokens, completion_tokens, retries, method "
                    f"FROM scores WHERE key IN ({q})",
                    chunk,
                ):
                    found[row[0]] = row
            out: list[ScoreResult | None] = []
            for k, req in zip(keys, requests):
                row = found.get(k)
                if row is None:
                    self._misses += 1
                    out.append(None)
                    continue
                self._hits += 1
                out.append(
                    ScoreResult(
                        logprobs=_dec_floats(row[1]),
                        probs=_dec_floats(row[2]),
                        prompt_tokens=int(row[3]),
                        completion_tokens=int(row[4]),
                        latency_s=0.0,
                        retries=0,
                        cached=True,
                        error=None,
                        method=row[6],
                    )
                )
        return out

    def put(self, identity: str, request: ScoreRequest, result: ScoreResult) -> bool:
        """Store a successful result; returns False (and stores nothing) for a
        failed one."""
        return self.put_many(identity, [(request, result)]) == 1

    def put_many(self, identity: str, items: Sequence[tuple[ScoreRequest, ScoreResult]]) -> int:
        rows = []
        now = time.time()
        for req, res in items:
            if not res.ok or any(math.isnan(p) for p in res.probs):
                continue
            rows.append(
                (
                    score_key(identity, req),
                    identity,
                    req.prompt,
                    json.dumps(list(req.options), ensure_ascii=False),
                    float(req.temperature),
                    _enc_floats(res.logprobs),
                    _enc_floats(res.probs),
                    int(res.prompt_tokens),
                    int(res.completion_tokens),
                    float(res.latency_s),
                    int(res.retries),
                    res.method,
                    now,
                )
            )
        if not rows:
            return 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return len(rows)

    # -- JSON generations and text completions: one table, a key kind each ----------
    def _get_value(self, key: str) -> Any:
        """The stored JSON value under ``key``, or None on a miss (counts towards hits/misses)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM json_responses WHERE key=?", (key,)).fetchone()
            if row is None:
                self._misses += 1
                return None
            self._hits += 1
        return json.loads(row[0])

    def _put_value(self, key: str, identity: str, prompt: str, value: Any) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO json_responses VALUES (?,?,?,?,?)",
                (key, identity, prompt, json.dumps(value, ensure_ascii=False), time.time()),
            )

    # -- JSON generations -------------------------------------------------
    def get_json(self, identity: str, prompt: str, schema: dict, max_tokens: int, temperature: float) -> Any:
        """Stored value, or None on a miss (counts towards hits/misses)."""
        return self._get_value(json_key(identity, prompt, schema, max_tokens, temperature))

    def put_json(
        self, identity: str, prompt: str, schema: dict, max_tokens: int, temperature: float, value: Any
    ) -> None:
        self._put_value(json_key(identity, prompt, schema, max_tokens, temperature), identity, prompt, value)

    # -- text completions (same table as JSON generations, own key kind) --
    def get_text(self, identity: str, prompt: str, max_tokens: int, stop: Sequence[str], temperature: float,
                 seed: int) -> str | None:
        """Stored completion, or None on a miss (counts towards hits/misses)."""
        value = self._get_value(complete_key(identity, prompt, max_tokens, stop, temperature, seed))
        return None if value is None else str(value)

    def put_text(self, identity: str, prompt: str, max_tokens: int, stop: Sequence[str], temperature: float,
                 seed: int, text: str) -> None:
        self._put_value(complete_key(identity, prompt, max_tokens, stop, temperature, seed), identity, prompt, text)

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:  # pragma: no cover
                pass

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r}, hits={self._hits}, misses={self._misses})"


class CachedBackend:
    """Wrap a backend: serve cache hits (``cached=True``, ``latency_s=0``) and
    forward all misses to the wrapped backend in ONE ``score`` call.

    Identical requests repeated inside one batch are forwarded once.  Failed
    results are passed through but not stored.  ``generate_json`` results are
    cached too (set ``cache_json=False`` to disable) -- note that this freezes a
    sampled (temperature > 0) generation for its key, which is what exact
    replay needs.  ``close()`` closes the wrapped backend, not the cache (a
    cache may be shared).
    """

    def __init__(self, backend: Any, cache: ResponseCache, *, cache_json: bool = True) -> None:
        self.backend = backend
        self.cache = cache
        self.cache_json = cache_json
        self.identity: str = backend.identity

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        requests = list(requests)
        cached = self.cache.get_many(self.identity, requests)
        miss_keys: dict[str, int] = {}
        to_forward: list[ScoreRequest] = []
        slot: list[int | None] = []
        for req, hit in zip(requests, cached):
            if hit is not None:
                slot.append(None)
                continue
            k = score_key(self.identity, req)
            if k not in miss_keys:
                miss_keys[k] = len(to_forward)
                to_forward.append(req)
            slot.append(miss_keys[k])
        fresh = self.backend.score(to_forward) if to_forward else []
        if len(fresh) != len(to_forward):
            raise RuntimeError(
                f"{self.identity}: backend returned {len(fresh)} results for {len(to_forward)} requests"
            )
        self.cache.put_many(self.identity, list(zip(to_forward, fresh)))
        return [hit if hit is not None else fresh[s] for hit, s in zip(cached, slot)]  # type: ignore[index]

    def generate_json(self, prompt: str, schema: dict, *, max_tokens: int = 64, temperature: float = 0.0) -> dict:
        if self.cache_json:
            hit = self.cache.get_json(self.identity, prompt, schema, max_tokens, temperature)
            if hit is not None:
                return hit
        value = self.backend.generate_json(prompt, schema, max_tokens=max_tokens, temperature=temperature)
        if self.cache_json:
            self.cache.put_json(self.identity, prompt, schema, max_tokens, temperature, value)
        return value

    def complete(self, prompt: str, *, max_tokens: int = 64, stop: Sequence[str] = (), temperature: float = 0.0,
                 seed: int = 0) -> str:
        """Plain bounded completion, cached like ``generate_json`` (always: a seeded sample is frozen)."""
        hit = self.cache.get_text(self.identity, prompt, max_tokens, stop, temperature, seed)
        if hit is not None:
            return hit
        text = self.backend.complete(prompt, max_tokens=max_tokens, stop=stop, temperature=temperature, seed=seed)
        self.cache.put_text(self.identity, prompt, max_tokens, stop, temperature, seed, text)
        return text

    def threads(self, requests: Sequence[ThreadRequest], *, max_tokens: int, stop: Sequence[str] = ("\n",)
                ) -> list[ThreadResult]:
        """Threads, cached as what they are equivalent to (:class:`~llm_policy.types.ThreadRequest`): the
        continuation as a ``complete`` entry and each question as a ``score`` entry of the concatenated
        prompt, so a replay of the run (``ReplayBackend``, which has no ``threads``) finds them. A thread
        with every part cached is served; the rest go to the wrapped backend together."""
        requests = list(requests)
        stop = list(stop)
        out: list[ThreadResult | None] = [None] * len(requests)
        miss: list[int] = []
        forward: list[ThreadRequest] = []
        known: dict[int, tuple[str, list]] = {}  # a cached continuation, its questions' cache hits (None: missing)
        for i, r in enumerate(requests):
            text: str | None = ""
            if r.generate:
                text = self.cache.get_text(self.identity, r.prompt, max_tokens, stop, 0.0, 0)
            if text is None:
                miss.append(i)
                forward.append(r)
                continue
            hits = self.cache.get_many(self.identity, [ScoreRequest(r.prompt + text + q.prompt, q.options,
                                                                    q.temperature) for q in r.questions])
            if any(h is None for h in hits):
                # never generate a stored continuation again (a thread's text depends on its group, and the
                # stored one is what a replay finds): ask the questions after it, as the request defines them
                miss.append(i)
                known[i] = (text, hits)
                forward.append(ThreadRequest(r.prompt + text, tuple(q for q, h in zip(r.questions, hits) if h is None)))
                continue
            out[i] = ThreadResult(text, tuple(hits))  # type: ignore[arg-type]
        fresh = run_threads(self.backend, forward, max_tokens=max_tokens, stop=stop)
        for i, f, res in zip(miss, forward, fresh):
            if res.text is not None:  # stored as what the forwarded thread is equivalent to
                if f.generate:
                    self.cache.put_text(self.identity, f.prompt, max_tokens, stop, 0.0, 0, res.text)
                self.cache.put_many(self.identity, [
                    (ScoreRequest(f.prompt + res.text + q.prompt, q.options, q.temperature), sc)
                    for q, sc in zip(f.questions, res.scores)])
            if i in known:  # the stored continuation, its cached answers and the new ones, in question order
                text, hits = known[i]
                new = iter(res.scores)
                res = ThreadResult(text, tuple(h if h is not None else next(new) for h in hits), res.error,
                                   res.latency_s)
            out[i] = res
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.backend.close()

    def __repr__(self) -> str:
        return f"CachedBackend({self.backend!r}, {self.cache!r})"
