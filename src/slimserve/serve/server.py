"""Run the V2 server: uvicorn with a graceful stop (SIGTERM drains in-flight requests)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from slimserve.core.errors import require
from slimserve.serve.config import ServeConfig
from slimserve.serve.http import create_app


def build_server(path: str | Path, config: ServeConfig) -> Any:
    """A uvicorn Server for the repository at ``path`` (not started)."""
    require("uvicorn", "serve", "Serving")
    import uvicorn

    from slimserve.serve import fastpath
    from slimserve.serve.repository import load_repository

    models = load_repository(path, config.threads, config.ort_spinning)
    app = create_app(models, config)
    # V2 infer requests skip the ASGI layer where the installed uvicorn allows it.
    http = fastpath.protocol_class(app.server) if fastpath.supported() else "auto"
    uv_config = uvicorn.Config(
        app,
        http=http,
        host=config.host,
        port=config.port,
        log_level="warning",
        log_config=None,  # slimserve.serve.logs formats the server's lines
        access_log=False,  # ServeConfig.access_log logs inference requests instead
        proxy_headers=False,  # nothing reads the client address; one ASGI layer less
        timeout_graceful_shutdown=30,
    )
    return uvicorn.Server(uv_config)


def bound_port(server: Any) -> int:
    """The port a started server listens on (useful with port 0)."""
    for srv in server.servers:
        for sock in srv.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                port: int = sock.getsockname()[1]
                return port
    raise RuntimeError("server is not listening")
