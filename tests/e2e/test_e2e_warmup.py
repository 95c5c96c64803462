"""End to end: model_warmup. Every instance runs every sample (zero_data, random_data,
input_data_file from the model's warmup/ folder; batch_size requests, count times; batch
size 0 skipped) before the model is READY, and a failing sample fails the load with its
name in the reason, seen through tritonclient over HTTP and gRPC."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options
from tritonclient.utils import InferenceServerException

MODEL_PY = Path(__file__).parent / "warmup_models" / "logging_model.py"
REPEAT = Path(__file__).parents[2] / "examples" / "python_models" / "repeat"


def _input(name, data_type, dims, source):
    return (f'inputs {{ key: "{name}" value: {{ data_type: {data_type} dims: [ {dims} ] '
            f'{source} }} }}')


def _sample(name, batch_size, count, inputs):
    return f'{{ name: "{name}" batch_size: {batch_size} count: {count} {" ".join(inputs)} }}'


ZEROS = _input("IN", "TYPE_FP32", "3", "zero_data: true")
TEXT_ZERO = _input("TEXT", "TYPE_STRING", "1", "zero_data: true")
SAMPLES = {
    "warm": [
        _sample("zeros", 2, 2, [ZEROS, _input("TEXT", "TYPE_STRING", "1", "random_data: true")]),
        _sample("skipped", 0, 1, [ZEROS, TEXT_ZERO]),
        _sample("from file", 1, 0, [_input("IN", "TYPE_FP32", "3", 'input_data_file: "in.bin"'),
                                    _input("TEXT", "TYPE_STRING", "1",
                                           'input_data_file: "text.bin"')]),
        _sample("random", 1, 1, [_input("IN", "TYPE_FP32", "3", "random_data: true"),
                                 TEXT_ZERO]),
    ],
    "warm_fail": [_sample("ok sample", 1, 1, [ZEROS, TEXT_ZERO]),
                  _sample("zero sample", 1, 1, [_input("IN", "TYPE_FP32", "3",
                                                       'input_data_file: "minus.bin"'),
                                                TEXT_ZERO])],
    "warm_no_file": [_sample("missing", 1, 1, [_input("IN", "TYPE_FP32", "3",
                                                      'input_data_file: "nope.bin"'),
                                               TEXT_ZERO])],
    "warm_short_file": [_sample("short", 1, 1, [_input("IN", "TYPE_FP32", "3",
                                                       'input_data_file: "in.bin"'),
                                                TEXT_ZERO])],
}
FILES = {  # warmup/ data per model
    "warm": {"in.bin": np.array([1.5, -2, 3], "<f4").tobytes(),
             "text.bin": struct.pack("<I", 5) + b"hello"},
    "warm_fail": {"minus.bin": np.array([-1, 0, 0], "<f4").tobytes()},
    "warm_short_file": {"in.bin": b"\0" * 11},
}


def _config(name: str, log_path: Path) -> str:
    return f"""
backend: "python"
max_batch_size: 4
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 3 ] }},
        {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 2 }} ]
parameters {{ key: "log_path" value: {{ string_value: "{log_path / (name + '.jsonl')}" }} }}
model_warmup [ {", ".join(SAMPLES[name])} ]
"""


@pytest.fixture(scope="module")
def warm_live(tmp_path_factory):
    repo = tmp_path_factory.mktemp("warmup_repo")
    logs = tmp_path_factory.mktemp("warmup_logs")
    for name in SAMPLES:
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(MODEL_PY, repo / name / "1" / "model.py")
        (repo / name / "config.pbtxt").write_text(_config(name, logs))
        for file_name, data in FILES.get(name, {}).items():
            (repo / name / "warmup").mkdir(exist_ok=True)
            (repo / name / "warmup" / file_name).write_bytes(data)
    shutil.copytree(REPEAT, repo / "warm_repeat", ignore=shutil.ignore_patterns("__pycache__"))
    with open(repo / "warm_repeat" / "config.pbtxt", "a") as f:
        f.write("model_warmup [ " + _sample("decoupled sample", 1, 2, [
            _input("IN", "TYPE_INT32", "3", "zero_data: true")]) + " ]\n")
    server = LiveServer(e2e_options(model_repositories=[repo], model_control_mode="explicit",
                                    load_models=["warm"]))
    server.logs = logs
    yield server
    server.stop()


def _log(live, name):
    lines = (live.logs / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_every_instance_runs_every_sample_before_ready(warm_live):
    with warm_live.clients() as (client, _):
        assert client.is_model_ready("warm")
        runs = _log(warm_live, "warm")  # complete when the load returned: READY came after
        instances = sorted({r["instance"] for r in runs})
        assert len(instances) == 2
        for instance in instances:
            mine = [r["requests"] for r in runs if r["instance"] == instance]
            # zeros: 2 runs of 2 requests; "from file" (count 0 = once); random; no "skipped"
            assert [len(batch) for batch in mine] == [2, 2, 1, 1]
            for req in mine[0] + mine[1]:
                assert req == {"IN": [[0.0, 0.0, 0.0]], "IN_dtype": "float32",
                               "TEXT": [""], "TEXT_shape": [1, 1]}
            assert mine[2][0]["IN"] == [[1.5, -2.0, 3.0]] and mine[2][0]["TEXT"] == ["hello"]
            assert np.asarray(mine[3][0]["IN"]).shape == (1, 3) and mine[3][0]["TEXT"] == [""]
        stats = client.get_inference_statistics("warm")["model_stats"][0]
        assert stats["execution_count"] == 8 and stats["inference_count"] == 12
        inp = [th.InferInput("IN", [1, 3], "FP32"), th.InferInput("TEXT", [1, 1], "BYTES")]
        inp[0].set_data_from_numpy(np.ones((1, 3), np.float32))
        inp[1].set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
        np.testing.assert_array_equal(client.infer("warm", inp).as_numpy("OUT"),
                                      np.full((1, 3), 2, np.float32))


@pytest.mark.parametrize("name, reason", [
    ("warm_fail", "failed to run warmup sample 'zero sample': An Error Occurred;"),
    ("warm_no_file", "failed to run warmup sample 'missing': failed to read warmup data file"),
    ("warm_short_file", "failed to run warmup sample 'short': warmup setting expects 12 bytes, "
                        "but the data provided from in.bin only has 11 bytes"),
])
def test_failing_warmup_fails_the_load(warm_live, name, reason):
    with warm_live.clients() as (hc, gc):
        with pytest.raises(InferenceServerException) as info:
            hc.load_model(name)
        assert reason in info.value.message()
        assert not gc.is_model_ready(name)
        [row] = [m for m in gc.get_model_repository_index(as_json=True)["models"]
                 if m["name"] == name]
        assert row["state"] == "UNAVAILABLE" and reason in row["reason"]
        with pytest.raises(InferenceServerException) as again:
            gc.load_model(name)
        assert reason in again.value.message()


def test_decoupled_model_warms_up_through_its_final_response(warm_live):
    with warm_live.clients() as (_, client):
        client.load_model("warm_repeat")  # responses come from a thread after execute()
        stats = client.get_inference_statistics("warm_repeat", as_json=True)["model_stats"][0]
        assert int(stats["execution_count"]) == 2
        assert int(stats["inference_stats"]["success"]["count"]) == 2
