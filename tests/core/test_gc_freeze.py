"""core/gc_freeze.py: the loaded heap kept out of garbage collection, and the warning
for a long collection."""

import logging
import os
import subprocess
import sys
import time

import pytest

from llmserve.core import gc_freeze

# run in a child: freezing the test process's heap would outlive the test
FREEZE = """
import gc, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
from llmserve.core.gc_freeze import freeze_loaded_heap
before = gc.get_freeze_count()
returned = freeze_loaded_heap("test")
print("RESULT", before, returned, gc.get_freeze_count())
"""


def _freeze_in_child(value: str | None) -> tuple[str, list[int]]:
    env = {k: v for k, v in os.environ.items() if k != gc_freeze.ENV}
    if value is not None:
        env[gc_freeze.ENV] = value
    out = subprocess.run([sys.executable, "-c", FREEZE], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    return out, [int(x) for x in line.split()[1:]]


@pytest.mark.parametrize("value", [None, "1", "on"])
def test_the_loaded_heap_is_frozen_by_default(value):
    _, (before, returned, after) = _freeze_in_child(value)
    assert before == 0 and returned == after > 1000  # the interpreter and what it imported


def test_zero_leaves_the_heap_to_the_collector():
    _, (before, returned, after) = _freeze_in_child("0")
    assert (before, returned, after) == (0, 0, 0)


def test_an_unknown_value_warns_and_freezes():
    out, (_, returned, _) = _freeze_in_child("maybe")
    assert "LLMSERVE_GC_FREEZE='maybe'" in out and returned > 1000


REFREEZE = """
import gc, weakref
from llmserve.core.gc_freeze import freeze_loaded_heap, refreeze_after_unload

class Model:
    pass

model = Model()
model.me = model  # a cycle, as an unloaded model's objects may hold
gone = weakref.ref(model)
freeze_loaded_heap("test")
del model
gc.collect()
frozen_cycle_kept = gone() is not None
refreeze_after_unload("test")
print("RESULT", int(frozen_cycle_kept), int(gone() is None), int(gc.get_freeze_count() > 1000))
"""


def test_a_frozen_cycle_is_freed_by_the_refreeze_after_an_unload():
    out = subprocess.run([sys.executable, "-c", REFREEZE], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split("RESULT")[1].split() == ["1", "1", "1"]


def _pause(watch, seconds: float, generation: int = 2) -> None:
    watch("start", {"generation": generation})
    time.sleep(seconds)
    watch("stop", {"generation": generation, "collected": 7})


def test_a_long_collection_is_logged_once_a_minute_with_the_count(caplog):
    caplog.set_level(logging.WARNING, logger="llmserve.core.gc_freeze")
    watch = gc_freeze._PauseWatch("engine process", threshold_s=0.005)
    _pause(watch, 0.0)  # under the threshold: nothing
    assert not caplog.records
    _pause(watch, 0.02)
    [first] = caplog.records
    assert first.getMessage().startswith("engine process: a generation-2 garbage collection "
                                         "stopped the process for")
    assert "7 objects freed" in first.getMessage() and "LLMSERVE_GC_WARN_MS" in first.getMessage()
    _pause(watch, 0.02)  # within the minute: counted, not logged
    _pause(watch, 0.02)
    assert len(caplog.records) == 1 and watch.unreported == 2
    watch.last_warning -= gc_freeze.WARN_EVERY_S
    _pause(watch, 0.02)
    assert len(caplog.records) == 2
    assert "3 collection(s) over 5 ms since the last warning" in caplog.records[1].getMessage()


@pytest.mark.parametrize(("raw", "expected", "warns"), [
    ("", gc_freeze.DEFAULT_WARN_MS, False), ("250", 250.0, False), ("0", 0.0, False),
    ("-1", gc_freeze.DEFAULT_WARN_MS, True), ("soon", gc_freeze.DEFAULT_WARN_MS, True)])
def test_the_warning_threshold_comes_from_the_environment(monkeypatch, caplog, raw, expected,
                                                         warns):
    monkeypatch.setenv(gc_freeze.WARN_ENV, raw)
    assert gc_freeze._warn_ms() == expected
    assert any(gc_freeze.WARN_ENV in r.getMessage() for r in caplog.records) == warns


def test_the_watch_is_installed_once_and_not_at_zero(monkeypatch):
    import gc

    mine = [cb for cb in gc.callbacks if isinstance(cb, gc_freeze._PauseWatch)]
    for cb in mine:  # another test's server may have installed one in this process
        gc.callbacks.remove(cb)
    try:
        monkeypatch.setenv(gc_freeze.WARN_ENV, "0")
        gc_freeze.watch_pauses("x")
        assert not [cb for cb in gc.callbacks if isinstance(cb, gc_freeze._PauseWatch)]
        monkeypatch.setenv(gc_freeze.WARN_ENV, "100")
        gc_freeze.watch_pauses("x")
        gc_freeze.watch_pauses("y")
        [watch] = [cb for cb in gc.callbacks if isinstance(cb, gc_freeze._PauseWatch)]
        assert watch.what == "x"
    finally:
        for cb in [cb for cb in gc.callbacks if isinstance(cb, gc_freeze._PauseWatch)]:
            gc.callbacks.remove(cb)
        gc.callbacks.extend(mine)
