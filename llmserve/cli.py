"""The `llmserve` command: `llmserve serve` with tritonserver's flags (parsed into
ServerOptions, then llmserve.server.run_server) and `llmserve config show`, which prints
a model's completed configuration as the HTTP config endpoint returns it.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from pathlib import Path

from llmserve.core.booleans import bool_word
from llmserve.core.errors import ServerError
from llmserve.options import ServerOptions
from llmserve.restrictions import (
    GRPC_HEADER_PREFIX,
    HTTP_GROUPS,
    TRITON_GROUPS,
    parse_restriction,
)

log = logging.getLogger("llmserve")

# tritonserver flags accepted so existing launch scripts keep working; they change nothing.
IGNORED_FLAGS = (
    "--allow-gpu-metrics", "--allow-cpu-metrics", "--allow-sagemaker", "--allow-vertex-ai",
    "--pinned-memory-pool-byte-size", "--cuda-memory-pool-byte-size",
    "--min-supported-compute-capability", "--id", "--backend-directory",
    "--repoagent-directory", "--buffer-manager-thread-count", "--trace-config",
    "--metrics-interval-ms", "--metrics-config", "--http-thread-count",
    "--grpc-infer-allocation-pool-size",
    "--model-namespacing", "--log-format",
)


def parse_bool(text: str) -> bool:
    value = bool_word(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got '{text}'")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got '{text}'")
    return value


def parse_backend_config(text: str) -> tuple[str, str, str]:
    """'[BACKEND,]KEY=VALUE' -> (backend or "", key, value)."""
    head, eq, value = text.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(
            f"--backend-config expects [BACKEND,]KEY=VALUE, got '{text}'")
    backend, comma, key = head.partition(",")
    if not comma:
        backend, key = "", head
    if not key.strip():
        raise argparse.ArgumentTypeError(f"--backend-config '{text}' has an empty setting name")
    return backend.strip(), key.strip(), value


def parse_host_policy(text: str) -> tuple[str, str, str]:
    """'NAME,KEY=VALUE' -> (name, key, value), KEY one of numa-node, cpu-cores."""
    from llmserve.scheduling.host_policy import KEYS, parse_cpu_list

    name, _, setting = text.partition(",")
    key, _, value = setting.partition("=")
    key, value = key.strip(), value.strip()
    try:
        if not name.strip() or key not in KEYS or not value:
            raise ValueError
        if key == "cpu-cores":
            parse_cpu_list(value)
        elif int(value) < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--host-policy expects NAME,KEY=VALUE with KEY one of {', '.join(KEYS)} "
            f"(numa-node=N, cpu-cores=A-B,C), got '{text}'") from None
    return name.strip(), key, value


def _kv_events(text: str) -> dict:
    import json

    from llmserve.llm.kv_events import KvEventsConfig

    try:
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError("expected a JSON object")
        KvEventsConfig.from_dict(values)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"--kv-events-config: {e}") from None
    return values


def parse_rate_limit_resource(text: str) -> tuple[str, int, int | None]:
    """'NAME:COUNT[:DEVICE]' -> (name, count, device or None)."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError
        count = int(parts[1])
        device = int(parts[2]) if len(parts) == 3 else None
        if count < 0 or (device is not None and device < 0):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--rate-limit-resource expects NAME:COUNT[:DEVICE], got '{text}'") from None
    return parts[0], count, device


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-repository", "--model-store", dest="model_repositories",
                   action="append", type=Path, default=[], metavar="PATH",
                   help="model repository root (repeatable)")
    p.add_argument("--model-config-name", metavar="NAME",
                   help="use configs/NAME.pbtxt where a model has it")
    p.add_argument("--disable-auto-complete-config", action="store_true",
                   help="no backend auto-complete (instance_group is still filled)")
    p.add_argument("--strict-model-config", type=parse_bool, metavar="BOOL",
                   help="deprecated tritonserver spelling: true = --disable-auto-complete-config")
    p.add_argument("--backend-config", action="append", type=parse_backend_config, default=[],
                   metavar="[BACKEND,]KEY=VALUE",
                   help="backend setting, e.g. default-max-batch-size=8 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve model repositories (tritonserver flags)")
    _add_config_flags(serve)
    serve.add_argument("--model-control-mode", choices=["none", "poll", "explicit"],
                       default="none")
    serve.add_argument("--load-model", action="append", default=[], metavar="NAME",
                       help="model to load at start-up in explicit mode ('*' = all)")
    serve.add_argument("--repository-poll-secs", type=_seconds, default=15.0)
    for flag, default in (("--exit-on-error", True), ("--strict-readiness", True),
                          ("--allow-http", True), ("--allow-grpc", True),
                          ("--allow-metrics", True)):
        serve.add_argument(flag, type=parse_bool, nargs="?", const=True, default=default,
                           metavar="BOOL")
    serve.add_argument("--http-address", default="0.0.0.0")
    serve.add_argument("--http-port", type=_port, default=8000)
    serve.add_argument("--grpc-address", default="0.0.0.0")
    serve.add_argument("--grpc-port", type=_port, default=8001)
    serve.add_argument("--metrics-address", default="0.0.0.0")
    serve.add_argument("--metrics-port", type=_port, default=8002)
    serve.add_argument("--http-max-input-size", type=_positive_int, default=64 * 1024 * 1024,
                       help="largest HTTP request body in bytes")
    serve.add_argument("--http-restricted-api", action="append", default=[],
                       metavar="API[,API...]:HEADER=VALUE",
                       help="calls to these API groups need the header with this value "
                            f"(groups: {', '.join(HTTP_GROUPS)})")
    serve.add_argument("--grpc-restricted-protocol", action="append", default=[],
                       metavar="PROTOCOL[,PROTOCOL...]:KEY=VALUE",
                       help="calls to these gRPC groups need the metadata "
                            f"'{GRPC_HEADER_PREFIX}KEY' with this value")
    serve.add_argument("--openai-api-key", metavar="KEY",
                       help="the OpenAI routes need 'Authorization: Bearer KEY'")
    serve.add_argument("--log-verbose", type=_positive_int, default=0)
    for flag in ("--log-info", "--log-warning", "--log-error"):
        serve.add_argument(flag, type=parse_bool, nargs="?", const=True, default=True,
                           metavar="BOOL")
    serve.add_argument("--log-file", type=Path, help="also write the log to this file")
    serve.add_argument("--cache-config", action="append", default=[],
                       metavar="CACHE,KEY=VALUE", help="e.g. local,size=1048576")
    serve.add_argument("--cache-directory", metavar="PATH",
                       help="accepted; llmserve's local cache is built in, no library is loaded")
    serve.add_argument("--response-cache-byte-size", type=_positive_int, metavar="BYTES",
                       help="deprecated tritonserver spelling of --cache-config local,size=BYTES")
    serve.add_argument("--rate-limit", choices=["off", "execution_count"], default="off")
    serve.add_argument("--rate-limit-resource", action="append", default=[],
                       type=parse_rate_limit_resource, metavar="NAME:COUNT[:DEVICE]")
    serve.add_argument("--host-policy", action="append", default=[], type=parse_host_policy,
                       metavar="NAME,KEY=VALUE", help="e.g. cpu,cpu-cores=0-3 or gpu_0,numa-node=0")
    serve.add_argument("--kv-events-config", type=_kv_events, default=None, metavar="JSON",
                       help='vLLM-format KV cache events of LLM models, e.g. '
                            '\'{"enable_kv_cache_events": true, "endpoint": "tcp://*:5557"}\'')
    serve.add_argument("--model-load-thread-count", type=_positive_int, default=4)
    serve.add_argument("--exit-timeout-secs", type=_seconds, default=30.0)
    for flag in IGNORED_FLAGS:
        serve.add_argument(flag, dest="ignored_" + flag[2:].replace("-", "_"),
                           action="append", metavar="VALUE", help=argparse.SUPPRESS)

    from llmserve.ray_serve.cli_flags import add_ray_flags

    add_ray_flags(serve)
    config = sub.add_parser("config", help="model configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print a model's completed configuration")
    _add_config_flags(show)
    show.add_argument("--format", choices=["json", "pbtxt"], default="json")
    show.add_argument("model", metavar="MODEL")
    return parser


