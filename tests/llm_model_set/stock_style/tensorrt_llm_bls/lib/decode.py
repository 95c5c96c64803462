from collections.abc import Generator
from dataclasses import dataclass
from typing import Optional

import numpy as np


class RequestValidationError(Exception):
    pass


def _validate_that(condition: bool, msg: str):
    if not condition:
        raise RequestValidationError(msg)


def _validate_non_empty(data, msg: str):
    if isinstance(data, np.ndarray):
        _validate_that(data is not None and data.size > 0, msg)
    else:
        _validate_that(data is not None, msg)


def _validate_single_gt_0(data, msg: str):
    _validate_non_empty(data, msg)
    _validate_that(data.flatten()[0] > 0, msg)


@dataclass
class Request:
    text_input: np.ndarray = None
    max_tokens: Optional[np.ndarray] = None
    bad_words: Optional[np.ndarray] = None
    stop_words: Optional[np.ndarray] = None
    end_id: Optional[np.ndarray] = None
    pad_id: Optional[np.ndarray] = None
    top_k: Optional[np.ndarray] = None
    top_p: Optional[np.ndarray] = None
    temperature: Optional[np.ndarray] = None
    length_penalty: Optional[np.ndarray] = None
    repetition_penalty: Optional[np.ndarray] = None
    min_length: Optional[np.ndarray] = None
    return_log_probs: Optional[np.ndarray] = None
    presence_penalty: Optional[np.ndarray] = None
    frequency_penalty: Optional[np.ndarray] = None
    random_seed: Optional[np.ndarray] = None
    beam_width: Optional[np.ndarray] = None
    stream: Optional[np.ndarray] = None
    exclude_input_in_output: Optional[np.ndarray] = None

    def validate(self):
        _validate_non_empty(self.text_input, "text_input is required")
        _validate_single_gt_0(self.max_tokens, "max_tokens must be a single value > 0")


@dataclass
class PreprocResponse:
    input_ids: np.ndarray = None
    input_lengths: np.ndarray = None
    bad_words_list: Optional[np.ndarray] = None
    stop_words_list: Optional[np.ndarray] = None
    embedding_bias: Optional[np.ndarray] = None
    end_id: Optional[np.ndarray] = None
    pad_id: Optional[np.ndarray] = None


@dataclass
class GenerationResponse:
    output_ids: np.ndarray = None
    sequence_length: np.ndarray = None
    cum_log_probs: Optional[np.ndarray] = None
    output_log_probs: Optional[np.ndarray] = None
    batch_index: Optional[np.ndarray] = None


@dataclass
class Response:
    text_output: np.ndarray = None
    cum_log_probs: Optional[np.ndarray] = None
    output_log_probs: Optional[np.ndarray] = None
    batch_index: Optional[np.ndarray] = None


class Decoder:

    def __init__(self, streaming=False, accumulate=False):
        self._streaming = streaming
        self._accumulate = accumulate
        self._accumulated_tokens = None

    def decode(self, request: Request) -> Generator[Response, None, None]:
        preproc_response = self.preprocess(request)
        if not self._accumulate:
            for gen_response in self.generate(preproc_response, request):
                yield self.postprocess(gen_response)
        else:
            for gen_response in self.generate(preproc_response, request):
                if self._accumulated_tokens is None:
                    self._accumulated_tokens = gen_response.output_ids
                else:
                    self._accumulated_tokens = np.concatenate(
                        (self._accumulated_tokens, gen_response.output_ids), axis=2)
                yield self.postprocess(gen_response, self._accumulated_tokens)

    def reset_decoder(self):
        self._accumulated_tokens = None

    def preprocess(self, request: Request) -> PreprocResponse:
        raise NotImplementedError()

    def generate(self, preproc: PreprocResponse,
                 request: Request) -> Generator[GenerationResponse, None, None]:
        raise NotImplementedError()

    def postprocess(self, gen_response: GenerationResponse,
                    tokens: Optional[np.ndarray] = None) -> Response:
        raise NotImplementedError()
