"""Tests of the SQLite response cache, CachedBackend and ReplayBackend."""

from __future__ import annotations

import math
import threading

import pytest

from llm_policy.backends.fake import ScriptedBackend
from llm_policy.backends.replay import ReplayBackend, ReplayMiss
from llm_policy.cache import CachedBackend, ResponseCache, score_key
from llm_policy.types import BackendUnavailable, ScoreRequest, ScoreResult

YN = (" yes", " no")


def _fn(prompt, options):
    if "fail" in prompt:
        raise RuntimeError("transient")
    h = sum(map(ord, prompt)) % 7
    return [-(i + 1) * (h + 1) / 7.0 for i in range(len(options))]


def _batch(n, t=1.0):
    return [ScoreRequest(f"agent archetype {i}: act?", YN, t) for i in range(n)]


def test_key_depends_on_everything_that_matters():
    r = ScoreRequest("p", YN, 1.0)
    k = score_key("id", r)
    assert k == score_key("id", ScoreRequest("p", YN, 1.0)) and len(k) == 64
    assert k != score_key("id2", r)
    assert k != score_key("id", ScoreRequest("p ", YN, 1.0))
    assert k != score_key("id", ScoreRequest("p", (" no", " yes"), 1.0))
    assert k != score_key("id", ScoreRequest("p", YN, 0.7))


