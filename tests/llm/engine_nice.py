"""Helpers for tests of the engine thread's nice value (Linux /proc)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def thread_nices(pid: int) -> list[int]:
    """The nice value of each thread of process pid."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        out.append(int(fields[16]))  # field 19 of stat; fields[0] is field 3
    return out


def can_lower_nice() -> bool:
    """Whether this process may lower a thread's nice value (CAP_SYS_NICE or RLIMIT_NICE),
    tried on a throwaway thread."""
    result: list[bool] = []

    def probe() -> None:
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) - 1)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return result[0]
