"""``simcore serve``: the live dashboard, REST API and SSE stream (see docs/server.md)."""
from .app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
