"""Compiling guides with xgrammar, off the engine thread, once per distinct guide.

GuideCompiler.prepare() parses a guide on the caller's thread (a malformed guide is the
caller's InvalidArgument) and returns a Future of its compiled grammar: compilation (the
token-mask tables, the expensive part) runs on a small thread pool, so a large schema
never stalls the engine loop, and its result is cached by guide text. The tokenizer's
xgrammar view (TokenizerInfo) is built on first use, from GuidedDecodingConfig's
encoded vocabulary or a Hugging Face tokenizer folder.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.llm.config import GuidedDecodingBackend, GuidedDecodingConfig
from llmserve.llm.guided.closing import Closer
from llmserve.llm.guided.grammars import guide_key, parse_guide
from llmserve.llm.guided.matcher import GuideMatcher
from llmserve.llm.request import GuidedDecodingParams

logger = logging.getLogger(__name__)

CACHE_ENTRIES = 512  # compiled grammars kept (least recently used go first)


def import_xgrammar() -> Any:
    """The xgrammar module; Unsupported (with how to get it) when it is not installed, so
    that only guided requests fail."""
    try:
        import xgrammar
    except ImportError as exc:
        raise Unsupported("guided decoding needs the xgrammar package (pip install "
                          f"xgrammar): {exc}") from None
    return xgrammar


def _blank_specials(encoded: list[str], special: set[int]) -> list[str]:
    """xgrammar reads a special token (`<|eos|>`, `<pad>`) as its literal text and would let
    a guide emit it inside a JSON string; an empty entry marks it as never text."""
    return ["" if i in special else t for i, t in enumerate(encoded)]


def _specials_of(tokenizer_str: str | None) -> set[int]:
    try:
        added = json.loads(tokenizer_str or "{}").get("added_tokens") or []
    except ValueError:
        return set()
    return {int(t["id"]) for t in added if isinstance(t, dict) and t.get("special")}


def _tokenizer_info(xgr: Any, config: GuidedDecodingConfig, model_dir: str | None,
                    vocab_size: int) -> Any:
    if config.encoded_vocab is not None:
        vocab_type, prefix_space = xgr.VocabType.RAW, False
        if config.tokenizer_str:
            meta = xgr.TokenizerInfo._detect_metadata_from_hf(config.tokenizer_str)
            vocab_type, prefix_space = meta["vocab_type"], meta["add_prefix_space"]
        encoded = _blank_specials(list(config.encoded_vocab), _specials_of(config.tokenizer_str))
        return xgr.TokenizerInfo(encoded, vocab_type, vocab_size=vocab_size,
                                 stop_token_ids=config.stop_token_ids,
                                 add_prefix_space=prefix_space)
    folder = config.tokenizer_dir or model_dir
    if folder is None:
        raise InvalidArgument("guided decoding needs the model's tokenizer: give "
                              "GuidedDecodingConfig.tokenizer_dir or encoded_vocab")
    from llmserve.backends.hf_imports import prewarm_transformers

    prewarm_transformers()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"guided decoding cannot load a tokenizer from {folder}: "
                              f"{exc}") from None
    stops = None if config.stop_token_ids is None else list(config.stop_token_ids)
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab_size, stop_token_ids=stops)
    special = set(tok.all_special_ids) | {
        i for i, t in tok.added_tokens_decoder.items() if getattr(t, "special", False)}
    if special <= set(info.special_token_ids):
        return info
    by_id = {i: t for t, i in tok.get_vocab().items()}
    encoded = [by_id.get(i, "") for i in range(max(by_id) + 1)]
    return xgr.TokenizerInfo(_blank_specials(encoded, special), info.vocab_type,
                             vocab_size=vocab_size, stop_token_ids=info.stop_token_ids,
                             add_prefix_space=info.add_prefix_space)


class GuideCompiler:
    """One per executor: its tokenizer view, compile pool and grammar cache."""

    def __init__(self, config: GuidedDecodingConfig | None, model_dir: str | Path | None,
                 vocab_size: int) -> None:
        self.config = config or GuidedDecodingConfig()
        if self.config.backend is not GuidedDecodingBackend.XGRAMMAR:
            raise Unsupported(f"guided decoding backend {self.config.backend} is not supported")
        self.model_dir = None if model_dir is None else str(model_dir)
        self.vocab_size = vocab_size
        self.any_whitespace = bool(self.config.json_any_whitespace)
        self._lock = threading.Lock()
        self._info: Any = None
        self._compiler: Any = None
        self._closer: Closer | None = None
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self.num_compiled = 0

    def warm_up(self) -> None:
        """Build the tokenizer view now (at load, when guided decoding is configured), so
        that a broken configuration fails the load rather than the first request."""
        self._grammar_compiler()

    def _grammar_compiler(self) -> Any:
        with self._lock:
            if self._compiler is None:
                xgr = import_xgrammar()
                self._info = _tokenizer_info(xgr, self.config, self.model_dir, self.vocab_size)
                # xgrammar's own threads split one compilation; a couple are plenty and
                # leave the cores to the engine
                threads = max(1, min(4, (os.cpu_count() or 2) // 2))
                self._compiler = xgr.GrammarCompiler(self._info, max_threads=threads,
                                                     cache_enabled=False)
                self._closer = Closer(self._info.decoded_vocab,
                                      set(self._info.special_token_ids))
            return self._compiler

    def prepare(self, params: GuidedDecodingParams) -> Future:
        """Future of the compiled grammar (xgrammar CompiledGrammar). Raises
        InvalidArgument for a malformed guide, Unsupported without xgrammar."""
        key = guide_key(params, self.any_whitespace)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        xgr = import_xgrammar()
        self._grammar_compiler()  # the tokenizer view: its errors are this caller's
        grammar = parse_guide(xgr, params, any_whitespace=self.any_whitespace)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:  # another caller got there first
                return cached
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="guides")
            future = self._pool.submit(self._compile, grammar)
            self._cache[key] = future
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        future.add_done_callback(lambda f: self._forget_failure(key, f))
        return future

    def matcher(self, compiled: Any, end_id: int | None, budget: int) -> GuideMatcher:
        """A fresh GuideMatcher for a sequence of a request: the grammar ends on the
        request's end id (the tokenizer's stop tokens when it has none), within budget
        tokens (its max_tokens). Runs on the engine thread; cheap."""
        xgr = import_xgrammar()
        self._grammar_compiler()
        stops = [int(end_id)] if end_id is not None else list(self._info.stop_token_ids)
        m = xgr.GrammarMatcher(compiled, override_stop_tokens=stops or None)
        return GuideMatcher(m, frozenset(int(t) for t in m.stop_token_ids), budget,
                            self._closer)

    def _compile(self, grammar: Any) -> Any:
        compiled = self._grammar_compiler().compile_grammar(grammar)
        self.num_compiled += 1
        return compiled

    def _forget_failure(self, key: tuple, future: Future) -> None:
        if future.exception() is not None:
            with self._lock:
                if self._cache.get(key) is future:
                    del self._cache[key]

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
