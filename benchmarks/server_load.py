"""Live-stream load: does a run slow down when 50 clients watch it over SSE?

    python -m benchmarks.server_load [--clients 50] [--agents 50000] [--window 10] [--rounds 2] [--json PATH]

Starts ``simcore serve`` as a subprocess on a free 127.0.0.1 port (loopback only),
starts one covid_small run, waits until it steps (compile done), then alternates
measurement windows (ABBA order): without clients, and with ``--clients`` SSE clients streaming
the run the way the dashboard page does (its columns, ``interval=0.25``). The
run's steps/s is read from the server's step counter at the start and end of each
window. The clients live in this process (asyncio + httpx); the server is a
separate process, so its CPU time per window is reported too. Last, the streams' own
cost is measured without a simulation: the server's CPU with and without the clients
while a fake run feeds rows at 100 steps/s (``stream_cost``). Bounded in time:
``--timeout`` (default 600 s) for the whole thing.

Target: the drop in steps/s with the clients attached is <= 5 %.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PAGE_COLUMNS = "S,E,I,R,M,new_infections,new_cases,new_deaths,wall_seconds,llm_calls,llm_cache_hits,llm_seconds,llm_fallbacks"
TARGET_DROP = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step_of(client: httpx.Client, run_id: str) -> int:
    return client.get(f"/api/runs/{run_id}").json()["step"]


def load_average() -> float:
    return os.getloadavg()[0]


def window(client: httpx.Client, run_id: str, seconds: float, pid: int) -> dict:
    c0, s0, t0 = cpu_seconds(pid), step_of(client, run_id), time.monotonic()
    m0 = cpu_seconds(os.getpid())
    lat = []  # the page's own polling, as a responsiveness probe: GET /api/runs every 0.25 s
    end = t0 + seconds
    while time.monotonic() < end:
        q = time.monotonic()
        client.get("/api/runs")
        lat.append(time.monotonic() - q)
        time.sleep(max(0.0, min(0.25, end - time.monotonic())))
    c1, s1, t1 = cpu_seconds(pid), step_of(client, run_id), time.monotonic()
    m1 = cpu_seconds(os.getpid())
    return {"steps_per_s": (s1 - s0) / (t1 - t0), "server_cpu": (c1 - c0) / (t1 - t0),
            "clients_cpu": (m1 - m0) / (t1 - t0), "load_avg_1m": load_average(), "steps": s1 - s0,
            "api_ms_p50": 1000 * statistics.median(lat), "api_ms_max": 1000 * max(lat)}


class Watchers:
    """``n`` SSE clients on one run, in a background asyncio loop thread."""

    def __init__(self, url: str, run_id: str, n: int, columns: str | None, interval: float):
        self.url, self.run_id, self.n = url, run_id, n
        self.params = {"interval": interval, **({"columns": columns} if columns else {})}
        self.rows = [0] * n
        self.events = [0] * n
        self.ready = 0
        self.errors: list[str] = []
        self._stop: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        import threading

        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _one(self, client: httpx.AsyncClient, i: int) -> None:
        try:
            async with client.stream("GET", f"/api/runs/{self.run_id}/stream", params=self.params) as resp:
                resp.raise_for_status()
                event = None
                async for line in resp.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event in ("history", "metrics"):
                        self.rows[i] += line.count('{"step":')  # counted, not parsed: keep client CPU low
                        self.events[i] += 1
                        if event == "history":
                            self.ready += 1
                    if self._stop.is_set():
                        return
        except (httpx.HTTPError, ValueError) as exc:
            self.errors.append(f"client {i}: {exc!r}")

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        limits = httpx.Limits(max_connections=self.n + 5, max_keepalive_connections=self.n + 5)
        async with httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(60, read=120), limits=limits) as c:
            tasks = [asyncio.create_task(self._one(c, i)) for i in range(self.n)]
            await self._stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def start(self, timeout: float = 60) -> "Watchers":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while self.ready < self.n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.ready}/{self.n} clients got their history ({self.errors[:3]})")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


CLIENT_SCRIPT = """
import asyncio, sys, httpx
url, n, columns, interval = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
params = {"interval": interval, **({"columns": columns} if columns != "all" else {})}
async def one(c):
    async with c.stream("GET", "/api/runs/fake-run/stream", params=params) as r:
        async for line in r.aiter_lines():
            pass
