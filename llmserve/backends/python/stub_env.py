"""Which interpreter runs a model's stub, with which environment: the server's own, or
the model's EXECUTION_ENV_PATH, a packed environment (conda-pack .tar.gz, unpacked once
per server and again when the file changes) or a folder (conda env, venv), set up as
Triton's stub launcher does (VIRTUAL_ENV, PATH, LD_LIBRARY_PATH; no PYTHONHOME).

A stub in another environment imports llmserve through a private folder holding only a
link to the llmserve package, so none of the server's other packages leak into it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llmserve
from llmserve.backends.python.stub_settings import ENV_PARAMETER, parameter
from llmserve.child_command import PACKAGE_ROOT, child_env
from llmserve.core.errors import Unavailable

_PACKAGE_DIR = Path(llmserve.__file__).resolve().parent
MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY"


@dataclass(frozen=True, slots=True)
class StubInterpreter:
    python: str
    env: dict[str, str]
    import_root: str = PACKAGE_ROOT  # the sys.path entry that gives the stub this llmserve


_lock = threading.Lock()
_scratch: list[Path] = []  # the private import folder, then unpacked environments
_unpacked: dict[str, tuple[float, Path]] = {}


def _scratch_dir() -> Path:
    if not _scratch:
        base = Path(tempfile.mkdtemp(prefix="llmserve-python-stubs-"))
        (base / "import").mkdir()
        (base / "import" / "llmserve").symlink_to(_PACKAGE_DIR, target_is_directory=True)
        _scratch.append(base)
        atexit.register(shutil.rmtree, base, True)
    return _scratch[0]


def _with_path(first: str, rest: str | None) -> str:
    return first + (os.pathsep + rest if rest else "")


def interpreter_for(config: Any, model_dir: Path) -> StubInterpreter:
    """The interpreter and environment of a model's stubs."""
    value = parameter(config, ENV_PARAMETER)
    env = dict(os.environ)
    if not value:
        return StubInterpreter(sys.executable, child_env(env))
    root = _environment_root(value.replace(MODEL_DIRECTORY, str(model_dir)), config.name)
    activate = root / "bin" / "activate"
    if not activate.is_file():
        raise Unavailable(f"Path {activate} does not exist. The Python environment should "
                          "contain an 'activate' script.")
    python = next((root / "bin" / n for n in ("python3", "python") if (root / "bin" / n).exists()),
                  None)
    if python is None:
        raise Unavailable(f"{ENV_PARAMETER} of model '{config.name}': no bin/python3 in {root}")
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(root)
    env["VIRTUAL_ENV_PROMPT"] = f"({root})"
    env["PATH"] = _with_path(str(root / "bin"), env.get("PATH"))
    env["LD_LIBRARY_PATH"] = _with_path(str(root / "lib"), env.get("LD_LIBRARY_PATH"))
    with _lock:
        imports = _scratch_dir() / "import"
    env["PYTHONPATH"] = _with_path(str(imports), env.get("PYTHONPATH"))
    # only llmserve (a link) is added for that interpreter, none of the server's packages
    return StubInterpreter(str(python), env, str(imports))


def _environment_root(value: str, model: str) -> Path:
    path = Path(os.path.realpath(value))
    if not path.exists():
        raise Unavailable(f"Failed to get the canonical path for {value}.")
    if path.is_dir():
        return path
    with _lock:
        mtime = path.stat().st_mtime
        known = _unpacked.get(str(path))
        if known is not None and known[0] == mtime:
            return _single_folder(known[1])
        dest = known[1] if known is not None else _scratch_dir() / f"env{len(_unpacked)}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        try:
            with tarfile.open(path, "r:*") as archive:
                # the archive is the operator's, as trusted as the model code it runs
                if hasattr(tarfile, "fully_trusted_filter"):
                    archive.extractall(dest, filter="fully_trusted")
                else:
                    archive.extractall(dest)
        except (OSError, tarfile.TarError) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise Unavailable(f"{ENV_PARAMETER} of model '{model}': cannot unpack {path}: "
                              f"{exc}") from exc
        _unpacked[str(path)] = (mtime, dest)
        return _single_folder(dest)


def _single_folder(dest: Path) -> Path:
    """conda-pack archives hold the environment itself; an archive of one folder holding
    it (tar -czf env.tar.gz venv/) is taken as that folder."""
    entries = list(dest.iterdir())
    if not (dest / "bin").exists() and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest
