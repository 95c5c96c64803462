"""tensorrt_llm.llmapi.tokenizer: the tokenizer information guided decoding is configured
with (llmserve accepts that configuration and warns that guided decoding is not supported).
"""

from __future__ import annotations

from typing import Any


def _xgrammar_tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """encoded_vocab (tokens in id order), tokenizer_str (a fast tokenizer's JSON) and
    stop_token_ids of a transformers tokenizer, as TensorRT-LLM's helper returns them."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a TokenizerBase wrapper
    try:
        vocab = tokenizer.get_vocab()
    except AttributeError as exc:
        raise ValueError(f"Cannot get the vocabulary of the tokenizer {type(tokenizer)}. "
                         "The tokenizer should have a get_vocab method.") from exc
    info: dict[str, Any] = {
        "encoded_vocab": [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])],
        "stop_token_ids": [tokenizer.eos_token_id],
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"Unsupported tokenizer type: {type(tokenizer)}; only fast "
                         "(tokenizer.json) tokenizers are supported")
    info["tokenizer_str"] = backend.to_str()
    return info