async def main():
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=httpx.Limits(max_connections=n + 5)) as c:
        await asyncio.gather(*[one(c) for _ in range(n)])
asyncio.run(main())
"""


def stream_cost(clients: int, columns: str | None, interval: float, seconds: float = 8.0) -> dict:
    """CPU the server process spends serving ``clients`` SSE streams, without a simulation competing.

    The app runs in this process with a fake live run whose rows (76 columns, like an
    epidemic run) arrive as 5-step chunks at 100 steps/s; the clients run in a subprocess.
    Machine load does not change CPU seconds much, so this isolates what the streams cost.
    """
    import threading

    import numpy as np

    from scenarios import load_scenario
    from server.app import ServerConfig, create_app
    from server.runs import RunController
    from server.testing import ServerThread

    def cpu() -> float:
        t = os.times()
        return t.user + t.system

    with tempfile.TemporaryDirectory() as runs:
        app = create_app(ServerConfig(runs_dir=Path(runs)))
        manager = app.state.manager
        with ServerThread(app) as srv:
            ctl = RunController("fake-run", manager.runs_dir / "fake-run", load_scenario("covid_small"),
                                source="benchmark", overrides=[])
            ctl.hub.attach(manager._loop)
            ctl.status = "running"
            manager.live[ctl.id] = ctl
            names = [*PAGE_COLUMNS.split(",")[:9], *[f"metric_{i}" for i in range(67)]]
            stop = threading.Event()

            def feed() -> None:
                t = 0
                while not stop.wait(0.05):
                    ctl.hub.extend(t, {c: np.random.rand(5) for c in names})
                    t += 5
                    ctl.step = t

            threading.Thread(target=feed, daemon=True).start()
            time.sleep(1.0)
            c0 = cpu()
            time.sleep(seconds)
            idle = (cpu() - c0) / seconds
            proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, srv.url, str(clients), columns or "all",
                                     str(interval)])
            try:
                time.sleep(4.0)
                c0 = cpu()
                time.sleep(seconds)
                loaded = (cpu() - c0) / seconds
            finally:
                proc.kill()
                proc.wait()
                stop.set()
                ctl.status = "stopped"
    return {"server_cores_without": idle, "server_cores_with": loaded, "clients_cost_cores": loaded - idle}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--agents", type=int, default=50_000)
    ap.add_argument("--window", type=float, default=10.0, help="seconds per measurement window")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of four windows: without, with, with, without")
    ap.add_argument("--interval", type=float, default=0.25, help="the clients' SSE batching interval (the page's)")
    ap.add_argument("--all-columns", action="store_true", help="clients take every column, not the page's")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.timeout
    with tempfile.TemporaryDirectory() as runs:
        env = {k: v for k, v in os.environ.items() if k != "SIMCORE_TOKEN"}
        proc = subprocess.Popen([sys.executable, "-m", "simcore", "serve", "--port", str(port), "--runs-dir", runs,
                                 "--max-runs", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            client = httpx.Client(base_url=url, timeout=60)
            while True:
                try:
                    client.get("/api/info").raise_for_status()
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}") from None
                    time.sleep(0.2)
            r = client.post("/api/runs", json={"scenario": "covid_small", "overrides": [
                f"population.size={args.agents}", "output.sample_agents=500", "run.chunk_size=5",
                "run.steps=1000000"]})
            r.raise_for_status()
            run_id = r.json()["id"]
            print(f"run {run_id}: {args.agents:,} agents; waiting for it to compile and step ...", flush=True)
            while step_of(client, run_id) < 50:
                if time.monotonic() > deadline:
                    raise TimeoutError("the run did not start stepping")
                time.sleep(0.5)
            window(client, run_id, 3.0, proc.pid)  # warm-up: writer, caches, steady state

            without, with_, seen = [], [], []
            for i in range(args.rounds):
                if time.monotonic() + 4 * args.window + 60 > deadline:
                    print("time budget spent: fewer rounds", flush=True)
                    break
                # ABBA order: a slow drift of the run's speed (e.g. a growing metrics table) cancels out
                for loaded in ((False, True, True, False) if i % 2 == 0 else (True, False, False, True)):
                    if not loaded:
                        w = window(client, run_id, args.window, proc.pid)
                        without.append(w)
                        print(f"round {i + 1}: without clients {w['steps_per_s']:8.1f} steps/s  "
                              f"server cpu {w['server_cpu']:.2f}  load {w['load_avg_1m']:.1f}  "
                              f"GET /api/runs p50 {w['api_ms_p50']:.0f} ms max {w['api_ms_max']:.0f} ms", flush=True)
                        continue
                    watchers = Watchers(url, run_id, args.clients, None if args.all_columns else PAGE_COLUMNS,
                                        args.interval).start()
                    rows0 = sum(watchers.rows)
                    w = window(client, run_id, args.window, proc.pid)
                    w["rows_per_client_per_s"] = (sum(watchers.rows) - rows0) / args.clients / args.window
                    w["client_errors"] = list(watchers.errors)
                    watchers.stop()
                    with_.append(w)
                    seen.append(min(watchers.rows))
                    print(f"round {i + 1}: with {args.clients} clients {w['steps_per_s']:8.1f} steps/s  server cpu "
                          f"{w['server_cpu']:.2f}  clients cpu {w['clients_cpu']:.2f}  load {w['load_avg_1m']:.1f}  "
                          f"rows/client/s {w['rows_per_client_per_s']:.1f}  GET /api/runs p50 {w['api_ms_p50']:.0f} ms "
                          f"max {w['api_ms_max']:.0f} ms", flush=True)
            client.post(f"/api/runs/{run_id}/stop")
        finally:
            proc.send_signal(signal.SIGINT)  # graceful: the run is stopped with its files flushed
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        manifest = json.loads((Path(runs) / run_id / "manifest.json").read_text())

    # CPU seconds the server spends per simulated step: what the clients add, independent of how
    # much CPU other processes on the machine leave to the server
    cost_without = sum(w["server_cpu"] for w in without) / sum(w["steps_per_s"] for w in without)
    cost_with = sum(w["server_cpu"] for w in with_) / sum(w["steps_per_s"] for w in with_)
    base = statistics.mean(w["steps_per_s"] for w in without)
    loaded = statistics.mean(w["steps_per_s"] for w in with_)
    drop = 1 - loaded / base
    result = {
        "clients": args.clients, "agents": args.agents, "window_s": args.window, "rounds": len(without),
        "interval_s": args.interval, "columns": "all" if args.all_columns else "page",
        "server_cpu_ms_per_step_without": 1000 * cost_without, "server_cpu_ms_per_step_with": 1000 * cost_with,
        "cpu_overhead": cost_with / cost_without - 1,
        "steps_per_s_without": base, "steps_per_s_with": loaded, "drop": drop, "target_drop": TARGET_DROP,
        "meets_target": drop <= TARGET_DROP,
        "windows_without": without, "windows_with": with_,
        "min_rows_received_by_a_client": min(seen) if seen else 0,
        "api_ms_p50_without": statistics.median(w["api_ms_p50"] for w in without),
        "api_ms_p50_with": statistics.median(w["api_ms_p50"] for w in with_),
        "final_status": manifest["status"], "cpu_count": os.cpu_count(),
    }
    print(f"\nsteps/s without clients {base:.1f}, with {args.clients} SSE clients {loaded:.1f}: "
          f"drop {100 * drop:+.1f} % (target <= {100 * TARGET_DROP:.0f} %) -> {'ok' if drop <= TARGET_DROP else 'MISSED'}")
    print(f"server CPU per step: {1000 * cost_without:.2f} ms without, {1000 * cost_with:.2f} ms with the clients "
          f"({100 * (cost_with / cost_without - 1):+.1f} %)")
    print(f"run ended '{manifest['status']}' with {manifest['steps_done']} steps on disk")
    cost = stream_cost(args.clients, None if args.all_columns else PAGE_COLUMNS, args.interval)
    result["stream_cost"] = cost
    print(f"streams alone (fake run at 100 steps/s, no simulation): {args.clients} clients cost the server "
          f"{cost['clients_cost_cores']:.3f} cores ({cost['server_cores_without']:.3f} -> {cost['server_cores_with']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
