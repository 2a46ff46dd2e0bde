"""Run the V2 server: uvicorn with a graceful stop (SIGTERM drains in-flight requests)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from slimserve.core.errors import SlimserveError, require
from slimserve.serve.config import ServeConfig
from slimserve.serve.http import create_app


def build_server(path: str | Path, config: ServeConfig) -> Any:
    """A uvicorn Server for the repository at ``path`` (not started)."""
    require("uvicorn", "serve", "Serving")
    import uvicorn

    from slimserve.serve import fastpath
    from slimserve.serve.repository import load_repository
    from slimserve.serve.warmup import warm_up

    if config.grpc_port is not None:  # checked now, not as a failed startup after the banner
        require("tritonclient", "serve", "The V2 gRPC endpoint (or serve with --http-only)")
    check_ports_free(config)
    llms: dict[str, Any] = {}
    models = load_repository(path, config.threads, config.ort_spinning, llms, config)
    warm_up(models, config)
    app = create_app(models, config, llms)
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


def check_ports_free(config: ServeConfig) -> None:
    """A SlimserveError naming the port when something already listens on it, before
    the server announces itself (uvicorn would log startup, then fail to bind)."""
    for label, port, flag in (
        ("HTTP", config.port, "--port"),
        ("gRPC", config.grpc_port, "--grpc-port"),
    ):
        if not port:  # None: no endpoint; 0: any free port
            continue
        try:
            infos = socket.getaddrinfo(config.host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise SlimserveError(f"--host '{config.host}' does not resolve: {exc}.") from None
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind(address)
            except OSError as exc:
                raise SlimserveError(
                    f"The {label} port {port} on {config.host} is taken ({exc.strerror}): "
                    f"stop what listens there, or give another {flag}."
                ) from None


def bound_port(server: Any) -> int:
    """The port a started server listens on (useful with port 0)."""
    for srv in server.servers:
        for sock in srv.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                port: int = sock.getsockname()[1]
                return port
    raise RuntimeError("server is not listening")