def _parse_cache_config(args: argparse.Namespace, parser: argparse.ArgumentParser
                        ) -> dict[str, str]:
    from llmserve.scheduling.response_cache import cache_size

    items = list(args.cache_config)
    if args.response_cache_byte_size is not None:
        if items:  # as tritonserver
            parser.error("Incompatible flags --response-cache-byte-size and --cache-config "
                         "both provided. Please provide one or the other.")
        log.warning("--response-cache-byte-size is deprecated; use --cache-config "
                    "local,size=%d", args.response_cache_byte_size)
        items = [f"local,size={args.response_cache_byte_size}"]
    out: dict[str, str] = {}
    for item in items:
        cache, comma, setting = item.partition(",")
        key, eq, value = setting.partition("=")
        if not comma or not eq or not cache or not key:
            parser.error(f"--cache-config expects CACHE,KEY=VALUE, got '{item}'")
        if out.get("cache", cache) != cache:
            parser.error(f"--cache-config names two caches: {out['cache']} and {cache}")
        out["cache"] = cache
        out[key] = value
    try:
        cache_size(out)
    except ServerError as e:
        parser.error(f"--cache-config: {e}")
    return out


def _base_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ServerOptions:
    from llmserve.repository.files import check_config_name

    if not args.model_repositories:
        parser.error("at least one --model-repository is required")
    if args.model_config_name is not None:
        try:
            check_config_name(args.model_config_name)
        except ServerError as e:
            parser.error(str(e))
    backend_config: dict[str, dict[str, str]] = {}
    for backend, key, value in args.backend_config:
        backend_config.setdefault(backend, {})[key] = value
    options = ServerOptions(
        model_repositories=list(args.model_repositories),
        model_config_name=args.model_config_name,
        disable_auto_complete_config=args.disable_auto_complete_config,
        backend_config=backend_config,
    )
    if args.strict_model_config is not None:
        options.disable_auto_complete_config = (args.strict_model_config
                                                or args.disable_auto_complete_config)
    try:
        options.default_max_batch_size()
    except ValueError:
        parser.error("--backend-config default-max-batch-size must be an integer")
    from llmserve.backends.python.stub_settings import parse_settings

    try:  # the Python backend's settings, checked as Triton checks them at start-up
        parse_settings(backend_config.get("python", {}))
    except ServerError as e:
        parser.error(f"--backend-config python: {e}")
    return options


