"""tensorrt_llm_bls: the preprocessing -> tensorrt_llm -> postprocessing pipeline by BLS.

Streaming state lives here, per request: an IncrementalDecoder per returned sequence
keeps decode offsets (no split UTF-8 characters, no lost SentencePiece spaces), stop
words are also checked on the text (a tail that could still become a stop word is held
back; a hit ends the tensorrt_llm request with `stop`), and accumulate_tokens makes each
streamed text_output the whole text so far. Text comes from the postprocessing model, or,
when this model's own tokenizer_dir parameter is set (and skip_special_tokens matches
postprocessing's), from an in-process decoder that saves a postprocessing round trip per
streamed chunk (fast_decode.FastDecoder). Draft-model speculative decoding runs the
draft and target models in turn (tensorrt_llm_draft_model_name, num_draft_tokens).
"""

import contextvars
import json
import threading
import uuid

import numpy as np

import triton_python_backend_utils as pb_utils
from llmserve.backends.tensorrtllm import text
from llmserve.backends.tensorrtllm.fast_decode import FastDecoder
from llmserve.backends.tensorrtllm.values import is_unset, parse_bool

# BLS input -> preprocessing input
PRE_INPUTS = {
    "text_input": "QUERY", "decoder_text_input": "DECODER_QUERY", "max_tokens": "REQUEST_OUTPUT_LEN",
    "bad_words": "BAD_WORDS_DICT", "stop_words": "STOP_WORDS_DICT",
    "embedding_bias_words": "EMBEDDING_BIAS_WORDS", "embedding_bias_weights": "EMBEDDING_BIAS_WEIGHTS",
    "end_id": "END_ID", "pad_id": "PAD_ID",
}
# preprocessing output -> tensorrt_llm input
PRE_TO_LLM = {
    "INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths",
    "REQUEST_OUTPUT_LEN": "request_output_len", "OUT_END_ID": "end_id", "OUT_PAD_ID": "pad_id",
    "BAD_WORDS_IDS": "bad_words_list", "STOP_WORDS_IDS": "stop_words_list",
    "EMBEDDING_BIAS": "embedding_bias",
}
# BLS input -> tensorrt_llm input (renamed ones; the rest keep their names)
RENAMED = {"top_k": "runtime_top_k", "top_p": "runtime_top_p", "length_penalty": "len_penalty", "stream": "streaming"}
SAME_NAME = (
    "temperature", "repetition_penalty", "min_length", "min_tokens", "presence_penalty",
    "frequency_penalty", "random_seed", "seed", "return_log_probs", "return_context_logits",
    "return_generation_logits", "return_kv_cache_reuse_stats", "return_perf_metrics",
    "num_return_sequences", "beam_width", "exclude_input_in_output", "lora_task_id",
    "lora_weights", "lora_config", "prompt_embedding_table", "prompt_vocab_size",
    "guided_decoding_guide_type", "guided_decoding_guide",
)


# Outputs that carry per-step values a streaming client must not miss.
_PER_STEP_OUTPUTS = ("output_log_probs", "cum_log_probs", "generation_logits", "context_logits")


def _param(config, name):
    value = config.get("parameters", {}).get(name, {}).get("string_value")
    return None if is_unset(value) else value.strip()


def _scalar(inputs, name, default=None):
    value = inputs.get(name)
    if value is None or np.asarray(value).size == 0:
        return default
    return np.asarray(value).reshape(-1)[0].item()


def _check(response):
    if response.has_error():
        e = pb_utils.TritonModelException(response.error().message())
        e.triton_code = response.error().code()
        raise e
    return response


