"""``simcore serve``: build the app from command-line settings and run it under uvicorn."""
from __future__ import annotations

import logging
from pathlib import Path

from .app import ServerConfig, create_app, default_compile_cache
from .security import is_loopback


def serve(*, host: str = "127.0.0.1", port: int = 8000, runs_dir: str | Path = "runs", token: str | None = None,
          max_runs: int = 4, max_agents: int | None = None, max_upload_bytes: int | None = None,
          compile_cache: str | None = None, log_level: str = "info") -> int:
    """Serve until interrupted; live runs are stopped with their files flushed on the way out.

    Raises ``ValueError`` when the settings are unsafe (non-loopback host without a token).
    """
    import uvicorn

    cfg = ServerConfig(runs_dir=Path(runs_dir), host=host, port=port, token=token or None, max_runs=max_runs,
                       compile_cache=compile_cache if compile_cache is not None else default_compile_cache())
    if max_agents is not None:
        cfg.max_agents = max_agents
    if max_upload_bytes is not None:
        cfg.max_upload_bytes = max_upload_bytes
    cfg.check()
    if cfg.compile_cache == "none":
        cfg.compile_cache = None
    app = create_app(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    shown = f"[{host}]" if ":" in host else host
    print(f"simcore dashboard: http://{shown}:{port}/  (API docs: /docs, runs: {cfg.runs_dir.resolve()})", flush=True)
    if not is_loopback(host):
        print("exposed on the network: mutating calls need 'Authorization: Bearer <token>'", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
    return 0
