"""The config.pbtxt templates: every seed parameter has a placeholder; filled by
scripts/fill_demo_repository.py (tools/fill_template.py) they load with the config loader."""

import re
import sys

import pytest
from llm_fixtures import make_tiny_checkpoint
from model_set_helpers import MODEL_SET, REPO

from llmserve.options import ServerOptions
from llmserve.repository import backend_of, load_model_config

sys.path.insert(0, str(REPO / "scripts"))
import fill_demo_repository  # noqa: E402

# The seed's parameter tables (모델 매개변수), per model.
SEED_PARAMETERS = {
    "ensemble": ["triton_max_batch_size", "logits_datatype"],
    "preprocessing": ["triton_max_batch_size", "tokenizer_dir", "preprocessing_instance_count",
                      "add_special_tokens", "visual_model_path", "engine_dir"],
    "postprocessing": ["triton_max_batch_size", "tokenizer_dir", "postprocessing_instance_count",
                       "skip_special_tokens"],
    "tensorrt_llm": [
        "triton_backend", "triton_max_batch_size", "decoupled_mode", "max_queue_delay_microseconds",
        "max_queue_size", "engine_dir", "batching_strategy", "encoder_input_features_data_type",
        "logits_datatype", "encoder_engine_dir", "max_attention_window_size", "sink_token_length",
        "exclude_input_in_output", "cancellation_check_period_ms", "stats_check_period_ms",
        "recv_poll_period_ms", "iter_stats_max_iterations", "request_stats_max_iterations",
        "normalize_log_probs", "gpu_device_ids", "participant_ids", "gpu_weights_percent",
        "max_tokens_in_paged_kv_cache", "kv_cache_free_gpu_mem_fraction", "cross_kv_cache_fraction",
        "kv_cache_host_memory_bytes", "enable_kv_cache_reuse", "lora_cache_optimal_adapter_size",
        "lora_cache_max_adapter_size", "lora_cache_gpu_memory_fraction",
        "lora_cache_host_memory_bytes", "max_beam_width", "decoding_mode", "enable_chunked_context",
        "multi_block_mode", "enable_context_fmha_fp32_acc", "cuda_graph_mode",
        "cuda_graph_cache_size", "batch_scheduler_policy", "medusa_choices", "eagle_choices",
    ],
    "tensorrt_llm_bls": ["triton_max_batch_size", "decoupled_mode", "bls_instance_count",
                         "logits_datatype", "accumulate_tokens", "tensorrt_llm_model_name",
                         "tensorrt_llm_draft_model_name"],
}


@pytest.mark.parametrize("model", sorted(SEED_PARAMETERS))
def test_every_seed_parameter_has_a_placeholder(model):
    text = (MODEL_SET / model / "config.pbtxt").read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    missing = [p for p in SEED_PARAMETERS[model] if p not in placeholders]
    assert not missing, f"{model}: no placeholder for {missing}"


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    base = tmp_path_factory.mktemp("filled")
    ckpt = make_tiny_checkpoint(base / "ckpt")
    return fill_demo_repository.fill_repository(base / "repo", ckpt, draft_dir=ckpt)


@pytest.mark.parametrize(
    "model, backend",
    [("preprocessing", "python"), ("postprocessing", "python"), ("tensorrt_llm", "tensorrtllm"),
     ("tensorrt_llm_bls", "python"), ("ensemble", "ensemble"), ("tensorrt_llm_draft", "tensorrtllm")],
)
def test_filled_templates_load(filled, model, backend):
    config = load_model_config(filled / model, ServerOptions(model_repositories=[filled]))
    assert config.name == model
    assert backend_of(config) == backend
    if model.startswith("tensorrt_llm") and model != "tensorrt_llm_bls":
        assert config.model_transaction_policy.decoupled
        assert config.parameters["gpt_model_path"].string_value == str(
            (filled.parent / "ckpt").resolve())
        # unfilled optional parameters stay as their placeholders ("unset")
        assert config.parameters["medusa_choices"].string_value == "${medusa_choices}"
        scalar = next(i for i in config.input if i.name == "temperature")
        assert list(scalar.dims) == [1] and list(scalar.reshape.shape) == [] and scalar.optional
        assert scalar.HasField("reshape")
    if model == "ensemble":
        steps = [s.model_name for s in config.ensemble_scheduling.step]
        assert steps == ["preprocessing", "tensorrt_llm", "postprocessing"]
        names = [o.name for o in config.output]
        assert len(names) == len(set(names))


def test_fill_refuses_existing_folder(filled):
    with pytest.raises(FileExistsError):
        fill_demo_repository.fill_repository(filled, filled.parent / "ckpt")


def test_fill_can_keep_the_python_models_in_process(filled):
    repo = fill_demo_repository.fill_repository(filled.parent / "in_process", filled.parent / "ckpt",
                                                python_execution_mode="in_process")
    for model in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        config = load_model_config(repo / model, ServerOptions(model_repositories=[repo]))
        assert config.parameters["PYTHON_EXECUTION_MODE"].string_value == "in_process"
    config = load_model_config(filled / "preprocessing", ServerOptions(model_repositories=[filled]))
    assert "PYTHON_EXECUTION_MODE" not in config.parameters  # stubs, the default
