import pytest

from llmserve.config.ensemble import validate_ensemble, validate_ensemble_steps
from llmserve.config.errors import ConfigError
from llmserve.config.parse import parse_config_text

# A small version of inflight_batcher_llm's ensemble: text in, preprocessing,
# tensorrt_llm, postprocessing, text out.
ENSEMBLE = """
name: "ensemble"
platform: "ensemble"
max_batch_size: 4
input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] } ]
ensemble_scheduling {
  step [
    { model_name: "preprocessing" model_version: -1
      input_map { key: "QUERY" value: "text_input" }
      input_map { key: "REQUEST_OUTPUT_LEN" value: "max_tokens" }
      output_map { key: "INPUT_ID" value: "_INPUT_ID" }
      output_map { key: "REQUEST_OUTPUT_LEN" value: "_REQUEST_OUTPUT_LEN" } },
    { model_name: "tensorrt_llm" model_version: -1
      input_map { key: "input_ids" value: "_INPUT_ID" }
      input_map { key: "request_output_len" value: "_REQUEST_OUTPUT_LEN" }
      output_map { key: "output_ids" value: "_TOKENS_BATCH" } },
    { model_name: "postprocessing" model_version: -1
      input_map { key: "TOKENS_BATCH" value: "_TOKENS_BATCH" }
      output_map { key: "OUTPUT" value: "text_output" } }
  ]
}
"""

STEPS = {
    "preprocessing": """
input [ { name: "QUERY" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "REQUEST_OUTPUT_LEN" data_type: TYPE_INT32 dims: [ 1 ] },
        { name: "BAD_WORDS_DICT" data_type: TYPE_STRING dims: [ -1 ] optional: true } ]
output [ { name: "INPUT_ID" data_type: TYPE_INT32 dims: [ -1 ] },
         { name: "REQUEST_OUTPUT_LEN" data_type: TYPE_INT32 dims: [ 1 ] } ]""",
    "tensorrt_llm": """
input [ { name: "input_ids" data_type: TYPE_INT32 dims: [ -1 ] },
        { name: "request_output_len" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "output_ids" data_type: TYPE_INT32 dims: [ -1, -1 ] } ]""",
    "postprocessing": """
input [ { name: "TOKENS_BATCH" data_type: TYPE_INT32 dims: [ -1, -1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_STRING dims: [ -1 ] } ]""",
}


def steps(**changes):
    return {name: parse_config_text(changes.get(name, text)) for name, text in STEPS.items()}


def test_valid_ensemble():
    config = parse_config_text(ENSEMBLE)
    validate_ensemble(config)
    validate_ensemble_steps(config, steps())
    validate_ensemble_steps(config, {})  # step models unknown yet: graph checks only


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda t: t.replace('name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] }',
                             'name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] },\n'
                             '{ name: "unused" data_type: TYPE_INT32 dims: [ 1 ] }'),
         "ensemble input 'unused' for ensemble 'ensemble' is not used"),
        (lambda t: t.replace('value: "text_output"', 'value: "other"'),
         "ensemble output 'text_output' for ensemble 'ensemble' is not written"),
        (lambda t: t.replace('value: "_TOKENS_BATCH" }\n      output_map', 'value: "_X" }\n'
                             '      output_map'),
         "ensemble tensor '_X'"),
        (lambda t: t.replace('input_map { key: "TOKENS_BATCH" value: "_TOKENS_BATCH" }',
                             'input_map { key: "TOKENS_BATCH" value: "_NEVER" }'),
         "ensemble tensor '_NEVER' of ensemble 'ensemble' is used as a step input but is "
         "neither an ensemble input nor any step's output"),
        (lambda t: t.replace('input_map { key: "TOKENS_BATCH" value: "_TOKENS_BATCH" }',
                             'input_map { key: "TOKENS_BATCH" value: "text_output" }'),
         "output 'text_output' for ensemble 'ensemble' is not written: a step producing it"),
        (lambda t: t.replace('value: "_TOKENS_BATCH" } },', 'value: "_INPUT_ID" } },'),
         "ensemble tensor '_INPUT_ID' can appear in an output map only once"),
        (lambda t: t + "instance_group [ { kind: KIND_CPU } ]",
         "instance group should not be specified for ensemble 'ensemble'"),
        (lambda t: t + "optimization { priority: PRIORITY_MAX }",
         "optimization should not be specified for ensemble"),
        (lambda t: t + 'model_warmup [ { name: "w" batch_size: 1 } ]',
         "model_warmup can not be specified for ensemble"),
        (lambda t: t.replace('model_name: "postprocessing"', 'model_name: ""'),
         "must specify 'model_name' in step 2 of ensemble 'ensemble'"),
        (lambda t: t[: t.index("ensemble_scheduling")] + "ensemble_scheduling { }",
         "must specify 'step' for ensemble 'ensemble'"),
    ],
)
def test_bad_ensembles(edit, expected):
    config = parse_config_text(edit(ENSEMBLE))
    with pytest.raises(ConfigError) as e:
        validate_ensemble(config)
    assert expected in str(e.value)


@pytest.mark.parametrize(
    "step_edits, expected",
    [
        ({"postprocessing": STEPS["postprocessing"].replace('"TOKENS_BATCH"', '"TOKENS"')},
         "input_map names 'TOKENS_BATCH', which is not an input of model 'postprocessing'"),
        ({"tensorrt_llm": STEPS["tensorrt_llm"].replace('"output_ids"', '"ids"')},
         "output_map names 'output_ids', which is not an output of model 'tensorrt_llm'"),
        ({"tensorrt_llm": STEPS["tensorrt_llm"].replace(
            'request_output_len" data_type: TYPE_INT32 dims: [ 1 ] }',
            'request_output_len" data_type: TYPE_INT32 dims: [ 1 ] },'
            '{ name: "end_id" data_type: TYPE_INT32 dims: [ 1 ] }')},
         "required input(s) end_id of model 'tensorrt_llm' are not mapped"),
        ({"tensorrt_llm": STEPS["tensorrt_llm"].replace("TYPE_INT32 dims: [ -1, -1 ]",
                                                        "TYPE_INT64 dims: [ -1, -1 ]")},
         "tensor '_TOKENS_BATCH' is TYPE_INT64"),
        ({"postprocessing": STEPS["postprocessing"].replace("TYPE_STRING", "TYPE_INT32")},
         "output 'text_output' is declared TYPE_STRING"),
    ],
)
def test_step_models_checked(step_edits, expected):
    config = parse_config_text(ENSEMBLE)
    with pytest.raises(ConfigError) as e:
        validate_ensemble_steps(config, steps(**step_edits))
    assert expected in str(e.value)
