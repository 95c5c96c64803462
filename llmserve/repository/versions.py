"""Model versions: numeric version folders (names that are not numbers, or start with 0,
are ignored) and the version policy (latest N, all, specific) that picks among them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config.errors import ConfigError

log = logging.getLogger(__name__)

_INT64_MAX = 2**63 - 1


def version_dir_names(model_dir: Path) -> list[str]:
    """Names of the folders of `model_dir` that are model versions."""
    try:
        entries = list(Path(model_dir).iterdir())
    except OSError as e:
        raise ConfigError(f"{model_dir}: cannot read the model folder: {e.strerror}") from None
    names = []
    for entry in entries:
        name = entry.name
        if not (name.isascii() and name.isdigit()) or name.startswith("0"):
            continue
        if int(name) > _INT64_MAX or not entry.is_dir():
            continue
        names.append(name)
    return sorted(names, key=int)


def list_versions(model_dir: Path) -> list[int]:
    """The model's version numbers, ascending."""
    return [int(n) for n in version_dir_names(model_dir)]


def apply_version_policy(available: list[int], config: mc.ModelConfig) -> list[int]:
    """The versions the policy selects among `available` (ascending); may be empty."""
    available = sorted(set(available))
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice") if config.HasField("version_policy") else None
    if which == "all":
        return available
    if which == "specific":
        wanted = set(policy.specific.versions)
        missing = sorted(wanted - set(available))
        if missing:
            log.warning("model '%s': version(s) %s named by the specific version policy have "
                        "no version folder", config.name, ", ".join(map(str, missing)))
        return [v for v in available if v in wanted]
    count = policy.latest.num_versions if which == "latest" else 1
    return available[-count:] if count > 0 else []


def select_versions(model_dir: Path, config: mc.ModelConfig) -> list[int]:
    """Version policy applied to the version folders; ConfigError when none is selected."""
    available = list_versions(model_dir)
    chosen = apply_version_policy(available, config)
    if not chosen:
        found = ", ".join(map(str, available)) or "none"
        raise ConfigError(
            f"{model_dir}: at least one version must be available under the version policy "
            f"of model '{config.name or Path(model_dir).name}' (version folders found: "
            f"{found}; policy: {_describe_policy(config)})"
        )
    return chosen


def _describe_policy(config: mc.ModelConfig) -> str:
    if not config.HasField("version_policy"):
        return "latest 1 (default)"
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return "all"
    if which == "specific":
        return "specific " + str(list(policy.specific.versions))
    return f"latest {policy.latest.num_versions}"