def test_second_identical_batch_is_all_hits(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    inner = ScriptedBackend(_fn, identity="scripted:a")
    b = CachedBackend(inner, cache)
    first = b.score(_batch(10))
    assert cache.hits == 0 and cache.misses == 10 and cache.hit_rate == 0.0
    second = b.score(_batch(10))
    assert len(inner.calls) == 1  # nothing forwarded the second time
    assert all(r.cached and r.latency_s == 0.0 for r in second)
    assert [r.probs for r in first] == [r.probs for r in second]
    assert [r.logprobs for r in first] == [r.logprobs for r in second]
    assert cache.hits == 10 and cache.hit_rate == pytest.approx(0.5)
    assert cache.stats()["entries"] == 10


def test_misses_forwarded_in_one_batch_and_deduplicated(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    inner = ScriptedBackend(_fn)
    b = CachedBackend(inner, cache)
    b.score(_batch(3))
    reqs = _batch(6) + _batch(6)  # 3 hits, 3 new (each twice)
    res = b.score(reqs)
    assert len(inner.calls) == 2 and len(inner.calls[1]) == 3
    assert [r.cached for r in res[:6]] == [True] * 3 + [False] * 3
    assert [r.probs for r in res[:6]] == [r.probs for r in res[6:]]


def test_errors_are_not_cached(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    inner = ScriptedBackend(_fn)
    b = CachedBackend(inner, cache)
    reqs = [ScoreRequest("please fail", YN), ScoreRequest("fine", YN)]
    r1 = b.score(reqs)
    assert not r1[0].ok and math.isnan(r1[0].probs[0]) and r1[1].ok
    assert cache.put("scripted:test", reqs[0], r1[0]) is False
    r2 = b.score(reqs)
    assert len(inner.calls) == 2 and inner.calls[1] == [reqs[0]]  # only the failure is retried
    assert not r2[0].ok and r2[1].cached
    assert len(cache) == 1


def test_cache_persists_across_instances_and_identities(tmp_path):
    path = tmp_path / "shared.sqlite"
    with ResponseCache(path) as c1:
        CachedBackend(ScriptedBackend(_fn, identity="m1"), c1).score(_batch(4))
    c2 = ResponseCache(path)
    other = ScriptedBackend(_fn, identity="m2")
    res = CachedBackend(other, c2).score(_batch(4))
    assert not any(r.cached for r in res)  # another model identity never shares answers
    same = ScriptedBackend(_fn, identity="m1")
    res = CachedBackend(same, c2).score(_batch(4))
    assert all(r.cached for r in res) and same.calls == []
    assert c2.identities() == ["m1", "m2"]


def test_infinite_logprobs_round_trip(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    req = ScoreRequest("p", (" a", " b", " c"))
    res = ScoreResult.from_logprobs([0.0, -math.inf, -1.0], 1.0)
    assert cache.put("x", req, res)
    got = cache.get("x", req)
    assert got.logprobs == res.logprobs and got.probs == res.probs and got.cached


def test_cache_is_thread_safe(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    errors = []

    def work(t):
        try:
            b = CachedBackend(ScriptedBackend(_fn, identity="shared"), cache)
            for _ in range(5):
                res = b.score([ScoreRequest(f"q{t}-{i}", YN) for i in range(20)] + _batch(5))
                assert all(r.ok for r in res)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert len(cache) == 8 * 20 + 5
    assert cache.hits + cache.misses == 8 * 5 * 25


def test_replay_reproduces_and_miss_names_the_hash(tmp_path):
    path = tmp_path / "run.sqlite"
    cache = ResponseCache(path)
    live = CachedBackend(ScriptedBackend(_fn, identity="llamacpp:model:abc"), cache)
    original = live.score(_batch(5, t=0.7))
    schema = {"type": "object"}
    live.backend.json_fn = lambda p, s: {"action": "stay"}
    assert live.generate_json("decide", schema) == {"action": "stay"}
    cache.close()

    rb = ReplayBackend(str(path))
    assert rb.identity == "llamacpp:model:abc"
    replayed = rb.score(_batch(5, t=0.7))
    assert [r.probs for r in replayed] == [r.probs for r in original]
    assert rb.generate_json("decide", schema) == {"action": "stay"}
    new = ScoreRequest("something never asked", YN)
    with pytest.raises(ReplayMiss) as ei:
        rb.score([new])
    key = score_key("llamacpp:model:abc", new)
    assert key in str(ei.value) and "never asked" in str(ei.value) and ei.value.key == key
    with pytest.raises(ReplayMiss):
        rb.score(_batch(5, t=1.0))  # different temperature = different question
    rb.close()


def test_replay_needs_identity_when_cache_is_mixed(tmp_path):
    cache = ResponseCache(tmp_path / "mixed.sqlite")
    CachedBackend(ScriptedBackend(_fn, identity="a"), cache).score(_batch(1))
    CachedBackend(ScriptedBackend(_fn, identity="b"), cache).score(_batch(1))
    with pytest.raises(BackendUnavailable, match="identities"):
        ReplayBackend(cache)
    assert ReplayBackend(cache, identity="b").score(_batch(1))[0].cached


def test_threads_are_cached_as_completions_and_scores_and_replay(tmp_path):
    """A cached backend stores a thread as what it is equivalent to (a completion and the scores of the
    concatenated prompts), so a replay, which has no ``threads``, answers it identically; a repeat is served."""
    import math

    from llm_policy.backends import ScriptedBackend
    from llm_policy.backends.replay import ReplayBackend
    from llm_policy.cache import CachedBackend, ResponseCache
    from llm_policy.types import ScoreRequest, ThreadRequest, run_threads

    inner = ScriptedBackend(lambda p, o: [math.log(0.7 if "careful" in p else 0.2), math.log(0.3 if "careful" in p else 0.8)],
                            text_fn=lambda prompt, seed: " is careful.\nmore")
    cache = ResponseCache(tmp_path / "c.sqlite")
    q = (ScoreRequest("\nIsolate? Answer:", (" yes", " no")),)
    reqs = [ThreadRequest("Agent 1 remembers rain.\nThis person", q, True), ThreadRequest("Agent 2, no turn.", q)]
    first = CachedBackend(inner, cache).threads(reqs, max_tokens=8)
    assert [r.text for r in first] == [" is careful.", ""]
    assert first[0].scores[0].probs[0] == pytest.approx(0.7) and first[1].scores[0].probs[0] == pytest.approx(0.2)
    n_calls = len(inner.calls)
    again = CachedBackend(inner, cache).threads(reqs, max_tokens=8)
    assert len(inner.calls) == n_calls and all(s.cached for r in again for s in r.scores)
    replay = run_threads(ReplayBackend(cache, identity=inner.identity), reqs, max_tokens=8)
    assert [r.text for r in replay] == [r.text for r in first]
    assert [r.scores[0].probs for r in replay] == [r.scores[0].probs for r in first]


def test_a_cached_continuation_is_never_generated_again(tmp_path):
    """A thread whose continuation is cached but one of whose questions is not (failed before, or new) asks only
    the questions, after the stored text: the stored continuation stays what a replay reads."""
    import math

    from llm_policy.backends import ScriptedBackend
    from llm_policy.cache import CachedBackend, ResponseCache
    from llm_policy.types import ScoreRequest, ThreadRequest

    texts = iter([" first.\n", " second.\n"])
    inner = ScriptedBackend(lambda p, o: [math.log(0.5), math.log(0.5)], text_fn=lambda prompt, seed: next(texts))
    cache = ResponseCache(tmp_path / "c.sqlite")
    q1 = ScoreRequest("\nQ1:", (" a", " b"))
    q2 = ScoreRequest("\nQ2:", (" a", " b"))
    CachedBackend(inner, cache).threads([ThreadRequest("P", (q1,), True)], max_tokens=4)
    again = CachedBackend(inner, cache).threads([ThreadRequest("P", (q1, q2), True)], max_tokens=4)
    assert again[0].text == " first." and len(inner.completions) == 1
    assert [r.prompt for r in inner.calls[-1]] == ["P first.\nQ2:"]
    assert cache.get_text(inner.identity, "P", 4, ["\n"], 0.0, 0) == " first."