def parse_serve_args(argv: list[str]) -> ServerOptions:
    """Options of `llmserve serve ARGV...` (argv without the "serve" word)."""
    parser = build_parser()
    args = parser.parse_args(["serve", *argv])
    return _serve_options(args, parser)


def _serve_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ServerOptions:
    options = _base_options(args, parser)
    options.model_control_mode = args.model_control_mode
    options.load_models = list(args.load_model)
    options.repository_poll_secs = args.repository_poll_secs
    options.exit_on_error = args.exit_on_error
    options.strict_readiness = args.strict_readiness
    options.http_address, options.http_port = args.http_address, args.http_port
    options.grpc_address, options.grpc_port = args.grpc_address, args.grpc_port
    options.metrics_address, options.metrics_port = args.metrics_address, args.metrics_port
    options.allow_http, options.allow_grpc = args.allow_http, args.allow_grpc
    options.allow_metrics = args.allow_metrics
    options.log_verbose = args.log_verbose
    options.cache_config = _parse_cache_config(args, parser)
    options.cache_directory = args.cache_directory
    options.rate_limit = args.rate_limit
    options.rate_limit_resources = list(args.rate_limit_resource)
    options.kv_events_config = args.kv_events_config
    for name, key, value in args.host_policy:
        options.host_policies.setdefault(name, {})[key] = value
    options.model_load_thread_count = max(1, args.model_load_thread_count)
    options.exit_timeout_secs = args.exit_timeout_secs
    options.http_max_body_bytes = args.http_max_input_size
    flags = (("--http-restricted-api", args.http_restricted_api, HTTP_GROUPS, "api",
              options.http_restricted_apis, ""),
             ("--grpc-restricted-protocol", args.grpc_restricted_protocol, TRITON_GROUPS,
              "protocol", options.grpc_restricted_protocols, GRPC_HEADER_PREFIX))
    for flag, values, groups, what, into, prefix in flags:
        for text in values:
            try:
                parse_restriction(text, groups, what, into, header_prefix=prefix)
            except ValueError as exc:
                parser.error(f"{flag}: {exc}")
    if args.openai_api_key is not None and not args.openai_api_key:
        parser.error("--openai-api-key must not be empty")
    options.openai_api_key = args.openai_api_key
    return options


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.INFO
    if getattr(args, "log_verbose", 0) > 0:
        level = logging.DEBUG
    elif not getattr(args, "log_info", True):
        level = logging.WARNING if getattr(args, "log_warning", True) else logging.ERROR
        if not getattr(args, "log_error", True) and not getattr(args, "log_warning", True):
            level = logging.CRITICAL
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if getattr(args, "log_file", None):
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname).1s %(name)s] %(message)s")


