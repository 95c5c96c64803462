"""Every second, the CPU seconds each group of processes used (aiperf, the llmserve
server, its engine process, its Python-model stubs, vLLM, other), from /proc: where the
CPU goes while scripts/bench_openai.sh runs beside it.

    python3 scripts/bench/cpu_by_group.py > cpu.log &   # then run the benchmark
"""

from __future__ import annotations

import os
import time

TICK = os.sysconf("SC_CLK_TCK")


def group(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().decode(errors="replace").replace("\0", " ")
    except OSError:
        return None
    if "aiperf" in cmd:
        return "aiperf"
    if "engine_process.worker" in cmd:
        return "engine"
    if "llmserve serve" in cmd:
        return "server"
    if "--name" in cmd and "runpy" in cmd:
        return "stub"
    if "vllm" in cmd.lower():
        return "vllm"
    return "other"


def cpu_seconds() -> dict[int, float]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def main() -> None:
    prev = cpu_seconds()
    groups: dict[int, str | None] = {}
    while True:
        time.sleep(1.0)
        cur = cpu_seconds()
        row: dict[str, float] = {}
        for pid, seconds in cur.items():
            used = seconds - prev[pid] if pid in prev else 0.0  # new: counted from next second
            if pid not in groups:
                groups[pid] = group(pid)
            name = groups[pid]
            if name and used > 0:
                row[name] = row.get(name, 0.0) + used
        prev = cur
        print(time.strftime("%H:%M:%S"), " ".join(f"{k}={v:.2f}" for k, v in sorted(row.items())),
              flush=True)


if __name__ == "__main__":
    main()
