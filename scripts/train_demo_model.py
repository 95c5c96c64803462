"""Train the bundled demo model (models/demo-llm) or its draft (models/demo-draft) on CPU.

A small LlamaForCausalLM on Jane Austen's novels (Debian's r-cran-janeaustenr), with a
byte-level BPE tokenizer and chat template; stops on a wall-clock budget (--minutes).

    python scripts/train_demo_model.py --minutes 35
    python scripts/train_demo_model.py --draft --minutes 10
    python scripts/train_demo_model.py --draft --minutes 12 \
        --init-from models/demo-draft --distill-from models/demo-llm

--distill-from trains on the teacher's next-token distributions (KL divergence, the
teacher run without gradients on the same windows) instead of the corpus's next
tokens: a draft that predicts what the target model will say, not what Austen wrote,
gets more of its speculative drafts accepted. --init-from starts from a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from demo_corpus import DEBIAN_PACKAGE, load_books, paragraphs
from demo_dataset import Streams, build_streams, sample_windows
from demo_model_card import write_model_card
from demo_tokenizer import load_tokenizer, train_tokenizer
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger("train_demo_model")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(slots=True)
class Shape:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int


MAIN_SHAPE = Shape(256, 6, 4, 2, 688)
DRAFT_SHAPE = Shape(128, 2, 4, 2, 344)


@dataclass(slots=True)
class RunStats:
    steps: int = 0
    tokens_seen: int = 0
    minutes: float = 0.0
    train_loss: float = float("nan")
    val_loss: float = float("nan")
    train_tokens: int = 0
    val_tokens: int = 0
    text_docs: int = 0
    chat_docs: int = 0
    params: int = 0
    history: list[tuple[int, float, float]] | None = None  # (step, train, val)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--draft", action="store_true", help="train the small draft model")
    p.add_argument("--out", type=Path, help="output folder (default models/demo-llm|demo-draft)")
    p.add_argument("--minutes", type=float, help="wall-clock training budget (35, or 10 for --draft)")
    p.add_argument("--tokenizer", type=Path,
                   help="reuse this tokenizer (default for --draft: models/demo-llm)")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/llmserve-demo-corpus")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, help="peak learning rate (2e-3, or 3e-3 for --draft)")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every-minutes", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--distill-from", type=Path,
                   help="teacher checkpoint: train on its next-token distributions")
    p.add_argument("--init-from", type=Path, help="start from this checkpoint's weights")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()
    args.out = args.out or ROOT / "models" / ("demo-draft" if args.draft else "demo-llm")
    args.minutes = args.minutes if args.minutes is not None else (10.0 if args.draft else 35.0)
    args.lr = args.lr if args.lr is not None else (3e-3 if args.draft else 2e-3)
    if args.draft and args.tokenizer is None:
        args.tokenizer = ROOT / "models" / "demo-llm"
    return args


def build_model(shape: Shape, tok: PreTrainedTokenizerFast, seq_len_max: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=seq_len_max,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **asdict(shape),
    )
    model = LlamaForCausalLM(config)
    return model.float()


def lr_at(step: int, elapsed_frac: float, args: argparse.Namespace) -> float:
    """Linear warmup by steps, then cosine decay to 10% over the wall-clock budget."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    frac = min(1.0, elapsed_frac)
    return args.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, streams: Streams, seq_len: int, batches: int = 8) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(batches):
        w = sample_windows(streams.val, 16, seq_len, gen)
        losses.append(shifted_loss(model, w).item())
    model.train()
    return sum(losses) / len(losses)


def shifted_loss(model: LlamaForCausalLM, window: torch.Tensor,
                 teacher: LlamaForCausalLM | None = None) -> torch.Tensor:
    """Next-token cross entropy; with a teacher, against the teacher's distributions
    (equal to KL(teacher || model) up to the teacher's entropy)."""
    logits = model(input_ids=window[:, :-1]).logits
    logits = logits.reshape(-1, logits.size(-1))
    if teacher is None:
        return torch.nn.functional.cross_entropy(logits, window[:, 1:].reshape(-1))
    with torch.no_grad():
        target = teacher(input_ids=window[:, :-1]).logits
        target = torch.softmax(target.reshape(-1, target.size(-1)), dim=-1)
    return torch.nn.functional.cross_entropy(logits, target)


