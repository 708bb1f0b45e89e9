"""Backend for OpenAI-compatible completion servers (vLLM, llama.cpp's
``llama-server``, ``python -m llama_cpp.server``), with load balancing,
retries and fail-over.

Scoring strategy
----------------
1. *First-token logprobs* (default): ``POST /v1/completions`` with the prompt,
   ``max_tokens=1, logprobs=top_logprobs`` (20 by default, vLLM's default cap)
   and ``temperature=0``.  The answer's ``top_logprobs[0]`` is the model's
   next-token distribution (top-k of it).  Each option is matched to the
   longest returned token text that is a prefix of the option (the option's
   first token under the usual greedy tokenisation), and ``logprob_i`` is that
   token's logprob.  This is exact for single-token options and, for options
   whose *first tokens differ*, it is the probability that the model commits
   to that option.  Options missing from the top-k get the upper bound
   ``min(smallest top-k logprob, log(1 - top-k mass))``.

   First tokens must be distinct.  If the server has a tokenizer endpoint
   (vLLM ``POST /tokenize``, llama.cpp ``POST /tokenize``, llama-cpp-python
   ``POST /extras/tokenize``) this is checked: the end of the prompt is
   tokenised with and without each option and the first differing token ids are
   compared (results are memoised per prompt tail + options).  Without such an
   endpoint the assumption is checked only on the returned token texts
   (two options mapping to the same top-k token).
2. *Sampled fallback*: when the server returns no logprobs, when no option is
   in the top-k, or when first tokens collide, we sample
   ``fallback_samples`` constrained completions -- vLLM
   ``structured_outputs={"choice": [...]}`` (``guided_choice`` for
   ``constraint_style="vllm-legacy"``), llama.cpp ``grammar`` -- at the
   request's temperature and turn counts into frequencies.  These are
   Monte-Carlo estimates, marked ``method="sampled"``; ``logprobs`` is then
   ``temperature * log(frequency)`` so that ``probs == softmax(logprobs / T)``
   still holds.  Disable with ``fallback_samples=0`` (the request then fails).

Fault handling
--------------
Every HTTP call goes through one retry loop: timeouts, connection errors,
HTTP 5xx and 429 are retried with exponential back-off (``backoff_s * 2**k``,
capped, +-10% jitter; ``Retry-After`` honoured for 429), preferably on a
different endpoint; other 4xx are not retried.  Malformed answers (not JSON,
missing fields) are retried too.  After ``max_retries`` retries the request's
``ScoreResult`` carries ``error`` -- ``score()`` itself never raises.

Endpoints are picked least-in-flight first (round-robin among ties).  An
endpoint with ``dead_after`` consecutive connection failures/timeouts is
marked dead and skipped; a dead endpoint is re-probed (``GET /v1/models``)
every ``reprobe_s`` seconds and rejoins when it answers.  At start-up every
endpoint is probed; if none answers, :class:`BackendUnavailable` is raised.

Concurrency: one ``asyncio.Semaphore(concurrency)`` bounds in-flight HTTP
requests over all endpoints.  The client and event loop live on a private
background thread, so ``score()`` works from any thread (also from inside a
running event loop); ``ascore()`` is the awaitable form.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import httpx

from llm_policy.types import (
    BackendError,
    BackendUnavailable,
    ScoreRequest,
    ScoreResult,
    parse_json_output,
)

__all__ = ["OpenAIBackend"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_CONSTRAINT_STYLES = ("auto", "vllm", "vllm-legacy", "llama.cpp", "llama-cpp-python")


class _Malformed(Exception):
    """The server answered 2xx but the body is unusable."""


class _RequestFailed(Exception):
    """A call failed for good (retries exhausted or non-retryable)."""


@dataclass
class _Endpoint:
    base: str
    alive: bool = True
    in_flight: int = 0
    consecutive_failures: int = 0
    next_probe: float = 0.0
    probing: bool = False
    owned_by: str | None = None
    models: list[str] = field(default_factory=list)
    tokenize_style: str | None = None  # None = unknown, "" = none available
    requests: int = 0
    failures: int = 0

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.base,
            "alive": self.alive,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "owned_by": self.owned_by,
        }


@dataclass
class _Attempts:
    retries: int = 0
    queued_s: float = 0.0  # time spent waiting for a concurrency slot (not counted as latency)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _normalise_base(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    if "://" not in url:
        url = "http://" + url
    return url


def _gbnf_literal(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # GBNF string literals use JSON-style escapes


def _choice_grammar(options: Sequence[str]) -> str:
    return "root ::= " + " | ".join(_gbnf_literal(o) for o in options)


class _LoopThread:
    """An asyncio event loop running forever on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[T]) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("OpenAIBackend.score() called from its own event loop; use ascore()")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class OpenAIBackend:
    """Score options / generate JSON through OpenAI-compatible ``/v1/completions``
    servers.  See the module docstring for strategy and fault handling.

    ``identity`` is ``"openai:<model>"`` (plus ``":<revision>"`` if given):
    endpoints are replicas of one model, so fail-over does not change cache
    keys.  Pass ``revision`` to distinguish different weights served under the
    same name.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 30,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        health_check: bool = True,
        *,
        top_logprobs: int = 20,
        fallback_samples: int = 16,
        choice_max_tokens: int = 16,
        check_first_tokens: bool = True,
        constraint_style: str = "auto",
        dead_after: int = 2,
        reprobe_s: float = 5.0,
        max_backoff_s: float = 8.0,
        revision: str | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise BackendUnavailable("OpenAIBackend needs at least one endpoint URL")
        if constraint_style not in _CONSTRAINT_STYLES:
            raise ValueError(f"constraint_style must be one of {_CONSTRAINT_STYLES}")
        self._eps = [_Endpoint(_normalise_base(u)) for u in endpoints]
        self.model = model or ""
        self.api_key = api_key
        self.concurrency = max(1, int(concurrency))
        self.timeout_s = float(timeout_s)
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.top_logprobs = int(top_logprobs)
        self.fallback_samples = int(fallback_samples)
        self.choice_max_tokens = int(choice_max_tokens)
        self.check_first_tokens = bool(check_first_tokens)
        self.constraint_style = constraint_style
        self.dead_after = max(1, int(dead_after))
        self.reprobe_s = float(reprobe_s)
        self.revision = revision
        self._rr = 0
        self._first_tok_memo: OrderedDict[tuple, bool | None] = OrderedDict()
        self._rng = random.Random(0)
        self._closed = False
        self.stats: Counter[str] = Counter()
        self._lt = _LoopThread(name="OpenAIBackend-loop")
        try:
            self._lt.run(self._setup())
            if health_check:
                errors = self._lt.run(self._probe_all())
                if not any(ep.alive for ep in self._eps):
                    raise BackendUnavailable(
                        "no OpenAI-compatible endpoint is reachable: "
                        + "; ".join(f"{ep.base}: {err}" for ep, err in zip(self._eps, errors))
                    )
                if not self.model:
                    for ep in self._eps:
                        if ep.alive and ep.models:
                            self.model = ep.models[0]
                            break
                served = {m for ep in self._eps for m in ep.models}
                if self.model and served and self.model not in served:
                    log.warning("model %r is not listed by the endpoints (they serve %s)", self.model, sorted(served))
        except BaseException:
            self._shutdown()
            raise
        if not self.model:
            self._shutdown()
            raise BackendUnavailable("OpenAIBackend: no model given and none could be discovered via /v1/models")
        self.identity = f"openai:{self.model}" + (f":{revision}" if revision else "")

    # -- life cycle ---------------------------------------------------------
    async def _setup(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency + 4, max_keepalive_connections=self.concurrency)
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 5.0)),
            limits=limits,
        )
        self._sem = asyncio.Semaphore(self.concurrency)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None and not self._lt.loop.is_closed():
            try:
                self._lt.run(client.aclose())
            except Exception:  # noqa: BLE001  # pragma: no cover
                pass
        self._lt.stop()

    def __enter__(self) -> "OpenAIBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAIBackend(identity={getattr(self, 'identity', '?')!r}, endpoints={[e.base for e in self._eps]})"

    def endpoint_status(self) -> list[dict[str, Any]]:
        """Per-endpoint health/load counters (a snapshot)."""
        return [ep.status() for ep in self._eps]

    # -- health -------------------------------------------------------------
    async def _probe(self, ep: _Endpoint) -> str | None:
        """GET /v1/models; returns None on success, else the error text."""
        ep.probing = True
        try:
            resp = await self._client.get(ep.base + "/v1/models", timeout=min(self.timeout_s, 5.0))
            if resp.status_code != 200:
                raise _Malformed(f"HTTP {resp.status_code}")
            data = resp.json()
            entries = data.get("data") or []
            ep.models = [str(m.get("id")) for m in entries if isinstance(m, dict) and m.get("id")]
            owners = [m.get("owned_by") for m in entries if isinstance(m, dict)]
            ep.owned_by = str(owners[0]) if owners and owners[0] else None
        except Exception as exc:  # noqa: BLE001
            ep.alive = False
            ep.next_probe = time.monotonic() + self.reprobe_s
            return f"{type(exc).__name__}: {exc}"
        finally:
            ep.probing = False
        if not ep.alive:
            log.info("endpoint %s is back", ep.base)
        ep.alive = True
        ep.consecutive_failures = 0
        return None

    async def _probe_all(self) -> list[str | None]:
        return list(await asyncio.gather(*(self._probe(ep) for ep in self._eps)))

    def _note_transport_failure(self, ep: _Endpoint) -> None:
        ep.failures += 1
        ep.consecutive_failures += 1
        if ep.alive and ep.consecutive_failures >= self.dead_after:
            ep.alive = False
            ep.next_probe = time.monotonic() + self.reprobe_s
            self.stats["endpoints_marked_dead"] += 1
            log.warning("endpoint %s marked dead after %d consecutive failures", ep.base, ep.consecutive_failures)

    def _pick(self, avoid: _Endpoint | None) -> _Endpoint:
        now = time.monotonic()
        for ep in self._eps:  # schedule re-probes of dead endpoints
            if not ep.alive and not ep.probing and now >= ep.next_probe:
                ep.probing = True
                ep.next_probe = now + self.reprobe_s
                asyncio.get_running_loop().create_task(self._probe(ep))
        alive = [ep for ep in self._eps if ep.alive]
        if len(alive) > 1 and avoid is not None:
            alive = [ep for ep in alive if ep is not avoid] or alive
        if not alive:
            # everything looks dead: try the one whose probe is due soonest (the request is the probe)
            return min(self._eps, key=lambda e: (e is avoid, e.next_probe))
        self._rr += 1
        n = len(alive)
        return min(
            (alive[(self._rr + i) % n] for i in range(n)),
            key=lambda e: e.in_flight,
        )

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))
        return base * (1.0 + 0.1 * (2 * self._rng.random() - 1))

    # -- the retry loop -----------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        body_fn: Callable[[_Endpoint], dict] | None,
        parse: Callable[[Any, _Endpoint], T],
        st: _Attempts,
        *,
        retries: int | None = None,
    ) -> T:
        max_retries = self.max_retries if retries is None else retries
        last_err = "no attempt made"
        last_ep: _Endpoint | None = None
        for attempt in range(max_retries + 1):
            if attempt > 0:
                st.retries += 1
                self.stats["retries"] += 1
                await asyncio.sleep(self._backoff(attempt))
            tq = time.perf_counter()
            async with self._sem:
                st.queued_s += time.perf_counter() - tq
                # pick only once a slot is free, so the in-flight counts are current
                ep = self._pick(avoid=last_ep)
                last_ep = ep
                ep.in_flight += 1
                ep.requests += 1
                try:
                    if method == "GET":
                        resp = await self._client.get(ep.base + path)
                    else:
                        resp = await self._client.post(ep.base + path, json=body_fn(ep) if body_fn else {})
                except httpx.TimeoutException as exc:
                    self._note_transport_failure(ep)
                    last_err = f"{ep.base}: timeout ({type(exc).__name__}) after {self.timeout_s:g}s"
                    self.stats["timeouts"] += 1
                    continue
                except httpx.TransportError as exc:
                    self._note_transport_failure(ep)
                    last_err = f"{ep.base}: connection error {type(exc).__name__}: {exc}"
                    self.stats["connection_errors"] += 1
                    continue
                finally:
                    ep.in_flight -= 1
            code = resp.status_code
            if code == 429 or code >= 500:
                ep.failures += 1
                self.stats[f"http_{code}"] += 1
                last_err = f"{ep.base}: HTTP {code}: {resp.text[:200]!r}"
                if code == 429:
                    try:
                        await asyncio.sleep(min(float(resp.headers.get("retry-after", 0)), self.max_backoff_s))
                    except ValueError:
                        pass
                continue
            if code >= 400:
                self.stats[f"http_{code}"] += 1
                raise _RequestFailed(f"{ep.base}: HTTP {code} (not retried): {resp.text[:300]!r}")
            ep.consecutive_failures = 0
            try:
                data = resp.json()
                return parse(data, ep)
            except (_Malformed, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                ep.failures += 1
                self.stats["malformed"] += 1
                last_err = f"{ep.base}: malformed response ({type(exc).__name__}: {exc}): {resp.text[:200]!r}"
                continue
        raise _RequestFailed(f"failed after {max_retries + 1} attempts; last error: {last_err}")

    # -- scoring ------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Blocking batch scoring (safe from any thread)."""
        if self._closed:
            raise RuntimeError("OpenAIBackend is closed")
        return self._lt.run(self._score_all(list(requests)))

    async def ascore(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Awaitable batch scoring, usable from any event loop."""
        if self._closed:
            raise RuntimeError("OpenAIBackend is closed")
        fut = asyncio.run_coroutine_threadsafe(self._score_all(list(requests)), self._lt.loop)
        return await asyncio.wrap_future(fut)

    async def _score_all(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return list(await asyncio.gather(*(self._score_safe(r) for r in requests)))

    async def _score_safe(self, req: ScoreRequest) -> ScoreResult:
        t0 = time.perf_counter()
        st = _Attempts()
        try:
            res = await self._score_one(req, st)
        except _RequestFailed as exc:
            res = ScoreResult.failure(len(req.options), str(exc), retries=st.retries)
        except Exception as exc:  # noqa: BLE001 - never raise out of score()
            log.exception("unexpected error while scoring")
            res = ScoreResult.failure(len(req.options), f"{type(exc).__name__}: {exc}", retries=st.retries)
        self.stats["requests"] += 1
        if not res.ok:
            self.stats["failed_requests"] += 1
        # latency = this request's own time (HTTP attempts + back-off), excluding
        # the wait for a free concurrency slot behind the rest of the batch
        return _with(res, latency_s=max(0.0, time.perf_counter() - t0 - st.queued_s), retries=st.retries)

    async def _score_one(self, req: ScoreRequest, st: _Attempts) -> ScoreResult:
        reason = None
        if self.check_first_tokens and len(req.options) > 1:
            distinct = await self._first_tokens_distinct(req)
            if distinct is False:
                reason = "options share their first token"
        if reason is None:
            top = await self._call("POST", "/v1/completions", lambda ep: self._first_token_body(req), _parse_top, st)
            st.prompt_tokens, st.completion_tokens = top[1], top[2]
            if top[0] is None:
                reason = "server returned no logprobs"
            else:
                lp, why = _match_options(req.options, top[0])
                if lp is not None:
                    return ScoreResult.from_logprobs(
                        lp, req.temperature, prompt_tokens=st.prompt_tokens, completion_tokens=st.completion_tokens
                    )
                reason = why
        if self.fallback_samples <= 0:
            raise _RequestFailed(f"first-token scoring impossible ({reason}) and fallback_samples=0")
        self.stats["sampled_fallbacks"] += 1
        return await self._score_sampled(req, st, reason)

    def _first_token_body(self, req: ScoreRequest) -> dict:
        return {
            "model": self.model,
            "prompt": req.prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.top_logprobs,
            "echo": False,
        }

    def _style(self, ep: _Endpoint) -> str:
        if self.constraint_style != "auto":
            return self.constraint_style
        owner = (ep.owned_by or "").lower()
        if owner == "vllm":
            return "vllm"
        if owner == "llamacpp":
            return "llama.cpp"
        return "llama-cpp-python"

    def _choice_body(self, req: ScoreRequest, ep: _Endpoint, n: int) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": req.prompt,
            "max_tokens": self.choice_max_tokens,
            "temperature": req.temperature,
            "n": n,
        }
        style = self._style(ep)
        if style == "vllm":
            body["structured_outputs"] = {"choice": list(req.options)}
        elif style == "vllm-legacy":
            body["guided_choice"] = list(req.options)
        else:
            body["grammar"] = _choice_grammar(req.options)
        return body

    async def _score_sampled(self, req: ScoreRequest, st: _Attempts, reason: str | None) -> ScoreResult:
        counts = Counter({o: 0 for o in req.options})
        stripped = {o.strip(): o for o in req.options}
        got = 0
        rounds = 0
        while got < self.fallback_samples and rounds < self.fallback_samples:
            rounds += 1
            need = self.fallback_samples - got

            def parse(data: Any, ep: _Endpoint) -> list[str]:
                texts = [c["text"] for c in data["choices"]]
                matched = [t if t in counts else stripped.get(t.strip()) for t in texts]
                if not any(m is not None for m in matched):
                    raise _Malformed(f"no sample matched an option: {texts[:3]!r}")
                return [m for m in matched if m is not None]

            matched = await self._call(
                "POST", "/v1/completions", lambda ep: self._choice_body(req, ep, need), parse, st
            )
            for m in matched[:need]:
                counts[m] += 1
            got += len(matched[:need])
        freqs = [counts[o] / got for o in req.options]
        t = req.temperature
        lp = [(t if t > 0 else 1.0) * (math.log(f) if f > 0 else -math.inf) for f in freqs]
        res = ScoreResult.from_logprobs(lp, t, method="sampled")
        log.debug("sampled fallback (%s): %s", reason, dict(counts))
        return res

    async def _first_tokens_distinct(self, req: ScoreRequest) -> bool | None:
        """True/False if the server's tokenizer says the options' first tokens
        are distinct; None if it cannot tell (no tokenizer endpoint)."""
        tail = req.prompt[-64:]
        key = (tail, req.options)
        if key in self._first_tok_memo:
            self._first_tok_memo.move_to_end(key)
            return self._first_tok_memo[key]
        base = await self._tokenize(tail)
        result: bool | None = None
        if base is not None:
            firsts = []
            for o in req.options:
                toks = await self._tokenize(tail + o)
                if toks is None:
                    firsts = None
                    break
                k = 0
                while k < min(len(base), len(toks)) and base[k] == toks[k]:
                    k += 1
                firsts.append(toks[k] if k < len(toks) else None)
            if firsts is not None:
                result = len(set(firsts)) == len(firsts) and None not in firsts
        self._first_tok_memo[key] = result
        while len(self._first_tok_memo) > 4096:
            self._first_tok_memo.popitem(last=False)
        return result

    async def _tokenize(self, text: str) -> list[int] | None:
        styles = {
            "vllm": ("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False}),
            "llama.cpp": ("/tokenize", {"content": text, "add_special": False}),
            "llama-cpp-python": ("/extras/tokenize", {"model": self.model, "input": text}),
        }
        ep = self._pick(avoid=None)
        if ep.tokenize_style == "":
            return None
        order = [ep.tokenize_style] if ep.tokenize_style else list(styles)
        for style in order:
            path, body = styles[style]
            try:
                async with self._sem:
                    resp = await self._client.post(ep.base + path, json=body, timeout=min(self.timeout_s, 5.0))
                toks = resp.json().get("tokens") if resp.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                toks = None
            if isinstance(toks, list) and all(isinstance(t, int) for t in toks):
                ep.tokenize_style = style
                return toks
            if isinstance(toks, list) and all(isinstance(t, dict) and "id" in t for t in toks):
                ep.tokenize_style = style  # llama.cpp with_pieces
                return [int(t["id"]) for t in toks]
        if ep.tokenize_style is None:
            ep.tokenize_style = ""
        return None

    # -- JSON ---------------------------------------------------------------
    def generate_json(self, prompt: str, schema: dict, *, max_tokens: int = 64, temperature: float = 0.0) -> dict:
        if self._closed:
            raise RuntimeError("OpenAIBackend is closed")
        return self._lt.run(self._generate_json(prompt, schema, max_tokens, temperature))

    async def agenerate_json(
        self, prompt: str, schema: dict, *, max_tokens: int = 64, temperature: float = 0.0
    ) -> dict:
        fut = asyncio.run_coroutine_threadsafe(
            self._generate_json(prompt, schema, max_tokens, temperature), self._lt.loop
        )
        return await asyncio.wrap_future(fut)

    async def _generate_json(self, prompt: str, schema: dict, max_tokens: int, temperature: float) -> dict:
        grammar_cache: dict[str, str] = {}

        def body(ep: _Endpoint) -> dict:
            b: dict[str, Any] = {
                "model": self.model,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": temperature,
            }
            style = self._style(ep)
            if style == "vllm":
                b["structured_outputs"] = {"json": schema}
            elif style == "vllm-legacy":
                b["guided_json"] = schema
            elif style == "llama.cpp":
                b["json_schema"] = schema
            else:
                if "g" not in grammar_cache:
                    grammar_cache["g"] = _schema_to_gbnf(schema)
                b["grammar"] = grammar_cache["g"]
            return b

        def parse(data: Any, ep: _Endpoint) -> dict:
            text = data["choices"][0]["text"]
            try:
                return parse_json_output(text, schema)
            except BackendError as exc:
                raise _Malformed(str(exc)) from None

        try:
            return await self._call("POST", "/v1/completions", body, parse, _Attempts())
        except _RequestFailed as exc:
            raise BackendError(f"generate_json failed: {exc}") from None

    def complete(self, prompt: str, *, max_tokens: int = 64, stop: Sequence[str] = (), temperature: float = 0.0,
                 seed: int = 0) -> str:
        """Plain bounded completion (``/v1/completions``, ``seed`` passed on), with the usual retries."""
        if self._closed:
            raise RuntimeError("OpenAIBackend is closed")

        def body(ep: _Endpoint) -> dict:
            b: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                                 "temperature": temperature, "seed": int(seed)}
            if stop:
                b["stop"] = list(stop)
            return b

        def parse(data: Any, ep: _Endpoint) -> str:
            choice = data["choices"][0]
            if not isinstance(choice, dict) or not isinstance(choice.get("text"), str):
                raise _Malformed("choice without text")
            return choice["text"]

        async def go() -> str:
            try:
                return await self._call("POST", "/v1/completions", body, parse, _Attempts())
            except _RequestFailed as exc:
                raise BackendError(f"complete failed: {exc}") from None

        return self._lt.run(go())


def _schema_to_gbnf(schema: dict) -> str:
    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf
    except ImportError as exc:  # pragma: no cover - depends on install
        raise BackendError(
            "llama-cpp-python servers take a GBNF grammar; converting the JSON schema needs "
            "llama-cpp-python installed on the client too (or use a vLLM / llama.cpp server)"
        ) from exc
    return json_schema_to_gbnf(json.dumps(schema))


def _with(res: ScoreResult, **changes: Any) -> ScoreResult:
    from dataclasses import replace

    return replace(res, **changes)


def _parse_top(data: Any, ep: _Endpoint) -> tuple[dict[str, float] | None, int, int]:
    """-> (top-k {token text: logprob} of the first generated position or None
    when the server gave no logprobs, prompt_tokens, completion_tokens)."""
    choice = data["choices"][0]
    if not isinstance(choice, dict) or "text" not in choice:
        raise _Malformed("choice without text")
    usage = data.get("usage") or {}
    pt = int(usage.get("prompt_tokens") or 0)
    ct = int(usage.get("completion_tokens") or 0)
    lp = choice.get("logprobs")
    if not lp:
        return None, pt, ct
    tops = lp.get("top_logprobs")
    if not tops or tops[0] is None:
        return None, pt, ct
    top = tops[0]
    if not isinstance(top, dict) or not top:
        raise _Malformed("top_logprobs[0] is not a non-empty object")
    out: dict[str, float] = {}
    for tok, v in top.items():
        v = float(v)
        if math.isnan(v) or v > 1e-6:
            raise _Malformed(f"invalid logprob {v!r} for token {tok!r}")
        out[str(tok)] = max(out.get(str(tok), -math.inf), min(v, 0.0))
    return out, pt, ct


def _match_options(options: Sequence[str], top: dict[str, float]) -> tuple[list[float] | None, str | None]:
    """Map each option to its first token's logprob in ``top`` (longest token
    text that is a prefix of the option).  Returns (logprobs, None) or
    (None, reason) when first-token scoring cannot separate the options."""
    matched: list[str | None] = []
    for o in options:
        best = None
        for tok in top:
            if tok and o.startswith(tok) and (best is None or len(tok) > len(best)):
                best = tok
        matched.append(best)
    present = [m for m in matched if m is not None]
    if not present:
        return None, f"no option among the top-{len(top)} next tokens"
    if len(set(present)) != len(present):
        return None, "two options map to the same first token"
    mass = math.fsum(math.exp(v) for v in top.values())
    floor = min(top.values())
    if mass < 1.0:
        floor = min(floor, math.log1p(-mass))  # a missing token has at most the left-over mass
    return [top[m] if m is not None else floor for m in matched], None
