"""Run the app on a real uvicorn server in a background thread (tests, benchmarks)."""
from __future__ import annotations

import json
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import uvicorn


class ServerThread:
    """``with ServerThread(app) as srv: httpx.get(srv.url + "/api/info")`` on a free 127.0.0.1 port."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                     timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 90.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError("uvicorn did not stop")

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until(predicate, timeout: float = 120.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate()`` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def iter_sse(lines):
    """Parse Server-Sent Events from an iterator of text lines: yields ``(event, data, id)``."""
    event, data, ev_id = "message", [], None
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data), ev_id
            event, data, ev_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                ev_id = value


def make_run_dir(runs_dir, run_id="past-run", status="completed"):
    """A finished run on disk, as the writer leaves it (no simulation needed)."""
    d = runs_dir / run_id
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"status": status, "steps": 3, "steps_done": 3, "seed": 0,
                                                 "n_agents": 10, "scenario": {"name": "x"}}))
    pq.write_table(pa.table({"step": [0, 1, 2], "S": [10, 9, 8]}), d / "metrics.parquet")
    return d
