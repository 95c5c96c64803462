"""Shared test helpers: tiny random Hugging Face checkpoints (Llama, Mistral, Qwen2)
built with transformers' own model classes, and a tiny local BPE tokenizer with
bos/eos/pad tokens and a chat template. Import with `from llm_fixtures import ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FAMILIES = ("llama", "mistral", "qwen2")

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! This is a tiny tokenizer for tests.",
    "Once upon a time there was a little model that could write stories.",
    "The server answers requests over HTTP and gRPC.",
    "Paged attention keeps keys and values in fixed-size blocks.",
    "user assistant system: what is the weather like today? It is sunny.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) [ ] { }",
]

DEFAULT_VOCAB_SIZE = 320  # model vocab; the tokenizer uses at most 300 of it


def build_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences (any text encodes), as a
    PreTrainedTokenizerFast with pad=0, bos=1, eos=2, unk=3 and CHAT_TEMPLATE; saved
    into out_dir (tokenizer.json, tokenizer_config.json, ...) when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN_TEXT, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
    )
    fast.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def tiny_hf_config(
    family: str = "llama",
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = False,
    rope_scaling: dict[str, Any] | None = None,
    **overrides: Any,
):
    """A transformers config for a tiny model of the family ("llama", "mistral",
    "qwen2"). rope_scaling e.g. {"rope_type": "llama3", "factor": 8.0, ...}."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    if family not in classes:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        # Wider than the default 0.02 so logits are spread out and greedy picks are
        # far from ties (comparisons with transformers stay stable).
        initializer_range=0.1,
    )
    if family == "mistral":
        kwargs["sliding_window"] = None
    if rope_scaling is not None:
        theta = overrides.pop("rope_theta", 10000.0)
        kwargs["rope_parameters"] = {"rope_theta": theta, **rope_scaling}
    kwargs.update(overrides)
    return classes[family](**kwargs)


def make_tiny_checkpoint(
    out_dir: str | Path,
    family: str = "llama",
    *,
    dtype: str = "float32",
    seed: int = 0,
    max_shard_size: str | int | None = None,
    with_tokenizer: bool = True,
    **config_kwargs: Any,
) -> Path:
    """Builds a random tiny model with transformers' class for the family and saves it
    with save_pretrained(safe_serialization=True) into out_dir (created), optionally
    sharded (max_shard_size, e.g. "100KB"), in dtype "float32" / "bfloat16" /
    "float16", plus the tiny tokenizer. Returns out_dir."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_hf_config(family, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    with torch.no_grad():
        # transformers zero-initialises biases; random ones make bias handling testable.
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.1)
    torch_dtype = getattr(torch, dtype)
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
    )
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(str(out), **kwargs)
    if with_tokenizer:
        build_tokenizer(out)
    return out


def load_hf_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """The transformers reference model for a checkpoint folder, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.eval()
    return model


def hf_logits(model, token_ids: list[int]) -> torch.Tensor:
    """transformers' float32 logits [len(token_ids), vocab] for one sequence."""
    with torch.inference_mode():
        out = model(torch.tensor([token_ids]))
    return out.logits[0].float()


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers generate(do_sample=False) new tokens for one prompt, no early stop."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=PAD_ID,
        )
    return out[0, len(prompt) :].tolist()
