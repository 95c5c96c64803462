from collections.abc import Callable
from typing import Dict, Optional

import numpy as np
import triton_python_backend_utils as pb_utils
from lib.decode import *  # noqa: F403
from torch.utils.dlpack import from_dlpack
from typing_extensions import override


class TritonDecoder(Decoder):  # noqa: F405

    def __init__(self, streaming=False, accumulate=False, preproc_model_name="preprocessing",
                 postproc_model_name="postprocessing", llm_model_name="tensorrt_llm"):
        super().__init__(streaming=streaming, accumulate=accumulate)
        self.preproc_model_name = preproc_model_name
        self.postproc_model_name = postproc_model_name
        self.llm_model_name = llm_model_name

        self._preproc_outputs = ["INPUT_ID", "REQUEST_INPUT_LEN", "BAD_WORDS_IDS",
                                 "STOP_WORDS_IDS", "EMBEDDING_BIAS", "OUT_PAD_ID", "OUT_END_ID"]
        self._llm_outputs = ["output_ids", "sequence_length", "cum_log_probs",
                             "output_log_probs", "batch_index"]
        self._postproc_outputs = ["OUTPUT"]
        self.input_names = ["text_input", "max_tokens", "bad_words", "stop_words", "end_id",
                            "pad_id", "top_k", "top_p", "temperature", "length_penalty",
                            "repetition_penalty", "min_length", "presence_penalty",
                            "frequency_penalty", "random_seed", "return_log_probs",
                            "beam_width", "stream", "exclude_input_in_output"]
        self.__undo_reshape_whitelist = {"max_tokens", "end_id", "pad_id", "top_k", "top_p",
                                         "temperature", "length_penalty",
                                         "repetition_penalty", "min_length",
                                         "presence_penalty", "frequency_penalty",
                                         "random_seed", "return_log_probs", "beam_width",
                                         "stream", "exclude_input_in_output"}

    def _exec_triton_request(self, request):
        responses = request.exec(decoupled=True)
        for r in responses:
            if r.has_error():
                raise pb_utils.TritonModelException(r.error().message())
            yield r

    def _exec_triton_request_single(self, request):
        responses = request.exec(decoupled=False)
        if responses.has_error():
            raise pb_utils.TritonModelException(responses.error().message())
        return responses

    def create_triton_response(self, response: Response):  # noqa: F405
        name_map = {"text_output": "text_output", "cum_log_probs": "cum_log_probs",
                    "output_log_probs": "output_log_probs", "batch_index": "batch_index"}
        tensors = self.create_triton_tensors(response, name_map)
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def convert_triton_request(self, triton_request) -> Request:  # noqa: F405
        request = Request()  # noqa: F405
        for triton_name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(triton_request, triton_name)
            target_name = triton_name
            if tensor is None:
                continue
            if not hasattr(request, target_name):
                raise AttributeError(f"Request has no attribute '{target_name}'")
            setattr(request, target_name, tensor.as_numpy())
        return request

    def convert_triton_response(self, triton_response, response_factory: Callable,
                                name_map=None):
        response = response_factory()
        for tensor in triton_response.output_tensors():
            if tensor is None:
                continue
            triton_name = tensor.name()
            if tensor.is_cpu():
                value = tensor.as_numpy()
            else:
                value = from_dlpack(tensor.to_dlpack()).detach().cpu().numpy()
            target_name = triton_name
            if name_map and triton_name in name_map:
                target_name = name_map[triton_name]
            if name_map and triton_name not in name_map:
                continue
            if target_name is None:
                continue
            if not hasattr(response, target_name):
                raise AttributeError(f"response object has not attribute '{target_name}'")
            setattr(response, target_name, value)
        return response

    def __undo_reshape(self, x, name):
        if name in self.__undo_reshape_whitelist and len(x.shape) == 1:
            return np.expand_dims(x, 0)
        return x

    def create_triton_tensors(self, obj, name_map: Dict):
        tensors = []
        for name, triton_name in name_map.items():
            if triton_name is None:
                continue
            value = getattr(obj, name)
            if value is None:
                continue
            t = pb_utils.Tensor(triton_name, self.__undo_reshape(value, name))
            tensors.append(t)
        return tensors

    @override
    def preprocess(self, request: Request) -> PreprocResponse:  # noqa: F405
        input_tensors = self._get_preproc_tensors(request)
        triton_req = pb_utils.InferenceRequest(model_name=self.preproc_model_name,
                                               inputs=input_tensors,
                                               requested_output_names=self._preproc_outputs)
        triton_output = self._exec_triton_request_single(triton_req)
        return self._get_preproc_response(triton_output)

    def _get_preproc_tensors(self, request: Request):  # noqa: F405
        name_map = {"text_input": "QUERY", "max_tokens": "REQUEST_OUTPUT_LEN",
                    "bad_words": "BAD_WORDS_DICT", "stop_words": "STOP_WORDS_DICT",
                    "pad_id": "PAD_ID", "end_id": "END_ID"}
        return self.create_triton_tensors(request, name_map)

    def _get_preproc_response(self, triton_output):
        name_map = {"INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths",
                    "BAD_WORDS_IDS": "bad_words_list", "STOP_WORDS_IDS": "stop_words_list",
                    "EMBEDDING_BIAS": "embedding_bias", "OUT_PAD_ID": "pad_id",
                    "OUT_END_ID": "end_id"}
        return self.convert_triton_response(triton_output, PreprocResponse, name_map)  # noqa: F405

    @override
    def generate(self, preproc, request):
        input_tensors = self._get_llm_tensors(preproc, request)
        triton_req = pb_utils.InferenceRequest(model_name=self.llm_model_name,
                                               inputs=input_tensors,
                                               requested_output_names=self._llm_outputs)
        for r in self._exec_triton_request(triton_req):
            yield self._get_llm_response(r)

    def _get_llm_tensors(self, preproc, request):
        name_map = {"input_ids": "input_ids", "input_lengths": "input_lengths",
                    "bad_words_list": "bad_words_list", "stop_words_list": "stop_words_list",
                    "embedding_bias": "embedding_bias", "pad_id": "pad_id", "end_id": "end_id"}
        tensors = self.create_triton_tensors(preproc, name_map)
        name_map = {"max_tokens": "request_output_len", "beam_width": "beam_width",
                    "top_k": "runtime_top_k", "top_p": "runtime_top_p",
                    "temperature": "temperature", "length_penalty": "len_penalty",
                    "repetition_penalty": "repetition_penalty", "min_length": "min_length",
                    "presence_penalty": "presence_penalty",
                    "frequency_penalty": "frequency_penalty", "random_seed": "random_seed",
                    "return_log_probs": "return_log_probs", "stream": "streaming",
                    "exclude_input_in_output": "exclude_input_in_output"}
        tensors += self.create_triton_tensors(request, name_map)
        return tensors

    def _get_llm_response(self, triton_output):
        name_map = {"output_ids": "output_ids", "sequence_length": "sequence_length",
                    "cum_log_probs": "cum_log_probs", "output_log_probs": "output_log_probs",
                    "batch_index": "batch_index"}
        return self.convert_triton_response(triton_output, GenerationResponse, name_map)  # noqa: F405

    @override
    def postprocess(self, gen_response, tokens: Optional[np.ndarray] = None):
        input_tensors = self._get_postproc_tensors(gen_response, tokens)
        triton_req = pb_utils.InferenceRequest(model_name=self.postproc_model_name,
                                               inputs=input_tensors,
                                               requested_output_names=self._postproc_outputs)
        r = self._exec_triton_request_single(triton_req)
        response = self._get_response(r, gen_response)
        return response

    def _get_postproc_tensors(self, gen_response, tokens=None):
        tokens = gen_response.output_ids if tokens is None else tokens
        return [pb_utils.Tensor("TOKENS_BATCH", tokens),
                pb_utils.Tensor("SEQUENCE_LENGTH", np.full(
                    tokens.shape[:2], tokens.shape[2], dtype=np.int32)
                    if tokens is not gen_response.output_ids else gen_response.sequence_length)]

    def _get_response(self, triton_output, gen_res):
        tensors = triton_output.output_tensors()
        t_map = {}
        for named_t in tensors:
            name = named_t.name()
            t = named_t.as_numpy()
            t_map[name] = t
        return Response(text_output=t_map["OUTPUT"],  # noqa: F405
                        cum_log_probs=gen_res.cum_log_probs,
                        output_log_probs=gen_res.output_log_probs,
                        batch_index=gen_res.batch_index)
