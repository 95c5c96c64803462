"""tensorrtllm backend: parameters -> ExecutorConfig, request tensors -> executor Request."""

import logging

import numpy as np
import pytest

from llmserve.backends.tensorrtllm import parameters as P
from llmserve.backends.tensorrtllm import request_mapping as rm
from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.llm import BatchingType, CapacitySchedulerPolicy
from llmserve.llm.config import SpeculativeDecodingMode


def test_placeholders_count_as_unset(tmp_path):
    raw = {"gpt_model_path": str(tmp_path), "max_beam_width": "${max_beam_width}",
           "kv_cache_free_gpu_mem_fraction": "", "enable_kv_cache_reuse": "${enable_kv_cache_reuse}",
           "batch_scheduler_policy": "${batch_scheduler_policy}", "gpt_model_type": "${batching_strategy}",
           "cuda_graph_mode": "${cuda_graph_mode}"}
    s = P.read_settings(raw)
    c = s.executor_config
    assert s.engine_dir == tmp_path
    assert c.max_beam_width == 1 and c.kv_cache_config.free_gpu_memory_fraction == 0.9
    assert not c.kv_cache_config.enable_block_reuse
    assert c.scheduler_config.capacity_scheduler_policy is CapacitySchedulerPolicy.GUARANTEED_NO_EVICT
    assert c.batching_type is BatchingType.INFLIGHT and c.lora_config is None
    assert s.warnings == [] and s.cancellation_check_period_ms == 100


# Every parameter read_settings honours: (value, where it must land in the settings).
HONOURED = {
    "batch_scheduler_policy": ("max_utilization", lambda s, c: c.scheduler_config
                               .capacity_scheduler_policy is CapacitySchedulerPolicy.MAX_UTILIZATION),
    "enable_kv_cache_reuse": ("true", lambda s, c: c.kv_cache_config.enable_block_reuse),
    "enable_chunked_context": ("true", lambda s, c: c.enable_chunked_context),
    "max_tokens_in_paged_kv_cache": ("2048", lambda s, c: c.kv_cache_config.max_tokens == 2048),
    "kv_cache_free_gpu_mem_fraction": (
        "0.5", lambda s, c: c.kv_cache_config.free_gpu_memory_fraction == 0.5),
    "max_attention_window_size": ("64", lambda s, c: c.kv_cache_config.max_attention_window == 64),
    "normalize_log_probs": ("false", lambda s, c: not c.normalize_log_probs),
    "exclude_input_in_output": ("true", lambda s, c: s.exclude_input_in_output),
    "iter_stats_max_iterations": ("7", lambda s, c: c.iter_stats_max_iterations == 7),
    "request_stats_max_iterations": ("3", lambda s, c: c.request_stats_max_iterations == 3),
    "gpt_model_type": ("V1", lambda s, c: c.batching_type is BatchingType.STATIC),
    "gpu_device_ids": ("1,2", lambda s, c: c.device == "cuda:1" and c.device_ids == [1, 2]),
    "tensor_parallel_size": ("2", lambda s, c: c.tensor_parallel_size == 2),
    "cancellation_check_period_ms": ("20", lambda s, c: s.cancellation_check_period_ms == 20),
    "stats_check_period_ms": ("30", lambda s, c: s.stats_check_period_ms == 30),
    "engine_kv_block_size": ("16", lambda s, c: c.tokens_per_block == 16),
    "decoding_mode": ("top_k", lambda s, c: s.decoding_mode == "top_k"),
    "max_beam_width": ("2", lambda s, c: c.max_beam_width == 2),
    "engine_max_batch_size": ("8", lambda s, c: c.max_batch_size == 8),
    "engine_max_num_tokens": ("512", lambda s, c: c.max_num_tokens == 512),
    "engine_dtype": ("float32", lambda s, c: c.dtype == "float32"),
    "weight_only_precision": ("int8", lambda s, c: c.weight_only_precision == "int8"),
    "lora_cache_optimal_adapter_size": ("4", lambda s, c: c.lora_config.optimal_adapter_size == 4),
    "lora_cache_max_adapter_size": ("32", lambda s, c: c.lora_config.max_adapter_size == 32),
    "lora_cache_gpu_memory_fraction": (
        "0.1", lambda s, c: c.lora_config.device_cache_percent == 0.1),
    "lora_cache_host_memory_bytes": (
        "1000000", lambda s, c: c.lora_config.host_cache_size == 1000000),
    "speculative_decoding_mode": ("prompt_lookup", lambda s, c: c.speculative_decoding_config
                                  .mode is SpeculativeDecodingMode.PROMPT_LOOKUP),
    "speculative_decoding_fast_logits": (
        "true", lambda s, c: c.speculative_decoding_config.fast_logits),
    "prompt_lookup_num_tokens": (
        "5", lambda s, c: c.speculative_decoding_config.prompt_lookup.max_draft_tokens == 5),
    "prompt_lookup_max_matching_ngram_size": ("4", lambda s, c: c.speculative_decoding_config
                                              .prompt_lookup.max_matching_ngram_size == 4),
    "prompt_lookup_min_matching_ngram_size": ("2", lambda s, c: c.speculative_decoding_config
                                              .prompt_lookup.min_matching_ngram_size == 2),
    "engine_process": ("true", lambda s, c: s.engine_process),
    "stream_coalescing": ("false", lambda s, c: s.stream_coalescing is False),
}
# Read, but checked elsewhere (or not honoured on purpose): every other parameter
# read_settings consults must be in HONOURED.
NOT_HERE = {
    "gpt_model_path", "engine_dir", "tokenizer_dir",  # paths: asserted below
    "engine_device",  # asserted below (it beats gpu_device_ids)
    "encoder_model_path",  # refused: test_bad_parameters
    "lora_prefetch_dir",  # test_llm_set_lora.py
    "draft_model_dir", "draft_model_num_tokens",  # test_llm_set_speculative.py
    "kv_cache_host_memory_bytes", "sink_token_length",  # README: accepted without effect
    # test_llm_set_guided.py
    "guided_decoding_backend", "xgrammar_tokenizer_info_path", "guided_decoding_json_whitespace",
    *P.INEFFECTIVE_PARAMETERS,  # test_ineffective_parameters_warn
}


