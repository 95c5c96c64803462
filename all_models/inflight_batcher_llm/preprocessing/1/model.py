"""preprocessing: text to token ids for the tensorrt_llm model.

QUERY -> INPUT_ID / REQUEST_INPUT_LEN with the tokenizer of tokenizer_dir (local files
only); BAD_WORDS_DICT / STOP_WORDS_DICT (one word per element) -> [batch, 2, L] ids/offsets;
EMBEDDING_BIAS_WORDS/WEIGHTS -> a vocab-sized bias; OUT_END_ID / OUT_PAD_ID from the
tokenizer unless END_ID / PAD_ID are given; REQUEST_OUTPUT_LEN passes through.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from llmserve.backends.tensorrtllm import text
from llmserve.backends.tensorrtllm.parameters import is_unset, parse_bool


def _param(config: dict, name: str):
    value = config.get("parameters", {}).get(name, {}).get("string_value")
    return None if is_unset(value) else value.strip()


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        tokenizer_dir = _param(config, "tokenizer_dir")
        if tokenizer_dir is None:
            raise pb_utils.TritonModelException("parameter 'tokenizer_dir' must be set")
        special = _param(config, "add_special_tokens")
        self.add_special_tokens = True if special is None else parse_bool("add_special_tokens", special)
        self.tokenizer = text.load_tokenizer(tokenizer_dir)
        tok = self.tokenizer
        self.end_id = tok.eos_token_id if tok.eos_token_id is not None else -1
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.end_id
        self.vocab_size = text.model_vocab_size(tok, _param(config, "gpt_model_path"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._process(request)))
            except pb_utils.TritonModelException as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
            except NotImplementedError as e:
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.UNSUPPORTED)
                responses.append(pb_utils.InferenceResponse(error=error))
            except (ValueError, UnicodeDecodeError) as e:
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses

    def _encode(self, queries: np.ndarray, name: str):
        texts = [text.as_text(q.reshape(-1)[0]) for q in queries]
        if any(not t for t in texts):
            # special tokens alone are no prompt (the ensemble's text_input, the BLS's)
            raise ValueError(f"input '{name}' (text_input) must not be empty")
        ids = [self.tokenizer.encode(t, add_special_tokens=self.add_special_tokens) for t in texts]
        width = max((len(x) for x in ids), default=0)
        out = np.full((len(ids), max(width, 1)), self.pad_id, dtype=np.int32)
        for i, x in enumerate(ids):
            out[i, : len(x)] = x
        return out, np.array([[len(x)] for x in ids], dtype=np.int32)

    def _process(self, request):
        if _input(request, "IMAGE") is not None:
            raise NotImplementedError("multimodal inputs (IMAGE) are not supported")
        query = _input(request, "QUERY")
        batch = query.shape[0]
        input_id, input_len = self._encode(query, "QUERY")
        decoder_query = _input(request, "DECODER_QUERY")
        if decoder_query is not None:
            decoder_id, decoder_len = self._encode(decoder_query, "DECODER_QUERY")
        else:
            decoder_id = np.full((batch, 1), self.pad_id, dtype=np.int32)
            decoder_len = np.ones((batch, 1), dtype=np.int32)
        output_len = _input(request, "REQUEST_OUTPUT_LEN")
        end_id = _input(request, "END_ID")
        pad_id = _input(request, "PAD_ID")
        if end_id is None:
            end_id = np.full((batch, 1), self.end_id, dtype=np.int32)
        if pad_id is None:
            pad_id = np.full((batch, 1), self.pad_id, dtype=np.int32)
        bias = text.embedding_bias(
            self.tokenizer,
            _input(request, "EMBEDDING_BIAS_WORDS"),
            _input(request, "EMBEDDING_BIAS_WEIGHTS"),
            batch,
            self.vocab_size,
        )
        outputs = [
            pb_utils.Tensor("INPUT_ID", input_id),
            pb_utils.Tensor("REQUEST_INPUT_LEN", input_len),
            pb_utils.Tensor("DECODER_INPUT_ID", decoder_id),
            pb_utils.Tensor("REQUEST_DECODER_INPUT_LEN", decoder_len),
            pb_utils.Tensor(
                "BAD_WORDS_IDS",
                text.words_to_ids_offsets(self.tokenizer, _input(request, "BAD_WORDS_DICT"), batch),
            ),
            pb_utils.Tensor(
                "STOP_WORDS_IDS",
                text.words_to_ids_offsets(self.tokenizer, _input(request, "STOP_WORDS_DICT"), batch),
            ),
            pb_utils.Tensor("EMBEDDING_BIAS", bias),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", np.asarray(output_len, dtype=np.int32).reshape(batch, -1)),
            pb_utils.Tensor("OUT_END_ID", np.asarray(end_id, dtype=np.int32).reshape(batch, 1)),
            pb_utils.Tensor("OUT_PAD_ID", np.asarray(pad_id, dtype=np.int32).reshape(batch, 1)),
        ]
        extra = _input(request, "PROMPT_TABLE_EXTRA_ID")
        if extra is not None:
            # p-tuning's extra id marks the prompt-table ids (past the vocabulary); ordinary
            # tokens get 0, so their KV blocks stay shareable (as upstream)
            per_request = np.asarray(extra, np.uint64).reshape(batch, 1)
            ids = np.where(input_id >= self.vocab_size, per_request, 0).astype(np.uint64)
            outputs.append(pb_utils.Tensor("OUT_PROMPT_TABLE_EXTRA_IDS", ids))
        return outputs

    def finalize(self):
        self.tokenizer = None
