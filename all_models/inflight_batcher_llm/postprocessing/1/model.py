"""postprocessing: token ids to text with the tokenizer of tokenizer_dir.

TOKENS_BATCH [batch, beams, tokens] + SEQUENCE_LENGTH [batch, beams] -> OUTPUT
[batch, beams] (skip_special_tokens). Streaming state: this model keeps none. When the
optional STREAMING input is true, TOKENS_BATCH is a streamed delta and is decoded as the
middle of a text (SentencePiece leading spaces kept); the tensorrt_llm backend (with its
tokenizer_dir set) only streams deltas that end on a whole UTF-8 character, so no delta
decodes to U+FFFD. The BLS model keeps per-request decode offsets itself.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from llmserve.backends.tensorrtllm import text
from llmserve.backends.tensorrtllm.parameters import is_unset, parse_bool


def _param(config: dict, name: str):
    value = config.get("parameters", {}).get(name, {}).get("string_value")
    return None if is_unset(value) else value.strip()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        tokenizer_dir = _param(config, "tokenizer_dir")
        if tokenizer_dir is None:
            raise pb_utils.TritonModelException("parameter 'tokenizer_dir' must be set")
        skip = _param(config, "skip_special_tokens")
        self.skip_special_tokens = True if skip is None else parse_bool("skip_special_tokens", skip)
        self.tokenizer = text.load_tokenizer(tokenizer_dir)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                output = self._process(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            except (ValueError, IndexError) as e:
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses

    def _process(self, request):
        tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
        streaming_t = pb_utils.get_input_tensor_by_name(request, "STREAMING")
        streaming = streaming_t is not None and bool(np.asarray(streaming_t.as_numpy()).reshape(-1)[0])
        if tokens.ndim == 2:  # [batch, tokens]: one beam
            tokens = tokens[:, None, :]
        lengths = np.asarray(lengths).reshape(tokens.shape[0], -1)
        batch, beams = tokens.shape[0], tokens.shape[1]
        if lengths.shape[1] != beams or (lengths < 0).any() or (lengths > tokens.shape[2]).any():
            raise ValueError(f"SEQUENCE_LENGTH must hold one length in [0, {tokens.shape[2]}] "
                             "per beam of TOKENS_BATCH")
        out = np.empty((batch, beams), dtype=object)
        for b in range(batch):
            for k in range(beams):
                ids = [int(t) for t in tokens[b, k, : int(lengths[b, k])]]
                if any(t < 0 for t in ids):
                    raise ValueError("TOKENS_BATCH holds a negative token id")
                if streaming:
                    s = text.decode_continuation(self.tokenizer, ids, self.skip_special_tokens)
                else:
                    s = self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)
                out[b, k] = s.encode("utf-8")
        return pb_utils.Tensor("OUTPUT", out)

    def finalize(self):
        self.tokenizer = None
