"""Markdown tables from the aiperf results that scripts/bench_openai.sh leaves in OUT.

    python scripts/bench_openai_report.py [OUT] [--summary]   (default build/bench_openai)
    python scripts/bench_openai_report.py OUT1 OUT2 ... --ratios

prints, per run (endpoint x concurrency), llmserve and vLLM side by side: TTFT, ITL,
request latency, output tokens/s, requests/s, errors, and the load average (uptime) taken
before each run; --summary prints one line per run instead. --ratios compares several
result folders (repeated pairs of the same benchmark): per run, output tok/s llmserve /
vLLM and their ratio in each folder, the median ratio, and ITL p99 and TTFT p50 likewise:
one run of a shared machine is not a verdict, the spread over several is.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

SYSTEMS = ("llmserve", "vllm")
LABELS = {"llmserve": "llmserve", "vllm": "vLLM CPU"}


def _load(run_dir: Path) -> dict | None:
    path = run_dir / "profile_export_aiperf.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _stat(data: dict, metric: str, stat: str = "avg") -> float | None:
    value = data.get(metric)
    if not isinstance(value, dict):
        return None
    return value.get(stat)


def _load_avg(run_dir: Path) -> str:
    path = run_dir / "uptime_before.txt"
    if not path.is_file():
        return "-"
    match = re.search(r"load average:\s*([\d.]+)", path.read_text())
    return match.group(1) if match else "-"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


ROWS: list[tuple[str, str, str, int]] = [
    ("TTFT avg (ms)", "time_to_first_token", "avg", 1),
    ("TTFT p50 (ms)", "time_to_first_token", "p50", 1),
    ("TTFT p99 (ms)", "time_to_first_token", "p99", 1),
    ("ITL avg (ms)", "inter_token_latency", "avg", 2),
    ("ITL p99 (ms)", "inter_token_latency", "p99", 2),
    ("request latency avg (ms)", "request_latency", "avg", 1),
    ("request latency p99 (ms)", "request_latency", "p99", 1),
    ("output tokens/s per user", "output_token_throughput_per_user", "avg", 1),
    ("output tokens/s", "output_token_throughput", "avg", 1),
    ("requests/s", "request_throughput", "avg", 2),
    ("prompt tokens (server usage)", "usage_prompt_tokens", "avg", 0),
    ("output tokens (server usage)", "usage_completion_tokens", "avg", 0),
]


def run_names(out: Path) -> list[str]:
    names: set[str] = set()
    for system in SYSTEMS:
        if (out / system).is_dir():
            names.update(p.name for p in (out / system).iterdir() if _load(p) is not None)

    def key(name: str) -> tuple[int, int, str]:
        conc = int(name.rsplit("_c", 1)[-1]) if "_c" in name else 0
        order = 0 if name.startswith("completions") else 1 if "stream" in name else 2
        return order, conc, name

    return sorted(names, key=key)


def table(out: Path, name: str) -> str:
    runs = {s: _load(out / s / name) for s in SYSTEMS}
    lines = [f"**{name}**", "", "| metric | " + " | ".join(LABELS[s] for s in SYSTEMS) + " |",
             "|---|" + "---:|" * len(SYSTEMS)]
    for label, metric, stat, digits in ROWS:
        values = [_fmt(_stat(runs[s], metric, stat), digits) if runs[s] else "-" for s in SYSTEMS]
        if all(v == "-" for v in values):
            continue
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    done = []
    for s in SYSTEMS:
        data = runs[s]
        if not data:
            done.append("-")
            continue
        count = _stat(data, "request_count") or 0
        errors = int(round(count * (_stat(data, "request_error_rate") or 0.0) / 100))
        done.append(f"{int(count)} / {errors}")
    lines.append("| requests / errors | " + " | ".join(done) + " |")
    lines.append("| load avg before run | "
                 + " | ".join(_load_avg(out / s / name) for s in SYSTEMS) + " |")
    return "\n".join(lines)


def summary(out: Path, names: list[str]) -> str:
    """One row per run: llmserve / vLLM for the headline metrics."""
    cols = [("TTFT avg ms", "time_to_first_token", 1), ("ITL avg ms", "inter_token_latency", 2),
            ("output tok/s", "output_token_throughput", 1), ("req/s", "request_throughput", 2)]
    lines = ["| run | " + " | ".join(f"{c[0]} (llmserve / vLLM)" for c in cols)
             + " | errors | load avg |", "|---|" + "---:|" * (len(cols) + 2)]
    for name in names:
        runs = {s: _load(out / s / name) or {} for s in SYSTEMS}
        cells = [" / ".join(_fmt(_stat(runs[s], metric), d) for s in SYSTEMS)
                 for _, metric, d in cols]
        errors = " / ".join(_fmt(_stat(runs[s], "request_error_rate"), 0) + "%" for s in SYSTEMS)
        load = " / ".join(_load_avg(out / s / name) for s in SYSTEMS)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {errors} | {load} |")
    return "\n".join(lines)


RATIO_METRICS = [("output tok/s", "output_token_throughput", "avg", 0),
                 ("ITL p99 ms", "inter_token_latency", "p99", 1),
                 ("TTFT p50 ms", "time_to_first_token", "p50", 0)]


def ratios(outs: list[Path]) -> str:
    """One table per metric: a row per run name, a column per folder (llmserve / vLLM
    (ratio)), and the median ratio over the folders that have the run."""
    names: list[str] = []
    for out in outs:
        names += [n for n in run_names(out) if n not in names]
    blocks = []
    for label, metric, stat, digits in RATIO_METRICS:
        lines = [f"**{label}, llmserve / vLLM (ratio)**", "",
                 "| run | " + " | ".join(o.name for o in outs) + " | median ratio |",
                 "|---|" + "---:|" * (len(outs) + 1)]
        for name in names:
            cells, found = [], []
            for out in outs:
                ours, peer = (_stat(_load(out / s / name) or {}, metric, stat)
                              for s in SYSTEMS)
                if ours is None or peer is None or not peer:
                    cells.append("-")
                    continue
                found.append(ours / peer)
                cells.append(f"{_fmt(ours, digits)} / {_fmt(peer, digits)} "
                             f"({ours / peer:.2f}x)")
            if found:
                median = f"{statistics.median(found):.2f}x"
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {median} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="*", type=Path, default=[Path("build/bench_openai")])
    parser.add_argument("--summary", action="store_true", help="one line per run")
    parser.add_argument("--ratios", action="store_true",
                        help="compare several result folders, with median ratios")
    args = parser.parse_args(argv)
    missing = [out for out in args.out if not run_names(out)]
    if missing:
        print(f"no aiperf results under {', '.join(map(str, missing))}", file=sys.stderr)
        return 1
    if args.ratios:
        print(ratios(args.out))
        return 0
    if len(args.out) > 1:
        parser.error("several result folders need --ratios")
    out = args.out[0]
    names = run_names(out)
    env = out / "environment.txt"
    if env.is_file():
        print("```\n" + env.read_text().strip() + "\n```\n")
    if args.summary:
        print(summary(out, names))
    else:
        print("\n\n".join(table(out, name) for name in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
