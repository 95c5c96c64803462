"""Imports a Python model's model.py under a unique module name, with its version folder
importable (sibling modules, lib/ packages), and keeps each model's own modules apart.

Triton runs every model in a stub process of its own, with the version folder on
sys.path for the model's whole life. Here all models share one interpreter, so each gets
a private module table instead: the modules from its folder are taken out of sys.modules
after the import (two models' same-named helpers never collide), and an import statement
that runs later in the model's own code, in initialize or execute (`import helper`,
`from lib.util import f`, relative imports inside its packages), is served from that
table, or imported into it with the folder on sys.path. Imports made by any other code
go through Python's import unchanged.

A model's imports of a package llmserve stands in for (`tensorrt_llm`, when the real one
is not installed; llmserve/compat/modules.py) are answered from the stand-in, for that
model's code only: no top-level module of that name ever enters sys.modules.
"""

from __future__ import annotations

import builtins
import importlib.util
import itertools
import re
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from llmserve.backends.hf_imports import prewarm_transformers
from llmserve.compat.modules import provided_modules

T = TypeVar("T")
_lock = threading.RLock()
_counter = itertools.count()
# id(a model module's globals) -> that model's table; entries leave with the module
_OWNERS: dict[int, weakref.ref[ModelModules]] = {}
# the model's main module keeps its table (and so its helper modules) alive
_TABLES: weakref.WeakKeyDictionary[ModuleType, ModelModules] = weakref.WeakKeyDictionary()
_builtin_import = builtins.__import__


def _under(file: str, folder: str) -> bool:
    return bool(file) and (file == folder or file.startswith(folder.rstrip("/") + "/"))


def _location(module: ModuleType) -> str:
    """Where a module lives: its file, or its first folder for a namespace package (no
    __init__.py, as tensorrtllm_backend's tensorrt_llm_bls/1/lib), which has no file."""
    file = getattr(module, "__file__", None)
    if file:
        return file
    path = getattr(module, "__path__", None)
    return next(iter(path), "") if path is not None else ""


class ModelModules:
    """One model's private module table, for its version folder."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.modules: dict[str, ModuleType] = {}
        self._local: dict[str, bool] = {}

    def owns(self, top: str) -> bool:
        """Whether a top-level name is one of the folder's modules or packages."""
        local = self._local.get(top)
        if local is None:
            base = Path(self.folder) / top
            local = top in self.modules or base.with_suffix(".py").is_file() or base.is_dir()
            self._local[top] = local
        return local

    def adopt(self, module: ModuleType) -> None:
        key = id(module.__dict__)
        _OWNERS[key] = weakref.ref(self)
        weakref.finalize(module, _OWNERS.pop, key, None)

    def run(self, fn: Callable[[], T]) -> T:
        """Runs fn (an import) with this model's modules in sys.modules and its folder on
        sys.path; the folder's modules it imported join the table, and sys.modules is left
        as it was."""
        with _lock:
            shadowed = {name: sys.modules[name] for name in self.modules if name in sys.modules}
            sys.modules.update(self.modules)
            before = set(sys.modules)
            sys.path.insert(0, self.folder)
            try:
                return fn()
            finally:
                sys.path.remove(self.folder)
                for name in set(sys.modules) - before:
                    module = sys.modules[name]
                    if _under(_location(module), self.folder):
                        self.modules[name] = module
                        self.adopt(module)
                for name in self.modules:
                    sys.modules.pop(name, None)
                sys.modules.update(shadowed)

    def cached(self, name: str, fromlist: Any) -> ModuleType | None:
        """What `import name` / `from name import ...` gives, when the table has it all."""
        module = self.modules.get(name)
        if module is None:
            return None
        if not fromlist:
            return self.modules.get(name.partition(".")[0])
        if all(item == "*" or hasattr(module, item) for item in fromlist):
            return module
        return None


def _model_import(name: str, globals: dict | None = None, locals: Any = None,
                  fromlist: Any = (), level: int = 0) -> ModuleType:
    ref = _OWNERS.get(id(globals)) if globals is not None else None
    table = ref() if ref is not None else None
    if table is None:
        return _builtin_import(name, globals, locals, fromlist, level)
    if level == 0 and not table.owns(top := name.partition(".")[0]):
        provided = provided_modules(top)
        if provided is None:
            return _builtin_import(name, globals, locals, fromlist, level)
        return _stand_in(provided, name, fromlist)
    if level == 0:
        module = table.cached(name, fromlist)
        if module is not None:
            return module
    return table.run(lambda: _builtin_import(name, globals, locals, fromlist, level))


def _stand_in(provided: dict[str, ModuleType], name: str, fromlist: Any) -> ModuleType:
    """What `import name` / `from name import ...` gives from a stand-in package."""
    module = provided.get(name)
    if module is None:
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)
    return module if fromlist else provided[name.partition(".")[0]]


def _install() -> None:
    if builtins.__import__ is not _model_import:
        builtins.__import__ = _model_import


def import_model_module(model_file: Path, model_name: str, version: int) -> ModuleType:
    """Execute `model_file` as a fresh module; raises what the model's code raises."""
    model_file = Path(model_file).resolve()
    table = ModelModules(str(model_file.parent))
    safe = re.sub(r"\W", "_", model_name)
    module_name = f"_llmserve_model_{safe}_v{version}_{next(_counter)}"
    prewarm_transformers()
    _install()
    spec = importlib.util.spec_from_file_location(module_name, model_file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {model_file}")
    module = importlib.util.module_from_spec(spec)
    table.adopt(module)
    _TABLES[module] = table

    def execute() -> None:
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[module_name]

    table.run(execute)
    return module
