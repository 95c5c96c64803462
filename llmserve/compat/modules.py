"""Which stand-in packages a Python model gets, and under which names.

provided_modules("tensorrt_llm") is {"tensorrt_llm": <llmserve.compat.tensorrt_llm>,
"tensorrt_llm.bindings": ..., ...} when the real package cannot be imported, else None.
The Python backend's loader puts these in the model's private module table only:
sys.modules never holds a top-level `tensorrt_llm`, so other code's
`import tensorrt_llm` (or its check for the real package) is unaffected.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import threading
from types import ModuleType

# top-level name -> the package that stands in for it
STAND_INS = {"tensorrt_llm": "llmserve.compat.tensorrt_llm"}

_lock = threading.Lock()
_tables: dict[str, dict[str, ModuleType] | None] = {}


def real_package_available(name: str) -> bool:
    """Whether `import name` finds the real package (looked up, not imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def provided_modules(top: str) -> dict[str, ModuleType] | None:
    """The stand-in's modules under the names model code imports (None: no stand-in for
    top, or the real package is installed and is to be used)."""
    if top not in STAND_INS:
        return None
    with _lock:
        if top not in _tables:
            _tables[top] = None if real_package_available(top) else _load(top, STAND_INS[top])
        return _tables[top]


def _load(top: str, package_name: str) -> dict[str, ModuleType]:
    package = importlib.import_module(package_name)
    table = {top: package}
    for info in pkgutil.walk_packages(package.__path__, package_name + "."):
        # every submodule up front: an import the table cannot answer is an error, never
        # a second copy of a stand-in module under its `tensorrt_llm.` name
        module = importlib.import_module(info.name)
        table[top + info.name[len(package_name):]] = module
    return table