SERVING_ENGINE_NICE = -10


def reserve_frontend_cpu() -> None:
    """The serving defaults for the engine's threads. Their count: every CPU but one,
    which is left to the frontends, tokenizers and Python models (as vLLM's CPU build
    reserves one). A spinning OpenMP team on every core starves them: on 2 cores under
    aiperf this halved the server's throughput (docs/BENCHMARKS.md). Their priority:
    nice -10 (engine_thread.apply_engine_nice), so that the engine, the bottleneck on a
    small machine, is not preempted by the threads that feed it; at 32 streams on 2
    cores this raised streamed output by a third (docs/BENCHMARKS.md).
    LLMSERVE_ENGINE_THREADS and LLMSERVE_ENGINE_NICE set by the user win."""
    if not os.environ.get("LLMSERVE_ENGINE_NICE", "").strip():
        os.environ["LLMSERVE_ENGINE_NICE"] = str(SERVING_ENGINE_NICE)
    if os.environ.get("LLMSERVE_ENGINE_THREADS", "").strip():
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cpus or 1) - 1)
    os.environ["LLMSERVE_ENGINE_THREADS"] = str(threads)
    log.info("LLM engine: %d intra-op thread(s), one CPU left to the frontends "
             "(LLMSERVE_ENGINE_THREADS overrides)", threads)


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from llmserve.ray_serve.cli_flags import ray_options

    options = _serve_options(args, parser)
    on_ray = ray_options(args, parser)
    setup_logging(args)
    for name, value in sorted(vars(args).items()):
        if name.startswith("ignored_") and value:
            flag = "--" + name[len("ignored_"):].replace("_", "-")
            log.warning("%s is accepted for tritonserver compatibility and has no effect in "
                        "llmserve", flag)
    if options.cache_directory is not None:
        log.warning("--cache-directory has no effect: llmserve's 'local' response cache is "
                    "built in and no cache library is loaded")
    if options.load_models and options.model_control_mode != "explicit":
        log.warning("--load-model only applies with --model-control-mode=explicit; ignored")
    if args.ray:  # each replica sets its engine threads from the CPUs Ray gave it
        from llmserve.ray_serve.app import run_on_ray

        return run_on_ray(options, on_ray)
    reserve_frontend_cpu()
    from llmserve.server import run_server

    code = int(run_server(options) or 0)
    # The server has stopped and finalized its models; what is left is the interpreter's
    # teardown, whose last garbage collection over torch's and transformers' objects
    # took seconds on top of --exit-timeout-secs. Frozen objects are left to the OS.
    gc.freeze()
    return code


def _config_show(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from llmserve.config.parse import config_to_json_dict, config_to_text
    from llmserve.repository import (
        find_model,
        load_model_config,
        model_file_path,
        select_versions,
    )

    options = _base_options(args, parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        model_dir = find_model(options.model_repositories, args.model)
        if model_dir is None:
            roots = ", ".join(str(r) for r in options.model_repositories)
            print(f"error: model '{args.model}' not found in model repository {roots}",
                  file=sys.stderr)
            return 1
        config = load_model_config(model_dir, options)
        for version in select_versions(model_dir, config):
            model_file_path(model_dir, version, config)
        if config.HasField("ensemble_scheduling"):
            _check_ensemble_steps(config, options)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug of ours: still one line, the traceback only at debug level
        log.debug("config show failed", exc_info=True)
        print(f"error: internal error while resolving model '{args.model}': "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    text = (config_to_text(config) if args.format == "pbtxt"
            else json.dumps(config_to_json_dict(config), indent=2) + "\n")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `llmserve config show ... | head`
        sys.stdout = open(os.devnull, "w")  # the interpreter flushes stdout at exit
    return 0


def _check_ensemble_steps(config, options: ServerOptions) -> None:
    """Check an ensemble's maps against the step models found in the repositories."""
    from llmserve.config.ensemble import validate_ensemble_steps
    from llmserve.repository import find_model, load_model_config

    step_configs = {}
    for step in config.ensemble_scheduling.step:
        step_dir = find_model(options.model_repositories, step.model_name)
        if step_dir is None:
            log.warning("ensemble '%s': step model '%s' is not in the model repository",
                        config.name, step.model_name)
        elif step.model_name not in step_configs:
            step_configs[step.model_name] = load_model_config(step_dir, options)
    validate_ensemble_steps(config, step_configs)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args, parser)
    return _config_show(args, parser)


if __name__ == "__main__":
    sys.exit(main())
