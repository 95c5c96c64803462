"""An llmserve Ray Serve application: build_app() for people who compose Ray Serve
applications (or `serve run llmserve.ray_serve.app:app_builder key=value ...`), and
run_on_ray(), behind `llmserve serve --ray`, which deploys it and serves until a signal."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from llmserve.options import ServerOptions

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RayServeOptions:
    """How the application is placed and scaled; the llmserve core's own options stay in
    ServerOptions. min/max replicas different from each other turn autoscaling on."""

    address: str | None = None  # None: start (or join, per RAY_ADDRESS) a local Ray
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    num_cpus: float = 1.0  # ray_actor_options of every replica
    num_gpus: float = 0.0
    max_ongoing_requests: int = 64  # per replica; more wait in the router
    ingress_replicas: int = 1
    app_name: str = "llmserve"
    # prefix-aware routing: chunk sizes of the chained hashes (text characters, token
    # ids) and how much busier than the least loaded a prefix holder may be
    chunk_chars: int = 64
    chunk_tokens: int = 32
    imbalance: int = 8

    def autoscaling(self) -> dict[str, Any] | None:
        low = self.min_replicas if self.min_replicas is not None else self.replicas
        high = self.max_replicas if self.max_replicas is not None else low
        if low == high:
            return None
        return {"min_replicas": low, "max_replicas": high, "initial_replicas": low,
                "target_ongoing_requests": self.target_ongoing_requests}


def build_app(options: ServerOptions, ray_options: RayServeOptions | None = None) -> Any:
    """The Ray Serve Application (ingress bound to the replica deployment) serving
    options.model_repositories, which must exist at the same path on every node."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from llmserve.ray_serve.deployments import LLMServeIngress, LLMServeReplica
    from llmserve.ray_serve.router import PrefixAwareRouter

    ro = ray_options or RayServeOptions()
    if options.model_control_mode == "explicit":
        log.warning("--model-control-mode=explicit on Ray Serve: a load or unload request "
                    "reaches one replica only (--load-model at start applies to all)")
    scaling = ro.autoscaling()
    sizing: dict[str, Any] = ({"autoscaling_config": scaling} if scaling
                              else {"num_replicas": ro.replicas})
    replica = serve.deployment(
        LLMServeReplica, name="llmserve_replica",
        ray_actor_options={"num_cpus": ro.num_cpus, "num_gpus": ro.num_gpus},
        max_ongoing_requests=ro.max_ongoing_requests,
        graceful_shutdown_timeout_s=float(options.exit_timeout_secs),
        request_router_config=RequestRouterConfig(
            request_router_class=PrefixAwareRouter,
            request_router_kwargs={"chunk_chars": ro.chunk_chars,
                                   "chunk_tokens": ro.chunk_tokens,
                                   "imbalance": ro.imbalance}),
        **sizing,
    )
    # the ingress only forwards: no CPU reserved, and it must never be the bottleneck
    # on concurrency (Ray's default max_ongoing_requests is 5)
    ingress = serve.deployment(
        LLMServeIngress, name="llmserve_ingress", num_replicas=ro.ingress_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max(1000, ro.max_ongoing_requests * 4),
    )
    core = dataclasses.replace(options, allow_http=False, allow_grpc=False,
                               allow_metrics=False)
    return ingress.bind(replica.bind(core), options.http_max_body_bytes)


def app_builder(args: dict[str, str]) -> Any:
    """`serve run llmserve.ray_serve.app:app_builder model-repository=/models replicas=2`:
    every key=value is the `llmserve serve` flag --key=value."""
    from llmserve.ray_serve.cli_flags import parse_ray_serve_args

    argv = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
    options, ray_options = parse_ray_serve_args(argv)
    return build_app(options, ray_options)


def run_on_ray(options: ServerOptions, ray_options: RayServeOptions) -> int:
    """Deploy on Ray (joining ray_options.address, or a local Ray), serve HTTP on
    options.http_address:http_port through Ray Serve's proxy, until SIGINT/SIGTERM."""
    import ray
    from ray import serve

    if options.allow_grpc or options.allow_metrics:
        log.warning("--ray serves HTTP only (KServe v2, generate, OpenAI) through Ray "
                    "Serve's proxy: the gRPC and metrics ports are not opened")
    local = ray_options.address is None and not os.environ.get("RAY_ADDRESS")
    if local:  # a Ray of this machine, ended with the server
        ray.init(include_dashboard=False)
    else:
        ray.init(address=ray_options.address)
    serve.start(http_options={"host": options.http_address, "port": options.http_port})
    serve.run(build_app(options, ray_options), name=ray_options.app_name, route_prefix="/")
    log.info("llmserve is serving on Ray Serve at %s:%d (application '%s')",
             options.http_address, options.http_port, ray_options.app_name)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down the Ray Serve application")
    serve.delete(ray_options.app_name)
    if local:
        serve.shutdown()
    ray.shutdown()
    return 0
