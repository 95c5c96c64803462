"""Imports a Python model's model.py under a unique module name with its version folder
importable (sibling modules, lib/ packages). Modules from the model's folder are taken
out of sys.modules again so two models' same-named helpers never collide.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import sys
import threading
from pathlib import Path
from types import ModuleType

from llmserve.backends.hf_imports import prewarm_transformers

_lock = threading.Lock()
_counter = itertools.count()


def _under(file: str, folder: str) -> bool:
    return bool(file) and (file == folder or file.startswith(folder.rstrip("/") + "/"))


def import_model_module(model_file: Path, model_name: str, version: int) -> ModuleType:
    """Execute `model_file` as a fresh module; raises what the model's code raises."""
    model_file = Path(model_file).resolve()
    folder = str(model_file.parent)
    safe = re.sub(r"\W", "_", model_name)
    module_name = f"_llmserve_model_{safe}_v{version}_{next(_counter)}"
    prewarm_transformers()
    with _lock:
        before = set(sys.modules)
        sys.path.insert(0, folder)
        try:
            spec = importlib.util.spec_from_file_location(module_name, model_file)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import {model_file}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(folder)
            for name in set(sys.modules) - before:
                mod = sys.modules.get(name)
                file = getattr(mod, "__file__", None) or ""
                if name == module_name or _under(file, folder):
                    del sys.modules[name]
    return module
