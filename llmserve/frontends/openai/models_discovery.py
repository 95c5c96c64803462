"""Which repository models are text-generation models (inputs text_input + max_tokens,
output text_output), what they declare, and their tokenizer and context length, found
from the tokenizer_dir parameter of the model or of a model it calls."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.booleans import bool_word
from llmserve.core.datatypes import config_to_api
from llmserve.core.errors import ServerError
from llmserve.frontends.openai.errors import bad_request, model_not_found

logger = logging.getLogger(__name__)

REQUIRED_INPUTS = ("text_input", "max_tokens")
REQUIRED_OUTPUT = "text_output"
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    datatype: str  # API name: INT32, BYTES, ...
    dims: tuple[int, ...]  # without the batch dim
    batched: bool


@dataclass(slots=True)
class TextModel:
    name: str
    inputs: dict[str, InputSpec]
    outputs: set[str]
    decoupled: bool
    accumulate: bool  # every streamed text is the whole text so far (BLS accumulate_tokens)
    tokenizer_dir: Path | None
    add_special_tokens: bool = True
    max_model_len: int | None = None

    def has_input(self, name: str) -> bool:
        return name in self.inputs


def _param(config: Any, key: str) -> str | None:
    """A model config parameter; an unfilled `${...}` template placeholder means unset."""
    if key not in config.parameters:
        return None
    value = config.parameters[key].string_value.strip()
    if not value or (value.startswith("${") and value.endswith("}")):
        return None
    return value


def _bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return bool_word(value) is True


def _context_length(dirs: list[Path]) -> int | None:
    for d in dirs:
        path = d / "config.json"
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for scope in (doc, doc.get("text_config") or {}, doc.get("build_config") or {}):
            for key in (*_CONTEXT_KEYS, "max_seq_len"):
                if isinstance(scope.get(key), int) and scope[key] > 0:
                    return int(scope[key])
    return None


class ModelCatalog:
    """Looks up text-generation models on an InferenceServer; results are cached per
    loaded config object, tokenizers per folder."""

    def __init__(self, server: Any):
        self.server = server
        self._cache: dict[str, tuple[Any, TextModel | None]] = {}
        self._tokenizers: dict[Path, Any] = {}
        self._lock = threading.Lock()

    # -- listing and lookup ------------------------------------------------------------
    def text_models(self) -> list[TextModel]:
        names = sorted({row["name"] for row in self.server.repository_index(ready_only=True)})
        found = []
        for name in names:
            try:
                model = self.describe(name)
            except ServerError:
                continue
            if model is not None:
                found.append(model)
        return found

    def resolve(self, name: str) -> TextModel:
        """The text model `name`: 404 when not served, 400 when not a text model."""
        try:
            model = self.describe(name)
        except ServerError:
            raise model_not_found(name) from None
        if model is None:
            raise bad_request(
                f"model '{name}' is not a text-generation model (it needs inputs "
                "text_input and max_tokens and output text_output)", param="model")
        return model

    def describe(self, name: str) -> TextModel | None:
        config = self.server.model_config(name)
        cached = self._cache.get(name)
        if cached is not None and cached[0] is config:
            return cached[1]
        model = self._build(name, config)
        self._cache[name] = (config, model)
        return model

    def _build(self, name: str, config: Any) -> TextModel | None:
        batched = config.max_batch_size > 0
        inputs = {
            t.name: InputSpec(t.name, config_to_api(mc.DataType.Name(t.data_type)),
                              tuple(int(d) for d in t.dims), batched)
            for t in config.input
        }
        outputs = {t.name for t in config.output}
        if not all(i in inputs for i in REQUIRED_INPUTS) or REQUIRED_OUTPUT not in outputs:
            return None
        source = self._tokenizer_source(name, config)
        tokenizer_dir = Path(_param(source, "tokenizer_dir")) if source is not None else None
        dirs = [tokenizer_dir] if tokenizer_dir else []
        for cfg in (config, source, *self._callees(config)):
            for key in ("engine_dir", "gpt_model_path"):
                value = _param(cfg, key) if cfg is not None else None
                if value:
                    dirs.append(Path(value))
        model = TextModel(
            name=name,
            inputs=inputs,
            outputs=outputs,
            decoupled=self._streams(name, config),
            accumulate=_bool(_param(config, "accumulate_tokens"), False),
            tokenizer_dir=tokenizer_dir,
            add_special_tokens=_bool(
                _param(source, "add_special_tokens") if source is not None else None, True),
            max_model_len=_context_length(dirs),
        )
        if tokenizer_dir is None:
            logger.warning("OpenAI API: no tokenizer_dir found for text model '%s'; chat, "
                           "token counts and logprobs are unavailable for it", name)
        return model

    def _streams(self, name: str, config: Any) -> bool:
        """Decoupled, or an ensemble with a decoupled step (it streams through)."""
        names = [name] + [s.model_name for s in config.ensemble_scheduling.step]
        for model in names:
            try:
                if self.server.is_decoupled(model):
                    return True
            except ServerError:
                continue
        return False

    def _callees(self, config: Any) -> list[Any]:
        """Configs of the models this one calls: ensemble steps, `*_model_name`
        parameters (tensorrt_llm_bls) and a `preprocessing` model."""
        names: list[str] = [s.model_name for s in config.ensemble_scheduling.step]
        for key in config.parameters:
            if key.endswith("_model_name"):
                value = _param(config, key)
                if value:
                    names.append(value)
        if not config.ensemble_scheduling.step:
            names.append("preprocessing")
        out = []
        for callee in dict.fromkeys(names):
            if callee == config.name:
                continue
            try:
                out.append(self.server.model_config(callee))
            except ServerError:
                continue
        return out

    def _tokenizer_source(self, name: str, config: Any) -> Any | None:
        if _param(config, "tokenizer_dir"):
            return config
        callees = self._callees(config)
        # the preprocessing step first: it holds add_special_tokens as well
        callees.sort(key=lambda c: "INPUT_ID" not in {t.name for t in c.output})
        for callee in callees:
            if _param(callee, "tokenizer_dir"):
                return callee
        return None

    # -- tokenizers --------------------------------------------------------------------
    def tokenizer(self, model: TextModel) -> Any:
        """The model's tokenizer (AutoTokenizer, local files only); 400 when it has none."""
        if model.tokenizer_dir is None:
            raise bad_request(f"model '{model.name}' has no tokenizer (tokenizer_dir "
                              "parameter) to serve this request", param="model")
        path = model.tokenizer_dir
        with self._lock:
            tok = self._tokenizers.get(path)
            if tok is None:
                from llmserve.backends.hf_imports import prewarm_transformers

                prewarm_transformers()
                from transformers import AutoTokenizer

                try:
                    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                except (OSError, ValueError) as exc:
                    raise bad_request(f"cannot load the tokenizer of model '{model.name}' "
                                      f"from {path}: {exc}", param="model") from None
                self._tokenizers[path] = tok
        return tok
