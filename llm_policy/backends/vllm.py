"""In-process vLLM backend (offline ``vllm.LLM`` API, needs a CUDA GPU).

UNTESTED ON REAL vLLM in this repository's CI/dev machines (no GPU, vLLM not
installable).  It is written against vLLM's documented offline API:

* ``LLM(model=..., enable_prefix_caching=True, seed=..., **engine_kwargs)``
* scoring: for each request the prompt and every prompt+option are tokenised
  with the engine's tokenizer; every prompt+option sequence is submitted as a
  ``{"prompt_token_ids": [...]}`` prompt in ONE batched ``llm.generate`` call
  with ``SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1)``.
  ``RequestOutput.prompt_logprobs[j]`` (a ``{token_id: Logprob}`` dict) holds
  log p(token_j | tokens_<j); an option's logprob is the sum over its tokens
  (same shared-context rule as the llama.cpp backend, see there).  Prefix
  caching shares the common few-shot prefix across the batch -- but note that
  some vLLM versions recompute prompts that request ``prompt_logprobs``
  instead of reading them from the prefix cache.
* ``generate_json``: ``SamplingParams(structured_outputs=
  StructuredOutputsParams(json=schema))`` (vLLM >= 0.10.2), falling back to
  ``guided_decoding=GuidedDecodingParams(json=schema)`` on older versions.

The unit tests exercise this code against a stand-in ``vllm`` module; the
``@pytest.mark.vllm`` test runs it for real where vLLM is importable.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from llm_policy.types import common_prefix_length as _lcp
from llm_policy.types import BackendError, BackendUnavailable, ScoreRequest, ScoreResult, parse_json_output

__all__ = ["VLLMBackend"]


class VLLMBackend:
    """Offline vLLM engine.  ``identity`` = ``"vllm:<model>"`` plus revision /
    dtype / quantization when given in ``engine_kwargs``."""

    def __init__(self, model: str, *, seed: int = 0, **engine_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise BackendUnavailable(
                f"vllm is not installed (pip install 'simcore[vllm]', needs a CUDA GPU): {exc}"
            ) from exc
        self._vllm = vllm
        self.model = model
        engine_kwargs.setdefault("enable_prefix_caching", True)
        try:
            self._llm = vllm.LLM(model=model, seed=seed, **engine_kwargs)
        except Exception as exc:  # noqa: BLE001 - CUDA missing, model not found, OOM ...
            raise BackendUnavailable(f"vLLM could not start model {model!r}: {exc}") from exc
        self._tok = self._llm.get_tokenizer()
        parts = [f"vllm:{model}"]
        for k in ("revision", "dtype", "quantization"):
            if engine_kwargs.get(k):
                parts.append(str(engine_kwargs[k]))
        self.identity = ":".join(parts)

    def _encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=True))

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        requests = list(requests)
        t0 = time.perf_counter()
        plans: list[tuple[int, list[list[int]], int] | str] = []  # (k, joint ids, prompt len) or error
        prompts: list[dict] = []
        for req in requests:
            try:
                p_ids = self._encode(req.prompt)
                joint = [self._encode(req.prompt + o) for o in req.options]
                k = max(1, min(_lcp(p_ids, j) for j in joint))
                for o, j in zip(req.options, joint):
                    if len(j) <= k:
                        raise BackendError(f"option {o!r} adds no tokens to the prompt")
                plans.append((k, joint, len(p_ids)))
                prompts.extend({"prompt_token_ids": j} for j in joint)
            except Exception as exc:  # noqa: BLE001
                plans.append(f"{type(exc).__name__}: {exc}")
        outputs: list[Any] = []
        batch_error = None
        if prompts:
            params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
            try:
                outputs = list(self._llm.generate(prompts, sampling_params=params, use_tqdm=False))
            except Exception as exc:  # noqa: BLE001
                batch_error = f"vllm generate failed: {type(exc).__name__}: {exc}"
        dt = time.perf_counter() - t0
        per_req = dt / max(1, len(requests))
        results: list[ScoreResult] = []
        cursor = 0
        for req, plan in zip(requests, plans):
            if isinstance(plan, str):
                results.append(ScoreResult.failure(len(req.options), plan))
                continue
            k, joint, n_prompt = plan
            outs = outputs[cursor : cursor + len(joint)]
            cursor += len(joint)
            if batch_error is not None:
                results.append(ScoreResult.failure(len(req.options), batch_error))
                continue
            try:
                lps = []
                for j, out in zip(joint, outs):
                    pl = out.prompt_logprobs
                    if pl is None or len(pl) != len(j):
                        raise BackendError("vLLM returned no / mis-sized prompt_logprobs")
                    lps.append(sum(float(pl[pos][j[pos]].logprob) for pos in range(k, len(j))))
            except Exception as exc:  # noqa: BLE001
                results.append(ScoreResult.failure(len(req.options), f"{type(exc).__name__}: {exc}"))
                continue
            results.append(
                ScoreResult.from_logprobs(
                    lps,
                    req.temperature,
                    prompt_tokens=n_prompt,
                    completion_tokens=sum(len(j) - k for j in joint),
                    latency_s=per_req,
                )
            )
        return results

    def _json_params(self, schema: dict, max_tokens: int, temperature: float) -> Any:
        sp = self._vllm.SamplingParams
        try:
            from vllm.sampling_params import StructuredOutputsParams  # vLLM >= 0.10.2

            return sp(max_tokens=max_tokens, temperature=temperature,
                      structured_outputs=StructuredOutputsParams(json=schema))
        except ImportError:
            from vllm.sampling_params import GuidedDecodingParams  # older vLLM

            return sp(max_tokens=max_tokens, temperature=temperature,
                      guided_decoding=GuidedDecodingParams(json=schema))

    def generate_json(self, prompt: str, schema: dict, *, max_tokens: int = 64, temperature: float = 0.0) -> dict:
        params = self._json_params(schema, max_tokens, temperature)
        try:
            outs = self._llm.generate([prompt], sampling_params=params, use_tqdm=False)
            text = outs[0].outputs[0].text
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"vllm generate failed: {type(exc).__name__}: {exc}") from exc
        return parse_json_output(text, schema)

    def complete(self, prompt: str, *, max_tokens: int = 64, stop=(), temperature: float = 0.0, seed: int = 0) -> str:
        params = self._vllm.SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=int(seed),
                                           stop=list(stop) or None)
        try:
            outs = self._llm.generate([prompt], sampling_params=params, use_tqdm=False)
            return str(outs[0].outputs[0].text)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"vllm generate failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._llm = None

    def __repr__(self) -> str:
        return f"VLLMBackend(identity={self.identity!r})"
