"""`slimserve serve --ray`: the same V2 HTTP app as a Ray Serve deployment, for scaling
out over a Ray cluster (extra ``[ray]``).

Each replica builds the app itself (``serve.ingress`` with a builder), loading the model
repository from the same path, so the path must be readable on every node (a shared
volume, or the same image). Ray's HTTP proxy fronts the replicas and spreads requests;
each replica batches its own share. On one small machine Ray costs more than it gives
(it adds a proxy hop and ~1 GB of memory): it is the path for real clusters, the plain
server is the default.
"""

from __future__ import annotations

import importlib
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slimserve.core.errors import SlimserveError, require
from slimserve.serve.config import ServeConfig

APP_NAME = "slimserve"


def run_ray(
    path: str | Path,
    config: ServeConfig,
    replicas: int,
    address: str | None,
    announce: Callable[[], None] | None = None,
) -> None:
    """Deploy ``path``'s models on Ray Serve with ``replicas`` replicas and block until
    SIGTERM or Ctrl+C, then take the application down (the cluster stays). ``announce``
    runs once the application answers (the banner: never before a failure)."""
    ray: Any = require("ray", "ray", "Serving on Ray (--ray)")
    serve: Any = importlib.import_module("ray.serve")

    if config.grpc_port is not None:
        raise SlimserveError("--ray serves HTTP only: add --http-only (Ray runs its own proxy).")
    repository = str(Path(path).resolve())
    if not Path(repository).exists():
        raise SlimserveError(f"Nothing to serve at '{path}': the path does not exist.")
    # Fail here, with slimserve's message, rather than in a replica's log.
    from slimserve.serve.repository import load_repository

    checked: dict[str, Any] = {}
    load_repository(repository, config.threads, config.ort_spinning, checked, config)
    for llm in checked.values():  # each replica starts its own engines
        llm.engine.close()

    def build_app() -> Any:
        from slimserve.serve.http import create_app
        from slimserve.serve.repository import load_repository
        from slimserve.serve.warmup import warm_up

        llms: dict[str, Any] = {}
        models = load_repository(repository, config.threads, config.ort_spinning, llms, config)
        warm_up(models, config)
        return create_app(models, config, llms)

    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    # After ray.init (which installs its own exit-on-SIGTERM handler), before the app
    # is up: a replica answers before serve.run returns, so a stop can come that early.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    serve.start(http_options={"host": config.host, "port": config.port})
    deployment = serve.deployment(
        serve.ingress(build_app)(),
        name="v2",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 0},  # ORT threads are set by --threads
    )
    serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")
    if announce is not None:
        announce()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)  # replicas drain their in-flight requests
        if address is None:
            serve.shutdown()
            ray.shutdown()