def save(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "model.safetensors").chmod(0o644)  # transformers writes it owner-only
    # Older transformers and standalone loaders read these top-level keys.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("rope_theta", cfg.get("rope_parameters", {}).get("rope_theta", 10000.0))
    cfg.setdefault("torch_dtype", "float32")
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, do_sample=True, temperature=0.7, top_p=0.95,
        max_new_tokens=128,
    ).save_pretrained(out)
    save_tokenizer(tok, out)


def save_tokenizer(tok: PreTrainedTokenizerFast, out: Path) -> None:
    """save_pretrained, plus the fields older transformers and other readers look for."""
    tok.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = tok.chat_template
    cfg["add_bos_token"] = True
    cfg["add_eos_token"] = False
    cfg["additional_special_tokens"] = list(cfg.pop("extra_special_tokens", []))
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    special = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token")}
    special["additional_special_tokens"] = cfg["additional_special_tokens"]
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    books = load_books(args.cache_dir)
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        tok = train_tokenizer((p for b in books for p in paragraphs(b)), args.vocab_size)
    streams = build_streams(books, tok, seed=args.seed, val_fraction=0.02)
    if args.init_from:
        model = LlamaForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
    else:
        model = build_model(DRAFT_SHAPE if args.draft else MAIN_SHAPE, tok, 512)
    teacher = None
    if args.distill_from:
        teacher = LlamaForCausalLM.from_pretrained(args.distill_from, dtype=torch.float32)
        teacher.eval()
        if teacher.config.vocab_size != model.config.vocab_size:
            raise SystemExit("--distill-from: the teacher's vocabulary differs")
    stats = RunStats(train_tokens=streams.train.numel(), val_tokens=streams.val.numel(),
                     text_docs=streams.text_docs, chat_docs=streams.chat_docs,
                     params=sum(p.numel() for p in model.parameters()), history=[])
    log.info("params %.2fM, train tokens %d, val tokens %d, docs %d text + %d chat",
             stats.params / 1e6, stats.train_tokens, stats.val_tokens,
             stats.text_docs, stats.chat_docs)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60.0
    start = last_save = time.monotonic()
    ema = None
    model.train()
    while (elapsed := time.monotonic() - start) < budget:
        for group in opt.param_groups:
            group["lr"] = lr_at(stats.steps, elapsed / budget, args)
        for _ in range(args.grad_accum):
            window = sample_windows(streams.train, args.batch_size, args.seq_len, gen)
            loss = shifted_loss(model, window, teacher)
            (loss / args.grad_accum).backward()
            stats.tokens_seen += window[:, 1:].numel()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        stats.steps += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if stats.steps % args.eval_every == 0:
            val = evaluate(model, streams, args.seq_len)
            stats.history.append((stats.steps, round(ema, 4), round(val, 4)))
            log.info("step %d  %.1f min  lr %.2e  train %.3f  val %.3f  tok/s %.0f",
                     stats.steps, elapsed / 60, opt.param_groups[0]["lr"], ema, val,
                     stats.tokens_seen / max(elapsed, 1e-6))
        if time.monotonic() - last_save > args.save_every_minutes * 60:
            save(model, tok, args.out)
            last_save = time.monotonic()
    stats.minutes = (time.monotonic() - start) / 60
    stats.train_loss = ema if ema is not None else float("nan")
    stats.val_loss = evaluate(model, streams, args.seq_len, batches=16)
    log.info("done: %d steps, %.1f min, train %.3f, val %.3f",
             stats.steps, stats.minutes, stats.train_loss, stats.val_loss)
    model.eval()
    save(model, tok, args.out)
    write_model_card(args, model, tok, asdict(stats), corpus_package=DEBIAN_PACKAGE)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args())


if __name__ == "__main__":
    main()
