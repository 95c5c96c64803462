"""Scanning model repositories: every model folder of every --model-repository root,
checked against the naming rules, symlinks that escape a root refused, and a model name
appearing in two roots an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from llmserve.config.errors import ConfigError
from llmserve.repository.naming import check_model_name, is_within, name_problem

log = logging.getLogger(__name__)

_SKIPPED = {"__pycache__"}


def _model_dirs(root: Path, on_problem: Callable[[ConfigError], None] | None) -> list[Path]:
    if not root.exists():
        raise ConfigError(f"model repository '{root}' does not exist")
    if not root.is_dir():
        raise ConfigError(f"model repository '{root}' is not a directory")
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as e:
        raise ConfigError(f"model repository '{root}' cannot be read: {e.strerror}") from None
    out = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name in _SKIPPED or not entry.is_dir():
            continue  # hidden folders (.git, .ipynb_checkpoints) and files are not models
        problem = name_problem(entry.name)
        error = None
        if problem:
            error = ConfigError(f"{entry}: {problem}")
        elif entry.is_symlink() and not is_within(entry, root):
            error = ConfigError(f"{entry}: model folder is a symlink leading outside the model "
                                f"repository (to {entry.resolve()}); refused")
        if error is None:
            out.append(entry)
        elif on_problem is None:
            raise error
        else:
            on_problem(error)
    return out


def scan_repositories(roots: list[Path],
                      on_problem: Callable[[ConfigError], None] | None = None) -> dict[str, Path]:
    """Model name -> model folder over all roots (ConfigError, INVALID_ARG, for a bad
    folder name, an escaping symlink, a missing root, or a name found in two roots).
    With on_problem, a bad folder is reported to it and left out instead, so one bad
    folder does not hide the others (the repository index, poll mode)."""
    found: dict[str, Path] = {}
    seen_roots: set[Path] = set()
    for root in roots:
        if Path(root).resolve() in seen_roots:
            continue  # the same root given twice
        seen_roots.add(Path(root).resolve())
        for model_dir in _model_dirs(Path(root), on_problem):
            other = found.get(model_dir.name)
            if other is not None:
                raise ConfigError(f"model '{model_dir.name}' appears in more than one model "
                                  f"repository: {other} and {model_dir}")
            found[model_dir.name] = model_dir
    return found


def find_model(roots: list[Path], name: str) -> Path | None:
    """The folder of model `name` (a load request's name), None when no root holds it.
    A name that is not a valid model name (a path, '..') is refused."""
    check_model_name(name)
    matches: list[Path] = []
    for root in roots:
        candidate = Path(root) / name
        if any(m.resolve() == candidate.resolve() for m in matches):
            continue  # the same root given twice
        if candidate.is_dir() and is_within(candidate, root):
            matches.append(candidate)
        elif candidate.is_dir():
            raise ConfigError(f"{candidate}: model folder is a symlink leading outside the "
                              "model repository; refused")
    if len(matches) > 1:
        raise ConfigError(f"model '{name}' appears in more than one model repository: "
                          f"{matches[0]} and {matches[1]}")
    return matches[0] if matches else None
