"""Benchmark llmserve's executor against transformers generate() (static batches) and
vLLM's CPU build, side by side on the same checkpoints and prompts (issue 4).

Workloads: (a) N requests with mixed prompt/output lengths, all at once: output tok/s;
(b) the same arriving as a Poisson process near capacity: TTFT, inter-token latency,
output tok/s; (c) batch-1 decode tok/s against the memory-bandwidth bound.

    .venv/bin/python scripts/bench_executor.py [--quick] [--systems llmserve,hf,vllm]
        [--model demo,random80m|PATH] [--workload a,b,c] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import llmserve_runner  # noqa: E402
from bench.workload import (  # noqa: E402
    BenchRequest,
    Timing,
    copy_bandwidth_gbs,
    decode_rate,
    load_average,
    make_requests,
    summarize,
    with_poisson_arrivals,
)

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"demo": ROOT / "models" / "demo-llm",
          "random80m": ROOT / "build" / "bench" / "random-llama-80m"}
SYSTEMS = ("llmserve", "hf", "vllm")
log = logging.getLogger("bench_executor")


# -- workloads -----------------------------------------------------------------------------

def _model_info(path: Path) -> dict:
    cfg = json.loads((path / "config.json").read_text())
    weight_bytes = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return {"path": str(path), "vocab_size": cfg["vocab_size"],
            "max_len": cfg.get("max_position_embeddings", 2048),
            "layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"],
            "kv_heads": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
            "weight_bytes": weight_bytes}


def _base_requests(info: dict, args) -> list[BenchRequest]:
    if args.quick:
        return make_requests(args.num_requests or 8, info["vocab_size"], info["max_len"],
                             seed=args.seed, prompt_range=(16, 64), output_range=(8, 32))
    return make_requests(args.num_requests or 64, info["vocab_size"], info["max_len"],
                         seed=args.seed)


def _decode_request(info: dict, args) -> BenchRequest:
    n = 32 if args.quick else 256
    return make_requests(1, info["vocab_size"], info["max_len"], seed=args.seed + 7,
                         prompt_range=(16, 16), output_range=(n, n))[0]


def _warmup(info: dict) -> list[BenchRequest]:
    return make_requests(4, info["vocab_size"], info["max_len"], seed=99,
                         prompt_range=(8, 64), output_range=(4, 8))


# -- running one system ----------------------------------------------------------------------

def _run_system(system: str, info: dict, works: dict[str, tuple[list[BenchRequest], bool]],
                args) -> dict[str, list[Timing]]:
    """works: name -> (requests, streaming). Returns name -> per-request timings. Every
    system runs in a process of its own (see scripts/bench/local_worker.py)."""
    warm = _warmup(info)
    spec = {"model": info["path"], "warmup": [r.to_json() for r in warm],
            "workloads": {name: {"requests": [r.to_json() for r in reqs], "streaming": s}
                          for name, (reqs, s) in works.items()}}
    bench_dir = Path(__file__).resolve().parent / "bench"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if system == "vllm":
        per_token = 2 * info["layers"] * info["kv_heads"] * info["head_dim"] * 4
        kv_gib = max(1, -(-args.kv_tokens * per_token // 2**30))
        spec.update(max_model_len=info["bench_max_len"], max_num_seqs=args.max_batch_size)
        env.update(VLLM_CPU_KVCACHE_SPACE=str(kv_gib), VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1")
        command = [str(Path(args.vllm_venv) / "bin" / "python"),
                   str(bench_dir / "vllm_worker.py")]
    else:
        spec["settings"] = asdict(llmserve_runner.LlmserveSettings(
            max_batch_size=args.max_batch_size, max_num_tokens=args.max_num_tokens,
            enable_chunked_context=True, kv_tokens=args.kv_tokens))
        spec["hf_batch_sizes"] = {name: 1 if name == "c" else args.hf_batch_size
                                  for name in works}
        command = [sys.executable, str(bench_dir / "local_worker.py"), system]
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        log_path = Path(args.json).with_suffix(f".{system}.log")
        with open(log_path, "a") as logf:
            proc = subprocess.run([*command, str(spec_path), str(out_path)], env=env,
                                  stdout=logf, stderr=subprocess.STDOUT, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"{system} worker failed ({proc.returncode}); see {log_path}")
        out = json.loads(out_path.read_text())
    if system == "vllm":
        args.vllm_version = out["version"]
    return {name: [Timing(r["arrival"], r["times"], r["tokens"]) for r in w["requests"]]
            for name, w in out["workloads"].items()}


# -- orchestration --------------------------------------------------------------------------

def _phase(systems: list[str], info: dict, works: dict, args, results: dict) -> None:
    for system in systems:
        before = load_average()
        log.info("[%s] %s: workloads %s (load %s)", Path(info["path"]).name, system,
                 ",".join(works), before)
        timings = _run_system(system, info, works, args)
        after = load_average()
        for name, t in timings.items():
            reqs = works[name][0]
            entry = summarize(t, sum(r.max_tokens for r in reqs))
            if name == "c":
                entry["decode_tok_s"] = decode_rate(t[0])
                entry["bound_tok_s"] = info["bound_tok_s"]
                entry["fraction_of_bound"] = entry["decode_tok_s"] / info["bound_tok_s"]
            entry["load_before"], entry["load_after"] = before, after
            results.setdefault(system, {})[name] = entry
            log.info("  %s %s: %s", system, name, _brief(entry))


def _brief(e: dict) -> str:
    keys = ("output_tok_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s",
            "decode_tok_s")
    return " ".join(f"{k}={e[k]:.4g}" for k in keys if e.get(k) is not None)


def bench_model(name: str, path: Path, systems: list[str], workloads: list[str], args,
                bandwidth: float) -> dict:
    if name == "random80m" and not (path / "config.json").is_file():
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_random_llama import build

        build(path)
    info = _model_info(path)
    base = _base_requests(info, args)
    info["bench_max_len"] = min(info["max_len"],
                                max(len(r.prompt) + r.max_tokens for r in base) + 16)
    info["bound_tok_s"] = bandwidth * 1e9 / info["weight_bytes"]
    results: dict = {}
    if "a" in workloads:
        _phase(systems, info, {"a": (base, False)}, args, results)
    later: dict[str, tuple[list[BenchRequest], bool]] = {}
    rate = None
    if "b" in workloads:
        rate = args.rate or _auto_rate(results, len(base), args.rate_basis, args.rate_factor)
        later["b"] = (with_poisson_arrivals(base, rate, seed=args.seed + 1), True)
    if "c" in workloads:
        later["c"] = ([_decode_request(info, args)], True)
    if later:
        _phase(systems, info, later, args, results)
    if "c" in workloads:
        _repeat_decode(systems, info, args, results)
    return {"model": info, "rate_req_s": rate, "results": results}


def _repeat_decode(systems: list[str], info: dict, args, results: dict) -> None:
    """(c) is one 256-token request, so one run is at the mercy of a noisy machine: run
    it --decode-runs times (each in a fresh worker) and keep the median run."""
    runs = {system: [results[system]["c"]] for system in systems}
    for _ in range(args.decode_runs - 1):
        again: dict = {}
        _phase(systems, info, {"c": ([_decode_request(info, args)], True)}, args, again)
        for system in systems:
            runs[system].append(again[system]["c"])
    for system in systems:
        ordered = sorted(runs[system], key=lambda e: e["decode_tok_s"])
        entry = dict(ordered[len(ordered) // 2])
        entry["decode_tok_s_runs"] = [e["decode_tok_s"] for e in runs[system]]
        results[system]["c"] = entry


def _auto_rate(results: dict, n: int, basis: str, factor: float = 0.85) -> float:
    """factor (0.85) x a request throughput measured in workload (a): llmserve's (basis
    "llmserve": near the capacity of the system under test, so a slower peer runs
    overloaded) or the slower of llmserve and vLLM's (basis "slower": both keep up, and
    the comparison is of latency at the same sustainable load)."""
    serving = [s for s in ("llmserve", "vllm") if s in results and "a" in results[s]]
    if basis == "llmserve" and "llmserve" in serving:
        serving = ["llmserve"]
    caps = [n / results[s]["a"]["duration_s"] for s in serving]
    if not caps:
        caps = [n / r["a"]["duration_s"] for r in results.values() if "a" in r]
    if not caps:
        raise SystemExit("workload b needs --rate when workload a is not run")
    return factor * min(caps)


# -- reporting ------------------------------------------------------------------------------

def _fmt(v, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if v is None else f"{v * scale:,.{digits}f}"


def markdown(report: dict) -> str:
    lines = []
    for m in report["models"]:
        info, res = m["model"], m["results"]
        lines.append(f"\n### {Path(info['path']).name} ({info['weight_bytes'] / 1e6:.0f} MB "
                     f"fp32 weights, {info['layers']} layers, hidden {info['hidden']})\n")
        if m["rate_req_s"]:
            lines.append(f"(b) Poisson rate: {m['rate_req_s']:.3f} req/s\n")
        lines.append("| system | (a) out tok/s | (b) out tok/s | (b) TTFT p50 / p99 ms | "
                     "(b) ITL p50 / p99 ms | (c) decode tok/s | (c) % of bound | load avg |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for system, w in res.items():
            a, b, c = w.get("a", {}), w.get("b", {}), w.get("c", {})
            loads = sorted({x["load_before"] for x in w.values()})
            lines.append(
                f"| {system} | {_fmt(a.get('output_tok_s'))} | {_fmt(b.get('output_tok_s'))} | "
                f"{_fmt(b.get('ttft_p50_s'), 1e3, 0)} / {_fmt(b.get('ttft_p99_s'), 1e3, 0)} | "
                f"{_fmt(b.get('itl_p50_s'), 1e3, 1)} / {_fmt(b.get('itl_p99_s'), 1e3, 1)} | "
                f"{_fmt(c.get('decode_tok_s'))} | {_fmt(c.get('fraction_of_bound'), 100, 0)} | "
                f"{'; '.join(loads)} |")
        if "c" in next(iter(res.values()), {}):
            lines.append(f"\nbatch-1 bound: {info['bound_tok_s']:.1f} tok/s "
                         f"({report['copy_bandwidth_gbs']:.1f} GB/s / "
                         f"{info['weight_bytes'] / 1e6:.0f} MB)")
        ours, peer = res.get("llmserve", {}), res.get("vllm", {})
        for w in ("a", "b"):
            if w in ours and w in peer:
                lines.append(f"- ({w}) llmserve / vLLM output tok/s: "
                             f"{ours[w]['output_tok_s'] / peer[w]['output_tok_s']:.2f}x")
        if "b" in ours and "b" in peer:
            lines.append(f"- (b) p99 TTFT llmserve {ours['b']['ttft_p99_s'] * 1e3:.0f} ms vs "
                         f"vLLM {peer['b']['ttft_p99_s'] * 1e3:.0f} ms")
    return "\n".join(lines)


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(int(mem) / 1e6, 1),
            "python": platform.python_version()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--model", default="demo,random80m",
                   help="comma list of demo, random80m or checkpoint folders")
    p.add_argument("--workload", default="a,b,c")
    p.add_argument("--num-requests", type=int, default=0, help="default 64 (8 with --quick)")
    p.add_argument("--rate", type=float, default=0.0, help="(b) req/s; default: auto")
    p.add_argument("--rate-basis", choices=("llmserve", "slower"), default="llmserve",
                   help="(b) auto rate: --rate-factor x llmserve's (a) capacity, or the "
                        "slower serving system's")
    p.add_argument("--rate-factor", type=float, default=0.85,
                   help="(b) auto rate as a fraction of the --rate-basis capacity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decode-runs", type=int, default=3,
                   help="(c) runs per system (fresh workers); the median is reported")
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-num-tokens", type=int, default=2048)
    p.add_argument("--kv-tokens", type=int, default=64 * 768)
    p.add_argument("--vllm-venv", default="/tmp/vllm-cpu-venv")
    p.add_argument("--json", default=str(ROOT / "build" / "bench" / "results.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("llmserve", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    workloads = [w for w in args.workload.split(",") if w]
    args.vllm_version = None
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)

    import torch
    import transformers

    bandwidth = copy_bandwidth_gbs()
    log.info("copy bandwidth %.1f GB/s (read + write, %d torch threads)", bandwidth,
             torch.get_num_threads())
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": machine(), "copy_bandwidth_gbs": bandwidth,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "load_start": load_average(), "models": []}
    for name in args.model.split(","):
        path = MODELS.get(name, Path(name))
        report["models"].append(bench_model(name, path, systems, workloads, args, bandwidth))
    report["versions"]["vllm"] = args.vllm_version
    report["load_end"] = load_average()
    Path(args.json).write_text(json.dumps(report, indent=1))
    table = markdown(report)
    print(f"\n{report['date']}  {report['machine']}  versions {report['versions']}  "
          f"load {report['load_start']} -> {report['load_end']}")
    print(table)
    log.info("wrote %s", args.json)


if __name__ == "__main__":
    main()
