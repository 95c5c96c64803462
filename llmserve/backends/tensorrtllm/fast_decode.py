"""Token ids to text inside the BLS process, without a postprocessing round trip.

The BLS streams a chunk of text per engine response; through the postprocessing model
each chunk costs a request out of the BLS stub, through the server, into the
postprocessing stub and back (three process crossings). With its own `tokenizer_dir`
the BLS decodes in-process with the `tokenizers` library: about 10 MB per stub, where
transformers' AutoTokenizer costs about 300 MB (it imports torch), too much for one
stub per concurrent stream.

The text is the same as the postprocessing model's (transformers' fast tokenizer
decode) because transformers decodes a `tokenizer.json` tokenizer with the same Rust
call; the one step it adds, clean_up_tokenization_spaces, differs between transformers
versions, so a tokenizer that asks for it is not served here (load() says why and the
BLS keeps its round trips).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from llmserve.backends.tensorrtllm import text

log = logging.getLogger(__name__)


class _RustTokenizer:
    """A `tokenizers.Tokenizer` behind the encode/decode calls of transformers' fast
    tokenizer that text.py makes (clean_up_tokenization_spaces is off: load() checked)."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


class FastDecoder:
    """decode_many(id_lists, streaming) with the postprocessing model's semantics:
    skip_special_tokens as configured; a streamed delta decodes as the middle of a text
    (text.decode_continuation, as postprocessing's STREAMING input)."""

    def __init__(self, tokenizer, skip_special_tokens: bool) -> None:
        self._rust = tokenizer
        self._tokenizer = _RustTokenizer(tokenizer)
        self._skip = skip_special_tokens

    @classmethod
    def load(cls, tokenizer_dir: str | Path, skip_special_tokens: bool) -> FastDecoder | None:
        """The decoder of tokenizer_dir, or None (with the reason logged) when the
        folder has no tokenizer.json or its config asks for clean_up_tokenization_spaces."""
        folder = Path(tokenizer_dir)
        path = folder / "tokenizer.json"
        if not path.is_file():
            log.info("BLS decodes through postprocessing: %s has no tokenizer.json", folder)
            return None
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        if config.get("clean_up_tokenization_spaces"):
            log.info("BLS decodes through postprocessing: %s sets clean_up_tokenization_spaces",
                     folder)
            return None
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), skip_special_tokens)

    def decode_many(self, id_lists: Sequence[Sequence[int]], streaming: bool = False) -> list[str]:
        if not streaming:
            return self._rust.decode_batch([list(ids) for ids in id_lists],
                                           skip_special_tokens=self._skip)
        return [text.decode_continuation(self._tokenizer, ids, self._skip) for ids in id_lists]
