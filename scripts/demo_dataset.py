"""Token streams the demo model trains on: novel passages plus chat-formatted samples.

Documents are book chunks (BOS + paragraphs, EOS at the end of a book) and chat
conversations rendered with the tokenizer's own chat template, shuffled and packed
into one stream from which fixed-length windows are drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from demo_corpus import Book, dialogue_pairs, paragraphs
from transformers import PreTrainedTokenizerFast

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a character in a novel by Jane Austen.",
    "Answer politely and briefly.",
)
STORY_REQUESTS = (
    "Tell me a story.",
    "Write a paragraph of a novel.",
    "Describe a scene from a novel.",
    "Tell me what happened next.",
)
PARAS_PER_CHUNK = 12


@dataclass(slots=True)
class Streams:
    train: torch.Tensor      # 1-D int64 token stream
    val: torch.Tensor
    text_docs: int
    chat_docs: int


def _conversations(paras: list[str], rng: random.Random) -> list[list[dict[str, str]]]:
    """Runs of consecutive spoken paragraphs become alternating user/assistant turns."""
    convs: list[list[dict[str, str]]] = []
    run: list[str] = []
    for said, reply in [*dialogue_pairs(paras), ("", "")]:
        if run and run[-1] == said and said:
            run.append(reply)
            continue
        if len(run) >= 2:
            usable = run[: len(run) // 2 * 2][:6]
            turns = [
                {"role": "user" if i % 2 == 0 else "assistant", "content": text}
                for i, text in enumerate(usable)
            ]
            if rng.random() < 0.5:
                turns.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            convs.append(turns)
        run = [said, reply] if said else []
    return convs


def _story_requests(paras: list[str], rng: random.Random) -> list[list[dict[str, str]]]:
    narrative = [p for p in paras if not p.startswith('"') and 150 <= len(p) <= 900]
    picked = rng.sample(narrative, k=min(len(narrative), len(narrative) // 3))
    return [
        [{"role": "user", "content": rng.choice(STORY_REQUESTS)},
         {"role": "assistant", "content": p}]
        for p in picked
    ]


def build_streams(
    books: list[Book], tokenizer: PreTrainedTokenizerFast, *, seed: int, val_fraction: float
) -> Streams:
    """Tokenize every document, hold out val_fraction of them, pack the rest."""
    rng = random.Random(seed)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    text_docs: list[list[int]] = []
    chat_docs: list[list[int]] = []
    for book in books:
        paras = paragraphs(book)
        for start in range(0, len(paras), PARAS_PER_CHUNK):
            text = "\n\n".join(paras[start : start + PARAS_PER_CHUNK])
            ids = [bos, *tokenizer(text, add_special_tokens=False).input_ids]
            if start + PARAS_PER_CHUNK >= len(paras):
                ids.append(eos)
            text_docs.append(ids)
        for conv in _conversations(paras, rng) + _story_requests(paras, rng):
            rendered = tokenizer.apply_chat_template(conv, tokenize=False)
            chat_docs.append(tokenizer(rendered, add_special_tokens=False).input_ids)
    docs = text_docs + chat_docs
    rng.shuffle(docs)
    n_val = max(1, int(len(docs) * val_fraction))
    flat = lambda ds: torch.tensor([t for d in ds for t in d], dtype=torch.long)  # noqa: E731
    return Streams(flat(docs[n_val:]), flat(docs[:n_val]), len(text_docs), len(chat_docs))


def sample_windows(
    stream: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator
) -> torch.Tensor:
    """batch random windows of seq_len + 1 tokens (inputs and shifted labels)."""
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=gen)
    return torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])
