"""Build the ~80M-parameter random Llama checkpoint the benchmarks run on.

12 layers, hidden 768, 12 heads / 4 KV heads, MLP 2048, vocab 4096, tied embeddings
(78.6M parameters, float32, 314 MB; --dtype bfloat16 stores the same weights rounded,
157 MB), with the demo model's tokenizer (or the tests' tiny BPE tokenizer when the demo
model is absent). Weights are random (seeded) and are written outside the repository
(default build/bench/random-llama-80m), never committed.

    .venv/bin/python scripts/make_random_llama.py [--out DIR] [--seed 0] [--dtype float32]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "models" / "demo-llm"
DEFAULT_OUT = ROOT / "build" / "bench" / "random-llama-80m"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")

log = logging.getLogger("make_random_llama")


def build(out: Path, *, seed: int = 0, num_layers: int = 12, hidden: int = 768,
          heads: int = 12, kv_heads: int = 4, intermediate: int = 2048,
          vocab_size: int = 4096, max_positions: int = 1024, dtype: str = "float32") -> Path:
    """Write a random LlamaForCausalLM checkpoint plus tokenizer into out; returns out."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    bos, eos, pad = _copy_tokenizer(out)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=num_layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=pad, torch_dtype=dtype,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad).save_pretrained(
        str(out))
    params = sum(p.numel() for p in model.parameters())
    size = params * model.dtype.itemsize // 10**6
    log.info("wrote %s: %.1fM parameters (%d MB %s)", out, params / 1e6, size, dtype)
    return out


def _copy_tokenizer(out: Path) -> tuple[int, int, int]:
    """Copy the demo tokenizer (vocab 4096) or build the tests' one; returns bos/eos/pad."""
    if (DEMO_DIR / "tokenizer.json").is_file():
        for name in TOKENIZER_FILES:
            if (DEMO_DIR / name).is_file():
                shutil.copy(DEMO_DIR / name, out / name)
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from llm_fixtures import build_tokenizer

        tok = build_tokenizer(out, vocab_size=300)
    return tok.bos_token_id, tok.eos_token_id, tok.pad_token_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-positions", type=int, default=1024)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.out, seed=args.seed, max_positions=args.max_positions, dtype=args.dtype)


if __name__ == "__main__":
    main()