def test_parameters_are_honoured(tmp_path, monkeypatch):
    read: set[str] = set()
    original_get = P._Params.get

    def spy(self, name):
        read.add(name)
        return original_get(self, name)

    monkeypatch.setattr(P._Params, "get", spy)
    raw = {"gpt_model_path": str(tmp_path), "tokenizer_dir": str(tmp_path),
           **{name: value for name, (value, _) in HONOURED.items()}}
    s = P.read_settings(raw, max_queue_size=5)
    c = s.executor_config
    wrong = [name for name, (_, landed) in HONOURED.items() if not landed(s, c)]
    assert wrong == [], f"parameters that did not reach the settings: {wrong}"
    assert s.engine_dir == tmp_path and s.tokenizer_dir == tmp_path and c.max_queue_size == 5
    assert read - NOT_HERE == set(HONOURED), "a parameter is read but not checked here"
    assert P.read_settings({**raw, "engine_device": "cpu"}).executor_config.device == "cpu"


def test_ineffective_parameters_warn(tmp_path, caplog):
    raw = {"gpt_model_path": str(tmp_path), "cuda_graph_mode": "true", "participant_ids": "0\\,1",
           "multi_block_mode": "true"}
    with caplog.at_level(logging.WARNING):
        s = P.read_settings(raw)
    assert len(s.warnings) == 2
    assert "cuda_graph_mode" in caplog.text and "participant_ids" in caplog.text
    assert "multi_block_mode" not in caplog.text  # its default: nothing to warn about


def test_tensor_parallel_placement(tmp_path, caplog):
    def config(**raw):
        return P.read_settings({"gpt_model_path": str(tmp_path), **raw}).executor_config

    c = config(tensor_parallel_size="2")  # CPU ranks, or GPUs 0 and 1 on CUDA
    assert c.tensor_parallel_size == 2 and c.device_ids is None and c.device is None
    with caplog.at_level(logging.WARNING):
        c = config(gpu_device_ids="2,3")  # TensorRT-LLM takes tp from the engine
    assert c.tensor_parallel_size == 1 and c.device == "cuda:2" and c.device_ids is None
    assert "set tensor_parallel_size" in caplog.text
    with pytest.raises(InvalidArgument, match="lists 1 GPUs, tensor_parallel_size 2 needs 2"):
        config(tensor_parallel_size="2", gpu_device_ids="0")
    with pytest.raises(InvalidArgument, match="tensor_parallel_size"):
        config(tensor_parallel_size="0")
    with pytest.raises(InvalidArgument, match="gpu_device_ids"):
        config(gpu_device_ids="a,b")


def test_bad_parameters(tmp_path):
    with pytest.raises(InvalidArgument, match="gpt_model_path"):
        P.read_settings({"gpt_model_path": "${engine_dir}"})
    with pytest.raises(InvalidArgument, match="batch_scheduler_policy"):
        P.read_settings({"gpt_model_path": str(tmp_path), "batch_scheduler_policy": "fifo"})
    with pytest.raises(Unsupported):
        P.read_settings({"gpt_model_path": str(tmp_path), "decoding_mode": "medusa"})
    with pytest.raises(Unsupported):
        P.read_settings({"gpt_model_path": str(tmp_path), "encoder_model_path": str(tmp_path)})


def test_words_from_tensor():
    t = np.array([[5, 6, 7, 0], [2, 3, -1, -1]], np.int32)
    assert rm.words_from_tensor(t, "x") == [[5, 6], [7]]
    assert rm.words_from_tensor(np.zeros((2, 0), np.int32), "x") is None
    with pytest.raises(InvalidArgument):
        rm.words_from_tensor(np.array([[1, 2]], np.int32), "x")


