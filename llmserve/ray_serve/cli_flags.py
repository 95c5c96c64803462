"""The `llmserve serve` flags of Ray Serve mode (--ray, --ray-address, --replicas, ...)
and their RayServeOptions; importing this needs no Ray."""

from __future__ import annotations

import argparse

from llmserve.cli import _positive_int, _seconds
from llmserve.options import ServerOptions
from llmserve.ray_serve.app import RayServeOptions

RAY_FLAGS = ("ray_address", "replicas", "min_replicas", "max_replicas",
             "target_ongoing_requests", "ray_num_cpus", "ray_num_gpus",
             "ray_max_ongoing_requests", "ray_ingress_replicas")


def _count(text: str) -> int:
    value = _positive_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _amount(text: str) -> float:
    try:
        return _seconds(text)  # the same rule: a number >= 0
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got '{text}'") from None


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray Serve (pip install 'llmserve[ray]')")
    g.add_argument("--ray", action="store_true",
                   help="serve the repository as a Ray Serve application (HTTP only)")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    g.add_argument("--replicas", type=_count, metavar="N",
                   help="llmserve replicas, each a full core with its own engines (default 1)")
    g.add_argument("--min-replicas", type=_count, metavar="N",
                   help="autoscale on ongoing requests between --min- and --max-replicas")
    g.add_argument("--max-replicas", type=_count, metavar="N")
    g.add_argument("--target-ongoing-requests", type=_amount, metavar="N",
                   help="autoscaling target of ongoing requests per replica (default 8)")
    g.add_argument("--ray-num-cpus", type=_amount, metavar="N",
                   help="CPUs Ray reserves for each replica (default 1)")
    g.add_argument("--ray-num-gpus", type=_amount, metavar="N",
                   help="GPUs Ray reserves for each replica (default 0)")
    g.add_argument("--ray-max-ongoing-requests", type=_count, metavar="N",
                   help="requests one replica takes at once; more wait in the router "
                        "(default 64)")
    g.add_argument("--ray-ingress-replicas", type=_count, metavar="N",
                   help="replicas of the forwarding ingress (default 1)")


def ray_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RayServeOptions:
    given = [f"--{n.replace('_', '-')}" for n in RAY_FLAGS if getattr(args, n) is not None]
    if not args.ray:
        if given:
            parser.error(f"{', '.join(given)} only apply with --ray")
        return RayServeOptions()
    ro = RayServeOptions(address=args.ray_address)
    if args.replicas is not None and (args.min_replicas or args.max_replicas):
        parser.error("--replicas sets a fixed count: use either it or --min-replicas/"
                     "--max-replicas")
    if args.replicas is not None:
        ro.replicas = args.replicas
    low = args.min_replicas or 1
    high = args.max_replicas or max(low, 1)
    if args.min_replicas or args.max_replicas:
        if low > high:
            parser.error(f"--min-replicas ({low}) is above --max-replicas ({high})")
        ro.min_replicas, ro.max_replicas, ro.replicas = low, high, low
    for flag, field in (("target_ongoing_requests", "target_ongoing_requests"),
                        ("ray_num_cpus", "num_cpus"), ("ray_num_gpus", "num_gpus"),
                        ("ray_max_ongoing_requests", "max_ongoing_requests"),
                        ("ray_ingress_replicas", "ingress_replicas")):
        if getattr(args, flag) is not None:
            setattr(ro, field, getattr(args, flag))
    return ro


def parse_ray_serve_args(argv: list[str]) -> tuple[ServerOptions, RayServeOptions]:
    """(ServerOptions, RayServeOptions) of `llmserve serve --ray ARGV...`."""
    from llmserve.cli import _serve_options, build_parser

    parser = build_parser()
    args = parser.parse_args(["serve", "--ray", *argv])
    return _serve_options(args, parser), ray_options(args, parser)
