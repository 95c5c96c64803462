"""Byte-level BPE tokenizer and chat template of the bundled demo model.

Trains a `tokenizers` BPE on the corpus and wraps it as a transformers
PreTrainedTokenizerFast whose files (tokenizer.json, tokenizer_config.json with the
chat template, special_tokens_map.json) are saved beside each checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS]

# Every turn ends with the eos token, so a server that stops on eos_token_id alone ends
# an assistant reply correctly; add_generation_prompt opens the assistant turn. Tools
# (Hermes style, as Qwen's template): their signatures go into a system turn, assistant
# tool calls (content may be null) are <tool_call> JSON </tool_call>, and `tool` results
# come back in a user turn as <tool_response>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|system|>\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ (messages[0]['content'] or '') | trim + '\\n\\n' }}{% endif %}"
    "{{ 'You may call functions. Their signatures are in <tools></tools>:\\n<tools>\\n' }}"
    "{% for tool in tools %}"
    "{{ (tool.function if tool.function is defined else tool) | tojson + '\\n' }}"
    "{% endfor %}"
    "{{ '</tools>\\nTo call one, answer with <tool_call>\\n{\"name\": <name>, \"arguments\": "
    "<arguments object>}\\n</tool_call>' + eos_token + '\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% if message['role'] == 'system' and tools and loop.first %}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|user|>\\n<tool_response>\\n' + (message['content'] or '') | trim + "
    "'\\n</tool_response>' + eos_token + '\\n' }}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{ '<|assistant|>\\n' }}"
    "{% if message['content'] %}{{ message['content'] | trim + '\\n' }}{% endif %}"
    "{% for call in message['tool_calls'] %}"
    "{% set f = call.function if call.function is defined else call %}"
    "{{ '<tool_call>\\n{\"name\": ' + f.name | tojson + ', \"arguments\": ' + "
    "(f.arguments if f.arguments is string else f.arguments | tojson) + '}\\n</tool_call>' }}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{{ eos_token + '\\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\\n' + (message['content'] or '') | trim + eos_token + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on texts, with BOS prepended to encoded sequences."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        ),
    ])
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers face of a trained tokenizer, chat template included."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by save_pretrained (e.g. the main model's, for the draft)."""
    return PreTrainedTokenizerFast.from_pretrained(str(path))
