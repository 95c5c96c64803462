"""Model card (README.md) and training summary written beside each demo checkpoint.

Generates sample completions and a chat reply with transformers so the card shows what
the saved weights actually produce.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

COMPLETION_PROMPTS = (
    "It was a fine morning, and",
    "Elizabeth could not help",
    "\"My dear,\" said his lady to him one day,",
)
CHAT_PROMPT = [{"role": "user", "content": "Will you walk with me in the garden this morning?"}]


@torch.no_grad()
def generate_samples(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast,
                     max_new_tokens: int = 60) -> dict[str, str]:
    """prompt -> generated text (temperature 0.7, top_p 0.95, seed 0; one greedy)."""
    samples: dict[str, str] = {}
    torch.manual_seed(0)
    for prompt in COMPLETION_PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, do_sample=True, temperature=0.7, top_p=0.95,
                             max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        samples[prompt] = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    ids = tok(COMPLETION_PROMPTS[0], return_tensors="pt").input_ids
    out = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=tok.pad_token_id)
    samples[f"(greedy) {COMPLETION_PROMPTS[0]}"] = tok.decode(
        out[0, ids.shape[1]:], skip_special_tokens=True)
    chat_ids = tok.apply_chat_template(CHAT_PROMPT, add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(chat_ids, do_sample=True, temperature=0.7, top_p=0.95,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    samples[f"(chat) user: {CHAT_PROMPT[0]['content']}"] = tok.decode(
        out[0, chat_ids.shape[1]:], skip_special_tokens=True)
    return samples


def write_model_card(args: argparse.Namespace, model: LlamaForCausalLM,
                     tok: PreTrainedTokenizerFast, stats: dict, corpus_package: str) -> None:
    out: Path = args.out
    samples = generate_samples(model, tok)
    stats = {**stats, "samples": samples}
    (out / "training_summary.json").write_text(json.dumps(stats, indent=1) + "\n")
    cfg = model.config
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    command = "python scripts/train_demo_model.py " + shlex.join(sys.argv[1:])
    kind = "draft model (for speculative decoding)" if args.draft else "demo model"
    how = "trained from scratch on CPU"
    if getattr(args, "init_from", None) or getattr(args, "distill_from", None):
        how = "trained on CPU"
        if getattr(args, "distill_from", None):
            how += (f", distilled from `{args.distill_from.name}` (its next-token "
                    "distributions on the corpus windows are the targets)")
    sample_md = "\n".join(f"- **{p}** ->{_quote(t)}" for p, t in samples.items())
    card = f"""# llmserve {kind}: {out.name}

A tiny LlamaForCausalLM {how} by `scripts/train_demo_model.py`
on Jane Austen's six novels. It writes English in a loose Austen style; it knows no
facts and follows no instructions beyond continuing text and replying in the chat format.

| | |
|---|---|
| architecture | LlamaForCausalLM, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads (GQA), MLP {cfg.intermediate_size}, RoPE, tied embeddings |
| parameters | {stats['params'] / 1e6:.2f}M, float32, model.safetensors {size_mb:.1f} MB |
| context | max_position_embeddings {cfg.max_position_embeddings} (trained on {args.seq_len}-token windows) |
| tokenizer | byte-level BPE, {len(tok)} tokens; `<|bos|>` {tok.bos_token_id}, `<|eos|>` {tok.eos_token_id}, `<|pad|>` {tok.pad_token_id}; roles `<|system|>` `<|user|>` `<|assistant|>` |
| chat template | `<|bos|><|role|>\\ncontent<|eos|>\\n` per turn; the generation prompt is `<|assistant|>\\n`; replies end with `<|eos|>`; tools, tool calls and `tool` results in the Hermes style (`<tool_call>` JSON `</tool_call>`, `<tool_response>`) |
| corpus | Debian package `{corpus_package}` (Jane Austen's novels: the texts are public domain; the package is MIT, (c) Julia Silge), fetched with `apt-get download {corpus_package}` |
| training | {stats['steps']} steps, {stats['tokens_seen'] / 1e6:.1f}M tokens seen ({stats['train_tokens'] / 1e6:.2f}M train tokens; {stats['text_docs']} novel chunks + {stats['chat_docs']} chat samples), {stats['minutes']:.1f} min on 2 CPU threads |
| final loss | train {stats['train_loss']:.3f}, held-out {stats['val_loss']:.3f} (nats/token) |

Trained with:

    {command}

## Samples (temperature 0.7, top_p 0.95, seed 0; 60 new tokens)

{sample_md}
"""
    (out / "README.md").write_text(card)


def _quote(text: str) -> str:
    return " `" + " ".join(text.split()).replace("`", "'") + "`"
