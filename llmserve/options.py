"""ServerOptions: every tritonserver-compatible flag of `llmserve serve`, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class ServerOptions:
    model_repositories: list[Path] = field(default_factory=list)
    model_control_mode: str = "none"  # none | poll | explicit
    load_models: list[str] = field(default_factory=list)  # explicit mode; "*" = all
    repository_poll_secs: float = 15.0
    model_config_name: str | None = None
    disable_auto_complete_config: bool = False
    # --backend-config [BACKEND,]KEY=VALUE: {backend or "": {key: value}}
    backend_config: dict[str, dict[str, str]] = field(default_factory=dict)
    exit_on_error: bool = True
    strict_readiness: bool = True
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8002
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    log_verbose: int = 0
    cache_config: dict[str, str] = field(default_factory=dict)  # --cache-config local,size=N
    cache_directory: str | None = None  # --cache-directory (cache libraries are not loaded)
    rate_limit: str = "off"  # off | execution_count
    rate_limit_resources: list[tuple[str, int, int | None]] = field(default_factory=list)
    host_policies: dict[str, dict[str, str]] = field(default_factory=dict)  # --host-policy
    kv_events_config: dict | None = None  # --kv-events-config (vLLM's keys), LLM models
    model_load_thread_count: int = 4
    exit_timeout_secs: float = 30.0
    http_max_body_bytes: int = 64 * 1024 * 1024
    # --http-restricted-api / --grpc-restricted-protocol: group -> (header, value)
    http_restricted_apis: dict[str, tuple[str, str]] = field(default_factory=dict)
    grpc_restricted_protocols: dict[str, tuple[str, str]] = field(default_factory=dict)
    openai_api_key: str | None = None  # OpenAI routes need "Authorization: Bearer KEY"

    def default_max_batch_size(self) -> int:
        value = self.backend_config.get("", {}).get("default-max-batch-size", "4")
        return int(value)