class _Sequence:
    """Text state of one returned sequence while streaming."""

    def __init__(self, decode_many, stop_words):
        self.decoder = text.IncrementalDecoder(decode_many)
        self.stop_words = stop_words
        self.longest = max((len(w) for w in stop_words), default=0)
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, tokens, final):
        if not self.stopped:
            start = len(self.text)
            self.text += self.decoder.push(tokens, final)
            self._check_stop(start)
        end = len(self.text) if (final or self.stopped) else len(self.text) - self._stop_prefix()
        delta, self.sent = self.text[self.sent : end], max(self.sent, end)
        return delta

    def _check_stop(self, start=0):
        """A stop word in the text, looking only where one could end in text[start:]
        (the text before it was checked already)."""
        if start >= len(self.text):
            return
        frm = max(0, start - self.longest + 1)
        hits = [(pos, w) for w in self.stop_words if (pos := self.text.find(w, frm)) >= 0]
        if hits:
            pos, word = min(hits)
            self.text, self.stopped = self.text[: pos + len(word)], True

    def _stop_prefix(self):
        """Length of the longest text tail that could still grow into a stop word."""
        best = 0
        for w in self.stop_words:
            for n in range(min(len(w) - 1, len(self.text)), best, -1):
                if self.text.endswith(w[:n]):
                    best = n
                    break
        return best


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        accumulate = _param(config, "accumulate_tokens")
        self.accumulate = accumulate is not None and parse_bool("accumulate_tokens", accumulate)
        self.llm_name = _param(config, "tensorrt_llm_model_name") or "tensorrt_llm"
        self.draft_name = _param(config, "tensorrt_llm_draft_model_name")
        self.outputs = [o["name"] for o in config.get("output", [])]
        self.llm_outputs = [name for name in self.outputs if name != "text_output"]
        self._post_batches = True  # postprocessing takes several rows per request
        # with tokenizer_dir set, text is decoded here instead of by postprocessing
        tokenizer_dir = _param(config, "tokenizer_dir")
        skip = _param(config, "skip_special_tokens")
        skip = True if skip is None else parse_bool("skip_special_tokens", skip)
        self._fast = None if tokenizer_dir is None else FastDecoder.load(tokenizer_dir, skip)

    def execute(self, requests):
        if not self.decoupled:
            return [self._run_once(r) for r in requests]
        # each stream on a thread of its own, so that one instance serves many streams at
        # once and the next requests need not wait for this one's last token; the thread
        # runs in execute's context (BLS calls are only allowed there)
        for request in requests:
            run = contextvars.copy_context().run
            threading.Thread(target=run, args=(self._stream, request), daemon=True,
                             name="tensorrt_llm_bls-stream").start()
        return None

    def _stream(self, request):
        sender = request.get_response_sender()
        try:
            try:
                for response in self._generate(request):
                    sender.send(response)
            except pb_utils.TritonModelException as e:
                sender.send(pb_utils.InferenceResponse(error=_error(e)))
            except Exception as e:  # never leave the client without a final response
                message = f"{type(e).__name__}: {e}"
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:  # the sender itself refused: nobody is left to answer
            pb_utils.Logger.log_warn(f"tensorrt_llm_bls: a stream ended unanswered: {e}")

    def _run_once(self, request):
        try:
            responses = list(self._generate(request))
        except pb_utils.TritonModelException as e:
            return pb_utils.InferenceResponse(error=_error(e))
        return responses[-1]

    # ------------------------------------------------------------------ pipeline
    def _generate(self, request):
        inputs = {t.name(): t.as_numpy() for t in request.inputs()}
        if inputs["text_input"].shape[0] != 1:
            raise _exception("tensorrt_llm_bls takes one prompt per request (batch size 1)", "INVALID_ARG")
        if inputs.get("image_input") is not None:
            raise _exception("multimodal inputs (image_input) are not supported", "UNSUPPORTED")
        streaming = bool(_scalar(inputs, "stream", False))
        if streaming and not self.decoupled:
            raise _exception(
                "Streaming is only supported if model is deployed using decoupled mode", "INVALID_ARG"
            )
        pre = self._preprocess(inputs)
        llm_inputs = self._llm_inputs(inputs, pre)
        stop_words = text.word_list(np.asarray(inputs.get("stop_words", [[]])).reshape(-1))
        num_draft = int(_scalar(inputs, "num_draft_tokens", 0) or 0)
        if num_draft > 0:
            yield from self._speculate(inputs, llm_inputs, num_draft, stop_words)
            return
        request_id = f"bls-{uuid.uuid4().hex}"
        outputs = self._wanted(request)
        asked = [n for n in outputs if n in self.llm_outputs and n != "sequence_index"]
        llm_request = self._bls_request(
            self.llm_name, llm_inputs, ["output_ids", "sequence_length", "sequence_index"] + asked,
            request_id)
        responses = llm_request.exec(decoupled=True) if self.decoupled else [llm_request.exec()]
        if not streaming:
            for response in responses:
                out = _outputs(_check(response))
                if "output_ids" in out:
                    yield self._final_response_from(out, llm_inputs, stop_words, inputs, outputs)
            return
        sequences = {}
        stopped = False
        for response in responses:
            _check(response)
            out = _outputs(response)
            if "output_ids" not in out:
                continue
            index = int(out.get("sequence_index", np.zeros(1)).reshape(-1)[0])
            seq = sequences.setdefault(index, _Sequence(self._decode_many, stop_words))
            length = int(out["sequence_length"].reshape(-1)[0])
            ids = out["output_ids"]  # a final after `stop` may carry no tokens: [1, 1, 0]
            first = ids.reshape(-1, ids.shape[-1])[0] if ids.size else ids.reshape(-1)
            delta = seq.push(first[:length].tolist(), False)
            if seq.stopped and not stopped:
                stopped = True
                self._send_stop(request_id)
            if request.is_cancelled():
                self._send_stop(request_id)
                raise _exception("Request was cancelled", "CANCELLED")
            if delta or any(name in out for name in _PER_STEP_OUTPUTS):
                yield self._response(seq.text[: seq.sent] if self.accumulate else delta, out,
                                     outputs)
        for index, seq in sequences.items():
            delta = seq.push([], True)
            if delta:
                shown = seq.text if self.accumulate else delta
                yield self._response(shown, {"sequence_index": np.array([[index]], np.int32)},
                                     outputs)

    def _wanted(self, request):
        """The outputs the caller asked for (all when none): tensorrt_llm builds only
        these, once per streamed token."""
        asked = set(request.requested_output_names())
        return [n for n in self.outputs if n in asked] if asked else self.outputs

    def _preprocess(self, inputs):
        tensors = []
        for name, target in PRE_INPUTS.items():
            value = inputs.get(name)
            if value is None:
                continue
            if name in ("text_input", "decoder_text_input", "max_tokens"):
                value = np.asarray(value).reshape(1, -1)[:, :1]
            tensors.append(pb_utils.Tensor(target, value))
        request = pb_utils.InferenceRequest(
            model_name="preprocessing", inputs=tensors, requested_output_names=list(PRE_TO_LLM)
        )
        return _outputs(_check(request.exec()))

    def _llm_inputs(self, inputs, pre):
        out = {}
        for name, target in PRE_TO_LLM.items():
            value = pre.get(name)
            if value is not None and not (target == "embedding_bias" and value.size == 0):
                out[target] = value
        for name in SAME_NAME:
            if inputs.get(name) is not None:
                out[name] = inputs[name]
        for name, target in RENAMED.items():
            if inputs.get(name) is not None:
                out[target] = inputs[name]
        return out

    def _bls_request(self, model, tensors, outputs, request_id=""):
        return pb_utils.InferenceRequest(
            model_name=model,
            inputs=[pb_utils.Tensor(k, np.asarray(v)) for k, v in tensors.items()],
            requested_output_names=outputs,
            request_id=request_id,
        )

    def _send_stop(self, request_id):
        stop = {
            "input_ids": np.zeros((1, 1), np.int32),
            "input_lengths": np.ones((1, 1), np.int32),
            "request_output_len": np.ones((1, 1), np.int32),
            "stop": np.ones((1, 1), bool),
        }
        request = self._bls_request(self.llm_name, stop, ["output_ids"], request_id)
        if self.decoupled:
            for _ in request.exec(decoupled=True):
                pass
        else:
            request.exec()

    def _decode_many(self, id_lists, streaming=False):
        """Texts of several id lists from one postprocessing request (a batch of rows);
        one request per list only when postprocessing's max batch size rejects the batch.
        With the BLS's own tokenizer_dir: decoded here, no postprocessing request."""
        if self._fast is not None:
            return self._fast.decode_many(id_lists, streaming)
        if len(id_lists) > 1 and self._post_batches:
            try:
                return self._decode_batch(id_lists, streaming)
            except pb_utils.TritonModelException as e:
                if getattr(e, "triton_code", None) != pb_utils.TritonError.INVALID_ARG:
                    raise
                self._post_batches = False
        return [t for ids in id_lists for t in self._decode_batch([ids], streaming)]

    def _decode_batch(self, id_lists, streaming):
        width = max((len(ids) for ids in id_lists), default=0)
        tokens = np.zeros((len(id_lists), 1, width), np.int32)
        for row, ids in enumerate(id_lists):
            tokens[row, 0, : len(ids)] = ids
        tensors = [
            pb_utils.Tensor("TOKENS_BATCH", tokens),
            pb_utils.Tensor("SEQUENCE_LENGTH", np.array([[len(ids)] for ids in id_lists], np.int32)),
        ]
        if streaming:
            tensors.append(pb_utils.Tensor("STREAMING", np.ones((len(id_lists), 1), bool)))
        request = pb_utils.InferenceRequest(
            model_name="postprocessing", inputs=tensors, requested_output_names=["OUTPUT"]
        )
        out = _outputs(_check(request.exec()))["OUTPUT"].reshape(len(id_lists), -1)
        return [text.as_text(row[0]) for row in out]

    def _final_response_from(self, out, llm_inputs, stop_words, inputs, outputs=None):
        ids, lengths = out["output_ids"], out["sequence_length"]
        # rows by the leading dims, not -1: a final of no tokens ([1, 1, 0], e.g. an end
        # token first with the input excluded) has size 0
        ids = ids.reshape(int(np.prod(ids.shape[:-1])), ids.shape[-1])
        lengths = lengths.reshape(-1)
        exclude = bool(_scalar(inputs, "exclude_input_in_output", False))
        prompt_len = int(np.asarray(llm_inputs["input_lengths"]).reshape(-1)[0])
        texts = []
        for beam in range(ids.shape[0]):
            tokens = ids[beam][: int(lengths[beam])].tolist()
            full = self._decode_many([tokens])[0]
            if stop_words:
                prompt = "" if exclude else self._decode_many([tokens[:prompt_len]])[0]
                seq = _Sequence(self._decode_many, stop_words)
                seq.text = full[len(prompt) :] if full.startswith(prompt) else full
                seq._check_stop()
                full = (prompt if full.startswith(prompt) else "") + seq.text
            texts.append(full)
        return self._response(texts, out, outputs)

    def _response(self, texts, llm_out, outputs=None):
        texts = [texts] if isinstance(texts, str) else texts
        tensors = [pb_utils.Tensor("text_output", np.array([[t.encode("utf-8") for t in texts]], dtype=object))]
        for name in self.outputs if outputs is None else outputs:
            if name != "text_output" and name in llm_out:
                tensors.append(pb_utils.Tensor(name, llm_out[name]))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    # ------------------------------------------------------------------ speculative decoding
    def _speculate(self, inputs, llm_inputs, num_draft, stop_words):
        if not self.draft_name:
            raise _exception(
                "num_draft_tokens needs the tensorrt_llm_draft_model_name parameter", "INVALID_ARG"
            )
        if any(np.asarray(inputs.get("guided_decoding_guide_type", [])).reshape(-1)):
            # each target step is a new tensorrt_llm request: a guide would start over
            raise _exception(
                "guided decoding with num_draft_tokens is not supported; use the tensorrt_llm "
                "model's speculative_decoding_mode (prompt_lookup or draft_model) instead", "UNSUPPORTED"
            )
        if int(_scalar(inputs, "beam_width", 1) or 1) > 1 or int(_scalar(inputs, "num_return_sequences", 1) or 1) > 1:
            raise _exception("speculative decoding supports beam_width 1 and one sequence", "UNSUPPORTED")
        if bool(_scalar(inputs, "return_context_logits", False)) or bool(_scalar(inputs, "return_generation_logits", False)):
            raise _exception("speculative decoding does not return logits", "UNSUPPORTED")
        from llmserve.backends.tensorrtllm.speculative import run_draft_target

        yield from run_draft_target(self, inputs, llm_inputs, num_draft, stop_words)


def _outputs(response):
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def _exception(message, code_name):
    e = pb_utils.TritonModelException(message)
    e.triton_code = getattr(pb_utils.TritonError, code_name)
    return e


def _error(exc):
    code = getattr(exc, "triton_code", pb_utils.TritonError.INTERNAL)
    return pb_utils.TritonError(str(exc), code)