def _batch(**extra):
    base = {"input_ids": np.array([[4, 5, 6, 0]], np.int32), "input_lengths": np.array([3], np.int32),
            "request_output_len": np.array([8], np.int32)}
    base.update({k: np.asarray(v) for k, v in extra.items()})
    return base


def test_build_request_maps_both_tensor_names():
    (item,) = rm.split_batch(_batch(min_length=[2], random_seed=np.array([9], np.uint64),
                                    return_kv_cache_reuse_stats=[True], runtime_top_k=[3],
                                    runtime_top_p=[0.5], len_penalty=[1.5], end_id=[2],
                                    stop_words_list=np.array([[[7, 0], [1, -1]]], np.int32)), True)
    req, opts = rm.build_request(item, 0, decoupled=False, default_exclude_input=True)
    assert req.input_token_ids == [4, 5, 6] and req.max_tokens == 8 and req.end_id == 2
    sc = req.sampling_config
    assert sc.min_tokens == 2 and sc.seed == 9 and sc.top_k == 3 and sc.top_p == 0.5
    assert sc.length_penalty == 1.5 and req.stop_words == [[7]]
    assert req.output_config.exclude_input_from_output and opts.return_perf_metrics
    (item,) = rm.split_batch(_batch(min_tokens=[4], seed=np.array([1], np.uint64),
                                    exclude_input_in_output=[False]), True)
    req, _ = rm.build_request(item, 0, decoupled=False, default_exclude_input=True)
    assert req.sampling_config.min_tokens == 4 and req.sampling_config.seed == 1
    assert not req.output_config.exclude_input_from_output


def test_build_request_errors():
    (item,) = rm.split_batch(_batch(streaming=[True]), True)
    with pytest.raises(InvalidArgument, match="decoupled mode"):
        rm.build_request(item, 0, decoupled=False, default_exclude_input=False)
    (item,) = rm.split_batch(_batch(encoder_output_lengths=[3]), True)
    with pytest.raises(Unsupported):
        rm.build_request(item, 0, decoupled=True, default_exclude_input=False)
    (item,) = rm.split_batch(_batch(input_lengths=[9]), True)
    with pytest.raises(InvalidArgument, match="input_lengths"):
        rm.build_request(item, 0, decoupled=True, default_exclude_input=False)
    with pytest.raises(InvalidArgument, match="batch size"):
        rm.split_batch(_batch(temperature=[1.0, 1.0]), True)


def test_window_sink_and_host_memory_parameters(tmp_path):
    raw = {"gpt_model_path": str(tmp_path), "max_attention_window_size": "64,128",
           "sink_token_length": "4", "kv_cache_host_memory_bytes": "1000000",
           "kv_cache_onboard_blocks": "true"}
    s = P.read_settings(raw)
    kv = s.executor_config.kv_cache_config
    assert kv.max_attention_window == [64, 128] and kv.sink_token_length == 4
    assert kv.host_cache_size == 1000000 and s.warnings == []
    raw["max_attention_window_size"] = "32"
    assert P.read_settings(raw).executor_config.kv_cache_config.max_attention_window == 32


def test_prompt_tuning_inputs_map_to_the_request():
    table = np.arange(12, dtype=np.float16).reshape(1, 1, 3, 4)
    (item,) = rm.split_batch(_batch(prompt_embedding_table=table, prompt_vocab_size=[3],
                                    prompt_table_extra_ids=np.array([[7, 7, 0, 5]], np.uint64)),
                             True)
    req, _ = rm.build_request(item, 0, decoupled=True, default_exclude_input=False)
    ptc = req.prompt_tuning_config
    assert ptc.embedding_table.shape == (3, 4) and ptc.embedding_table[2, 3] == 11
    assert ptc.input_token_extra_ids == [7, 7, 0]  # cut to input_lengths, as upstream
    (item,) = rm.split_batch(_batch(prompt_table_extra_ids=np.array([[1, 1, 1]], np.uint64)),
                             True)
    req, _ = rm.build_request(item, 0, decoupled=True, default_exclude_input=False)
    assert req.prompt_tuning_config is None  # extra ids mean nothing without a table


def test_decoding_mode_restricts_sampling():
    (item,) = rm.split_batch(_batch(runtime_top_k=[3], runtime_top_p=[0.5]), True)
    req, _ = rm.build_request(item, 0, decoupled=True, default_exclude_input=False, decoding_mode="top_k")
    assert req.sampling_config.top_k == 3 and req.sampling_config.top_p is None


def test_every_template_input_is_read_rejected_or_ignored_by_design():
    import re

    from model_set_helpers import REPO

    text = (REPO / "all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt").read_text()
    inputs = re.findall(r'name: "([^"]+)"', text[text.index("input ["):text.index("output [")])
    assert len(inputs) > 40 and rm.unused_config_inputs(inputs) == []
    # a newer tensorrtllm_backend input llmserve does not implement: reported for the
    # load-time warning
    assert rm.unused_config_inputs(inputs + ["retention_token_range_starts"]) == [
        "retention_token_range_starts"]
    assert "guided_decoding_guide" in inputs  # read since guided decoding exists
