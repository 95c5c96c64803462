"""The command line that runs one of llmserve's modules in a child process (an engine
process, a tensor-parallel rank, a Python stub) on this very llmserve. `python -m` puts
the working directory first on sys.path, so a folder named llmserve there (another
checkout) would win over the server's own and the two would speak different messages."""

from __future__ import annotations

import os
from collections.abc import Mapping

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_command(python: str, module: str, *args: str, root: str = PACKAGE_ROOT) -> list[str]:
    """[python, ...] running `module` as __main__ with root (a folder holding this
    llmserve) first on sys.path; the module's name stays in the command line, for ps."""
    boot = (f"import runpy, sys; sys.path.insert(0, {root!r}); "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [python, "-c", boot, *args]


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """base (default: os.environ) with PACKAGE_ROOT first on PYTHONPATH, so that what the
    child starts in turn imports the same llmserve."""
    env = dict(os.environ if base is None else base)
    rest = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + rest if rest else "")
    return env
