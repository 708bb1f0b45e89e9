"""Test helpers: real local HTTP servers for the LLM backend tests.

``FakeCompletionServer`` is a tiny OpenAI-compatible ``/v1/completions``
server (stdlib ``http.server`` on 127.0.0.1, a free port, a daemon thread)
whose next-token distribution comes from a Python function, with fault
injection: sleep (time-outs), HTTP 500 / 429 / 400, garbage bodies, bodies with
missing fields, failing the first N requests, and dying mid-round.

``LlamaCppServer`` starts the real ``python -m llama_cpp.server`` as a
subprocess on a free port.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import httpx

DistFn = Callable[[str], dict]  # prompt -> {token text: logprob} (a normalised next-token distribution)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_TOKEN_RE = re.compile(r"\s?[A-Za-z]+|\s?\d|\s?[^\sA-Za-z\d]|\s+")


def toy_tokenize(text: str) -> list[int]:
    """Word-ish toy tokenizer: ' yes' is one token, ' strongly agree' two."""
    return [zlib.crc32(t.encode()) & 0x7FFFFFFF for t in _TOKEN_RE.findall(text)]


def yes_no_dist(p_yes: float = 0.7, p_no: float = 0.2) -> DistFn:
    """Next-token distribution: ' yes' p_yes, ' no' p_no, rest spread over filler tokens."""
    rest = 1.0 - p_yes - p_no
    fillers = {f" w{i}": rest / 30 for i in range(30)}

    def fn(prompt: str) -> dict:
        d = {" yes": p_yes, " no": p_no, **fillers}
        return {k: math.log(v) for k, v in d.items() if v > 0}

    return fn


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # clients that time out / servers that "crash" cause broken pipes: expected here
        pass


class FakeCompletionServer:
    """OpenAI-compatible fake.  ``mode``: "ok", "sleep", "500", "429", "400",
    "garbage", "missing", "no_logprobs".  ``fail_first``: the first N
    completion requests get HTTP 500.  ``die_after``: after that many completion
    requests the server drops the next connection without answering and shuts
    down for good (connection refused afterwards)."""

    def __init__(
        self,
        dist_fn: DistFn | None = None,
        *,
        mode: str = "ok",
        sleep_s: float = 2.0,
        fail_first: int = 0,
        die_after: int | None = None,
        owned_by: str = "fake",
        model: str = "fake-model",
        tokenizer: bool = True,
        honour_n: bool = True,
        json_text: str | Callable[[str], str] = '{"action": "stay", "intensity": 2}',
        port: int | None = None,
        seed: int = 0,
    ) -> None:
        self.dist_fn = dist_fn or yes_no_dist()
        self.mode = mode
        self.sleep_s = sleep_s
        self.fail_first = fail_first
        self.die_after = die_after
        self.owned_by = owned_by
        self.model = model
        self.tokenizer = tokenizer
        self.honour_n = honour_n
        self.json_text = json_text
        self.port = port or free_port()
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.completions = 0  # completion requests received
        self.tokenize_calls = 0
        self.bodies: list[dict] = []
        self.dead = False
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> "FakeCompletionServer":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, payload: Any, raw: bytes | None = None) -> None:
                body = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": owner.model, "object": "model", "owned_by": owner.owned_by}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except ValueError:
                    self._send(400, {"error": "bad json"})
                    return
                if self.path in ("/tokenize", "/extras/tokenize"):
                    if not owner.tokenizer or self.path != "/tokenize" or "prompt" not in body:
                        self._send(404, {"error": "no tokenizer"})
                        return
                    with owner.lock:
                        owner.tokenize_calls += 1
                    self._send(200, {"tokens": toy_tokenize(body["prompt"])})
                    return
                if self.path != "/v1/completions":
                    self._send(404, {"error": "not found"})
                    return
                owner._handle_completion(self, body)

        self._httpd = _QuietServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.dead = False
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.dead = True

    def restart(self) -> None:
        """Come back on the same port (for re-probe tests)."""
        self.stop()
        self.mode = "ok"
        self.die_after = None
        self.start()

    def __enter__(self) -> "FakeCompletionServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- behaviour ----------------------------------------------------------
    def _handle_completion(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        with self.lock:
            self.completions += 1
            count = self.completions
            self.bodies.append(body)
        if self.die_after is not None and count > self.die_after:
            # crash: drop this connection without an answer, then stop listening
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            h.close_connection = True
            if not self.dead:
                self.dead = True
                threading.Thread(target=self.stop, daemon=True).start()
            return
        if count <= self.fail_first:
            h._send(500, {"error": "warming up"})
            return
        mode = self.mode
        if mode == "sleep":
            time.sleep(self.sleep_s)
        elif mode in ("500", "429", "400"):
            h._send(int(mode), {"error": f"injected {mode}"})
            return
        elif mode == "garbage":
            h._send(200, None, raw=b"<html>this is not json{{{")
            return
        elif mode == "missing":
            h._send(200, {"id": "cmpl-x", "object": "text_completion"})
            return
        h._send(200, self._completion(body))

    def _constraint_options(self, body: dict) -> list[str] | None:
        so = body.get("structured_outputs")
        if isinstance(so, dict) and "choice" in so:
            return list(so["choice"])
        if "guided_choice" in body:
            return list(body["guided_choice"])
        g = body.get("grammar")
        if isinstance(g, str) and g.startswith("root ::= ") and "{" not in g:
            return [json.loads(lit) for lit in re.findall(r'"(?:[^"\\]|\\.)*"', g)]
        return None

    def _is_json_request(self, body: dict) -> bool:
        so = body.get("structured_outputs")
        return (isinstance(so, dict) and "json" in so) or "guided_json" in body or "json_schema" in body or (
            isinstance(body.get("grammar"), str) and "{" in body["grammar"]
        )

    def _completion(self, body: dict) -> dict:
        prompt = body.get("prompt", "")
        n_prompt = len(toy_tokenize(prompt))
        base = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": self.model}
        if self._is_json_request(body):
            text = self.json_text(prompt) if callable(self.json_text) else self.json_text
            return {**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": 8, "total_tokens": n_prompt + 8}}
        dist = self.dist_fn(prompt)
        options = self._constraint_options(body)
        if options is not None:
            t = float(body.get("temperature", 1.0))
            firsts = [_TOKEN_RE.findall(o)[0] for o in options]
            # an option's mass: its own entry, else its first token's mass shared with options starting alike
            lps = [dist[o] if o in dist else dist.get(f, -math.inf) - math.log(firsts.count(f))
                   for o, f in zip(options, firsts)]
            m = max(lps)
            if t == 0:
                w = [1.0 if x == m else 0.0 for x in lps]
            else:
                w = [math.exp((x - m) / t) if x > -math.inf else 0.0 for x in lps]
            n = int(body.get("n", 1)) if self.honour_n else 1
            with self.lock:
                picks = self.rng.choices(options, weights=w, k=n)
            choices = [{"index": i, "text": p, "logprobs": None, "finish_reason": "stop"} for i, p in enumerate(picks)]
            return {**base, "choices": choices, "usage": {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}}
        top_tok = max(dist, key=dist.get)
        logprobs = None
        k = body.get("logprobs")
        if k and self.mode != "no_logprobs":
            top = dict(sorted(dist.items(), key=lambda kv: -kv[1])[: int(k)])
            logprobs = {"tokens": [top_tok], "token_logprobs": [dist[top_tok]], "top_logprobs": [top], "text_offset": [len(prompt)]}
        return {**base, "choices": [{"index": 0, "text": top_tok, "logprobs": logprobs, "finish_reason": "length"}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": 1, "total_tokens": n_prompt + 1}}


# ---------------------------------------------------------------------------
# the real llama-cpp-python server
# ---------------------------------------------------------------------------
class LlamaCppServer:
    """``python -m llama_cpp.server`` on 127.0.0.1:<free port> as a subprocess."""

    def __init__(self, model_path: str, *, n_ctx: int = 512, extra_args: list[str] | None = None, startup_s: float = 120) -> None:
        self.model_path = model_path
        self.port = free_port()
        self.n_ctx = n_ctx
        self.extra_args = extra_args or []
        self.startup_s = startup_s
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"llama_server_{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LlamaCppServer":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", self.model_path, "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(self.n_ctx), *self.extra_args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}; log: {self.tail()}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {self.startup_s}s; log: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "LlamaCppServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
