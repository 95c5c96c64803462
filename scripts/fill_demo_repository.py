"""Fill the inflight_batcher_llm templates for the bundled demo model into a folder.

    python scripts/fill_demo_repository.py [OUT] [--model DIR] [--draft DIR] [--force]

copies all_models/inflight_batcher_llm to OUT (default build/demo_repository) and fills
every config.pbtxt with tools/fill_template.py, pointing engine_dir and tokenizer_dir at
the demo checkpoint (models/demo-llm). With a draft checkpoint (models/demo-draft, when
present) it also adds a `tensorrt_llm_draft` model for the BLS's speculative decoding.
Then: llmserve serve --model-repository OUT
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "all_models" / "inflight_batcher_llm"
FILL = ROOT / "tools" / "fill_template.py"
DEFAULT_OUT = ROOT / "build" / "demo_repository"
DEFAULT_MODEL = ROOT / "models" / "demo-llm"
DEFAULT_DRAFT = ROOT / "models" / "demo-draft"
# tokens per engine step (prompt chunks included): prompts that arrive together are
# prefilled a few per step, first come first served, so the first of them get their
# first token sooner than when one step prefills them all (docs/BENCHMARKS.md, session 6)
DEFAULT_MAX_NUM_TOKENS = 256


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def fill_file(path: Path, values: dict[str, str]) -> None:
    """Run tools/fill_template.py -i on path (every key must appear in the file)."""
    spec = ",".join(f"{k}:{_escape(v)}" for k, v in values.items())
    subprocess.run([sys.executable, str(FILL), "-i", str(path), spec], check=True)


def model_values(
    model_dir: Path,
    *,
    decoupled: bool = True,
    max_batch_size: int = 8,
    instances: int | None = None,
    draft_name: str | None = None,
    max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS,
) -> dict[str, dict[str, str]]:
    """Placeholder values per model folder of the template set. instances: the pre/post
    and BLS instance counts. By default: for pre/post-processing 1 on machines of up to 4
    CPUs and 5 (the model set's advice) above. On 2 cores one pre/post instance streamed
    12-40% more tokens/s than five under aiperf at concurrency 8 (docs/BENCHMARKS.md):
    their per-token Python work shares one GIL, and with fewer instances the
    postprocessing's dynamic batcher batches more. The decoupled BLS serves every stream
    of an instance at once (a thread each), so it takes the pre/post count too; the
    non-decoupled BLS answers one request per instance at a time and takes the max batch
    size, so that a full batch can be in flight."""
    pre = post = instances or (1 if (os.cpu_count() or 1) <= 4 else 5)
    bls_count = instances or (pre if decoupled else max_batch_size)
    model = str(model_dir.resolve())
    common = {"triton_max_batch_size": str(max_batch_size)}
    trtllm = {
        **common,
        "triton_backend": "tensorrtllm",
        "decoupled_mode": str(decoupled).lower(),
        "max_queue_delay_microseconds": "0",
        "max_queue_size": "0",
        "engine_dir": model,
        "tokenizer_dir": model,
        "batching_strategy": "inflight_fused_batching",
        "encoder_input_features_data_type": "TYPE_FP16",
        "logits_datatype": "TYPE_FP32",
        "batch_scheduler_policy": "guaranteed_no_evict",
        "kv_cache_free_gpu_mem_fraction": "0.9",
        "enable_kv_cache_reuse": "true",
        "enable_chunked_context": "true",
        "exclude_input_in_output": "true",
        "max_beam_width": "4",
        "engine_max_num_tokens": str(max_num_tokens),
    }
    bls = {
        **common,
        "decoupled_mode": str(decoupled).lower(),
        "bls_instance_count": str(bls_count),
        "logits_datatype": "TYPE_FP32",
        "accumulate_tokens": "false",
        "tensorrt_llm_model_name": "tensorrt_llm",
        # decode streamed text in the BLS itself, not by a postprocessing round trip
        "tokenizer_dir": model,
        "skip_special_tokens": "true",
    }
    if draft_name:
        bls["tensorrt_llm_draft_model_name"] = draft_name
    return {
        "preprocessing": {
            **common,
            "tokenizer_dir": model,
            "engine_dir": model,
            "add_special_tokens": "true",
            "preprocessing_instance_count": str(pre),
        },
        "postprocessing": {
            **common,
            "tokenizer_dir": model,
            "skip_special_tokens": "true",
            "postprocessing_instance_count": str(post),
        },
        "tensorrt_llm": trtllm,
        "tensorrt_llm_bls": bls,
        "ensemble": {**common, "logits_datatype": "TYPE_FP32"},
    }


def fill_repository(
    out: Path,
    model_dir: Path = DEFAULT_MODEL,
    *,
    draft_dir: Path | None = None,
    decoupled: bool = True,
    max_batch_size: int = 8,
    instances: int | None = None,
    force: bool = False,
    extra: dict[str, dict[str, str]] | None = None,
    engine_process: bool = False,
    python_execution_mode: str = "stub",
    max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS,
) -> Path:
    """Copy the templates to out and fill them; returns out. extra: more placeholder
    values per model folder (e.g. the tensorrt_llm LoRA cache parameters). engine_process:
    the tensorrt_llm models run their executors in engine processes of their own.
    python_execution_mode: in_process keeps the Python models (pre/postprocessing, BLS) on
    the server's threads instead of stub processes (PYTHON_EXECUTION_MODE)."""
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face checkpoint (config.json) in {model_dir}")
    if out.exists():
        if not force:
            raise FileExistsError(f"{out} exists; pass --force to replace it")
        shutil.rmtree(out)
    shutil.copytree(TEMPLATES, out, ignore=shutil.ignore_patterns("__pycache__"))
    draft_name = "tensorrt_llm_draft" if draft_dir is not None else None
    values = model_values(
        model_dir,
        decoupled=decoupled,
        max_batch_size=max_batch_size,
        instances=instances,
        draft_name=draft_name,
        max_num_tokens=max_num_tokens,
    )
    if draft_dir is not None:
        shutil.copytree(out / "tensorrt_llm", out / draft_name)
        draft_config = out / draft_name / "config.pbtxt"
        text = draft_config.read_text().replace('name: "tensorrt_llm"', f'name: "{draft_name}"')
        draft_config.write_text(text)
        draft_values = model_values(draft_dir, decoupled=decoupled, max_batch_size=max_batch_size)
        fill_file(draft_config, draft_values["tensorrt_llm"])
    for name, more in (extra or {}).items():
        values[name] = {**values[name], **more}
    for name, model_vals in values.items():
        fill_file(out / name / "config.pbtxt", model_vals)
    if engine_process:
        for name in ("tensorrt_llm", draft_name):
            if name is not None:
                with (out / name / "config.pbtxt").open("a") as f:
                    f.write('parameters: { key: "engine_process" value: { string_value: "true" } }\n')
    if python_execution_mode != "stub":
        for name in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
            with (out / name / "config.pbtxt").open("a") as f:
                f.write('parameters: { key: "PYTHON_EXECUTION_MODE" value: { string_value: '
                        f'"{python_execution_mode}" }} }}\n')
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="HF checkpoint folder")
    parser.add_argument(
        "--draft", type=Path, default=None,
        help="draft checkpoint for speculative decoding (default: models/demo-draft if present)",
    )
    parser.add_argument("--no-draft", action="store_true", help="do not add a draft model")
    parser.add_argument("--decoupled", choices=["true", "false"], default="true")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--instances", type=int, default=None,
                        help="pre/post/BLS instance count (default: 1 up to 4 CPUs, else 5; "
                             "the max batch size for a BLS that is not decoupled)")
    parser.add_argument("--engine-process", choices=["true", "false"], default="true",
                        help="run each tensorrt_llm executor in an engine process of its own "
                             "(default true: 1.4x streamed tokens/s at 32 streams, "
                             "docs/BENCHMARKS.md)")
    parser.add_argument("--python-execution-mode", choices=["stub", "in_process"],
                        default="stub",
                        help="where the Python models run: a stub process per instance "
                             "(default, Triton's; level or faster at 16 streams) or the "
                             "server's threads (faster for a single stream on 2 cores; "
                             "docs/BENCHMARKS.md)")
    parser.add_argument("--max-num-tokens", type=int, default=DEFAULT_MAX_NUM_TOKENS,
                        help="tokens per engine step, prompt chunks included (tensorrt_llm's "
                             "engine_max_num_tokens; default %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    draft = args.draft
    if draft is None and not args.no_draft and (DEFAULT_DRAFT / "config.json").is_file():
        draft = DEFAULT_DRAFT
    if args.no_draft:
        draft = None
    try:
        out = fill_repository(
            args.out,
            args.model,
            draft_dir=draft,
            decoupled=args.decoupled == "true",
            max_batch_size=args.max_batch_size,
            engine_process=args.engine_process == "true",
            python_execution_mode=args.python_execution_mode,
            instances=args.instances,
            max_num_tokens=args.max_num_tokens,
            force=args.force,
        )
    except (FileNotFoundError, FileExistsError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"filled model repository: {out}\nserve it with: llmserve serve --model-repository {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
