"""Model naming rules and path containment: a model name is letters, digits, '_' and '-'
(plus one '.<backend>' suffix for custom backends), and nothing a model names may lead
outside its repository.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmserve.config.errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?")
MAX_NAME_LENGTH = 255  # NAME_MAX of common file systems
NAME_RULE = ("model names may contain only letters (a-z, A-Z), digits (0-9), '_' and '-', "
             "plus an optional '.<backend>' suffix")


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid model name, or None when it is."""
    if not name:
        return "the model name is empty"
    if name in (".", "..") or "/" in name or "\\" in name:
        return f"'{printable(name)}' is a path, not a model name"
    if not _NAME.fullmatch(name):
        return f"invalid model name '{printable(name)}': {NAME_RULE}"
    if len(name) > MAX_NAME_LENGTH:  # a folder name longer than the file system takes
        return f"invalid model name '{name[:32]}...': longer than {MAX_NAME_LENGTH} characters"
    return None


def printable(name: str, limit: int = 200) -> str:
    """`name` safe to log and quote: control characters escaped (a CR/LF in a client's
    model name must not forge a log line) and long names cut."""
    text = name.encode("unicode_escape").decode("ascii") if not name.isprintable() else name
    return text if len(text) <= limit else text[:limit] + "..."


def check_model_name(name: str, where: str = "") -> None:
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{where}: {problem}" if where else problem)


def is_within(path: Path, root: Path) -> bool:
    """True when `path`, symlinks resolved, lies inside `root` (also resolved)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def contained_path(base: Path, relative: str, root: Path, what: str) -> Path:
    """base / relative, refused when `relative` is absolute, climbs with '..', or resolves
    (through symlinks) outside `root`."""
    rel = Path(relative)
    if not relative or rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"{what} '{relative}' must be a plain relative path inside the "
                          "model folder")
    path = Path(base) / rel
    if not is_within(path, root):
        raise ConfigError(f"{what} '{relative}' leads outside the model repository "
                          f"({path.resolve()})")
    return path
