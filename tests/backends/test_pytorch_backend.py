"""The pytorch (TorchScript) backend through InferenceServer: the seed's naming rules
(INPUT__0, forward argument names, config order, dict input), batching of concurrent
requests, data type checks, load errors, parameters and weight sharing."""

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from inproc_server import (
    assert_load_failed,
    collect,
    infer_one,
    make_request,
    running_server,
    settled_stats,
)

from llmserve.backends.base import ModelSpec
from llmserve.backends.pytorch.backend import TorchModel, parse_parameters
from llmserve.core.errors import ErrorCode, ServerError
from llmserve.core.types import InferenceRequest, RequestedOutput, Tensor
from llmserve.options import ServerOptions
from llmserve.repository import load_model_config


class AddSub(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor):
        return a + b, a - b


class Sub(torch.nn.Module):
    def forward(self, input0: torch.Tensor, input1: torch.Tensor):
        return input0 - input1


class DictMul(torch.nn.Module):
    def forward(self, x: dict[str, torch.Tensor]):
        return x["A"] * x["B"]


class SumProd(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor):
        return a + b, a * b


class Affine(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor):
        return a * 2 + b


class WithInt(torch.nn.Module):
    def forward(self, a: torch.Tensor, k: int):
        return a * k


def io(kind, names, dtype="TYPE_FP32", dims="[ 4 ]"):
    items = ",\n  ".join(f'{{ name: "{n}" data_type: {dtype} dims: {dims} }}' for n in names)
    return f"{kind} [\n  {items}\n]\n"


HEAD = 'platform: "pytorch_libtorch"\nmax_batch_size: 8\n'
MODELS = {
    # name: (module, config)
    "simple": (AddSub(), HEAD + "dynamic_batching { max_queue_delay_microseconds: 300000 }\n"
               "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
               + io("input", ["INPUT__0", "INPUT__1"]) + io("output", ["OUTPUT__0", "OUTPUT__1"])),
    "argnames": (Sub(), HEAD + io("input", ["input1", "input0"]) + io("output", ["out"])),
    "strict": (Sub(), HEAD + io("input", ["first", "second"]) + io("output", ["diff"])),
    "dict": (DictMul(), HEAD + io("input", ["B", "A"], "TYPE_INT64") + io("output", ["C"], "TYPE_INT64")),
    "indexed_out": (SumProd(), HEAD + io("input", ["X__0", "Y__1"], "TYPE_INT32")
                    + io("output", ["PROD__1", "SUM__0"], "TYPE_INT32")),
    "nobatch": (Sub(), 'backend: "pytorch"\nmax_batch_size: 0\n'
                + io("input", ["input0", "input1"], "TYPE_FP64", "[ 2, 2 ]")
                + io("output", ["OUTPUT__0"], "TYPE_FP64", "[ 2, 2 ]")),
    "wrong_out_type": (Sub(), HEAD + io("input", ["input0", "input1"])
                       + io("output", ["OUTPUT__0"], "TYPE_INT32")),
    "half": (Affine(), HEAD + io("input", ["a", "b"], "TYPE_FP16") + io("output", ["c"], "TYPE_FP16")),
    "bf16": (Affine(), HEAD + io("input", ["a", "b"], "TYPE_BF16") + io("output", ["c"], "TYPE_BF16")),
    "ragged_fail": (Sub(), HEAD + io("input", ["input0", "input1"], dims="[ -1 ]")
                    + io("output", ["OUTPUT__0"], dims="[ -1 ]")),
}
LOAD_ERRORS = {
    "bad_file": (b"not a torchscript archive", HEAD + io("input", ["a", "b"]) + io("output", ["c"]),
                 "failed to load TorchScript model"),
    "bytes_type": (Sub(), HEAD + io("input", ["input0", "input1"], "TYPE_STRING")
                   + io("output", ["o"]), "unsupported datatype TYPE_STRING for input 'input0'"),
    "count": (Sub(), HEAD + io("input", ["input0"]) + io("output", ["o"]),
              "configuration expects 1 inputs, model provides 2"),
    "int_arg": (WithInt(), HEAD + io("input", ["a", "k"]) + io("output", ["o"]),
                "An input of type 'int' (argument 'k') was detected"),
    "dup_index": (Sub(), HEAD + io("input", ["A__0", "B__0"]) + io("output", ["o"]),
                  "both map to index 0"),
}


def write_torch(repo: Path, name: str, module, config: str) -> None:
    vdir = repo / name / "1"
    vdir.mkdir(parents=True)
    if isinstance(module, bytes):
        (vdir / "model.pt").write_bytes(module)
    else:
        torch.jit.save(torch.jit.script(module), str(vdir / "model.pt"))
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def torch_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("torch_repo")
    for name, (module, config) in MODELS.items():
        write_torch(repo, name, module, config)
    for name, (module, config, _) in LOAD_ERRORS.items():
        write_torch(repo, name, module, config)
    return repo


@pytest.fixture(scope="module")
def torch_server(torch_repo):
    with running_server(torch_repo) as server:
        yield server


def test_named_index_add_sub(torch_server):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 3, np.float32)
    resp = infer_one(torch_server, "simple", {"INPUT__0": a, "INPUT__1": b})
    assert resp.error is None, resp.error
    np.testing.assert_array_equal(resp.output("OUTPUT__0").data, a + b)
    np.testing.assert_array_equal(resp.output("OUTPUT__1").data, a - b)
    assert torch_server.model_metadata("simple")["platform"] == "pytorch_libtorch"


def test_forward_argument_names_beat_config_order(torch_server):
    a = np.ones((1, 4), np.float32) * 10
    b = np.ones((1, 4), np.float32)
    resp = infer_one(torch_server, "argnames", {"input0": a, "input1": b})
    np.testing.assert_array_equal(resp.output("out").data, a - b)  # not b - a


def test_strict_config_order(torch_server):
    a = np.ones((1, 4), np.float32) * 10
    b = np.ones((1, 4), np.float32)
    resp = infer_one(torch_server, "strict", {"first": a, "second": b})
    np.testing.assert_array_equal(resp.output("diff").data, a - b)


def test_dict_input(torch_server):
    a = np.array([[1, 2, 3, 4]], np.int64)
    b = np.array([[2, 2, 2, 2]], np.int64)
    resp = infer_one(torch_server, "dict", {"A": a, "B": b})
    assert resp.error is None, resp.error
    assert resp.output("C").datatype == "INT64"
    np.testing.assert_array_equal(resp.output("C").data, a * b)


def test_outputs_by_index_and_requested_output(torch_server):
    x = np.array([[1, 2, 3, 4]], np.int32)
    y = np.array([[5, 6, 7, 8]], np.int32)
    resp = infer_one(torch_server, "indexed_out", {"X__0": x, "Y__1": y})
    np.testing.assert_array_equal(resp.output("SUM__0").data, x + y)
    np.testing.assert_array_equal(resp.output("PROD__1").data, x * y)
    resp = infer_one(torch_server, "indexed_out", {"X__0": x, "Y__1": y},
                     requested_outputs=[RequestedOutput("PROD__1")])
    assert [t.name for t in resp.outputs] == ["PROD__1"]


def test_fp16_and_bf16_tensors(torch_server):
    a = np.array([[1.5, -2, 3, 0.25]], np.float16)
    resp = infer_one(torch_server, "half", {"a": a, "b": np.ones((1, 4), np.float16)})
    assert resp.error is None, resp.error
    assert resp.output("c").datatype == "FP16" and resp.output("c").data.dtype == np.float16
    np.testing.assert_array_equal(resp.output("c").data, a * 2 + 1)
    # BF16 travels as float32 values; 1.5 * 2 - 0.5 and friends are exact in bfloat16
    x = np.array([[1.5, -2, 3, 0.25]], np.float32)
    request = InferenceRequest("bf16", {"a": Tensor("a", "BF16", x),
                                        "b": Tensor("b", "BF16", np.full((1, 4), -0.5, np.float32))})
    [resp] = torch_server.run(collect(torch_server, request))
    assert resp.error is None, resp.error
    assert resp.output("c").datatype == "BF16" and resp.output("c").data.dtype == np.float32
    np.testing.assert_array_equal(resp.output("c").data, x * 2 - 0.5)


def test_non_batching_model(torch_server):
    a = np.array([[4.0, 3.0], [2.0, 1.0]])
    resp = infer_one(torch_server, "nobatch", {"input0": a, "input1": a / 2})
    assert resp.output("OUTPUT__0").data.dtype == np.float64
    np.testing.assert_array_equal(resp.output("OUTPUT__0").data, a / 2)


def test_concurrent_requests_are_batched(torch_server):
    before = torch_server.statistics("simple")["model_stats"][0]
    inputs = [np.full((1 + i % 3, 4), i, np.float32) for i in range(5)]

    async def run_all():
        reqs = [make_request("simple", {"INPUT__0": x, "INPUT__1": x}) for x in inputs]
        return await asyncio.gather(*(collect(torch_server, r) for r in reqs))

    for x, [resp] in zip(inputs, torch_server.run(run_all()), strict=True):
        assert resp.error is None, resp.error
        np.testing.assert_array_equal(resp.output("OUTPUT__0").data, x * 2)
        assert resp.output("OUTPUT__1").data.shape == x.shape
    after = settled_stats(torch_server, "simple", before, 9)
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert int(after["inference_count"]) - int(before["inference_count"]) == 9
    assert 1 <= executions < len(inputs)


def test_output_dtype_mismatch_fails_the_request(torch_server):
    a = np.ones((1, 4), np.float32)
    resp = infer_one(torch_server, "wrong_out_type", {"input0": a, "input1": a})
    assert resp.error is not None and resp.error.code == ErrorCode.INTERNAL
    assert "unexpected datatype TYPE_FP32 for inference output 'OUTPUT__0'" in resp.error.message


def test_forward_error_fails_request_and_model_keeps_serving(torch_server):
    resp = infer_one(torch_server, "ragged_fail", {"input0": np.ones((1, 4), np.float32),
                                                   "input1": np.ones((1, 3), np.float32)})
    assert resp.error is not None and resp.error.code == ErrorCode.INTERNAL
    assert "PyTorch execute failure" in resp.error.message
    ok = infer_one(torch_server, "ragged_fail", {"input0": np.ones((1, 3), np.float32),
                                                 "input1": np.ones((1, 3), np.float32)})
    assert ok.error is None
    np.testing.assert_array_equal(ok.output("OUTPUT__0").data, np.zeros((1, 3), np.float32))


def test_request_datatype_checked_against_config(torch_server):
    with pytest.raises(ServerError) as info:
        infer_one(torch_server, "dict", {"A": np.ones((1, 4), np.float32),
                                         "B": np.ones((1, 4), np.float32)})
    assert info.value.code == ErrorCode.INVALID_ARG


@pytest.mark.parametrize("name", sorted(LOAD_ERRORS))
def test_load_errors_make_the_model_unavailable(torch_server, name):
    assert_load_failed(torch_server, name, LOAD_ERRORS[name][2])


def _spec(torch_repo, name, params: str) -> ModelSpec:
    model_dir = torch_repo / name
    config = load_model_config(model_dir, ServerOptions())
    from llmserve.config.parse import parse_config_text

    config.MergeFrom(parse_config_text(params, "params"))
    return ModelSpec(name, 1, model_dir, config, "{}", ServerOptions(), None)


def test_weight_sharing(torch_repo):
    cpu = torch.device("cpu")
    shared = TorchModel(_spec(torch_repo, "simple", 'parameters { key: "ENABLE_WEIGHT_SHARING" '
                                                    'value: { string_value: "true" } }'))
    assert shared.load_module(cpu)[0] is shared.load_module(cpu)[0]
    own = TorchModel(_spec(torch_repo, "simple", ""))
    assert own.load_module(cpu)[0] is not own.load_module(cpu)[0]


def test_parameters(torch_repo, caplog):
    spec = _spec(torch_repo, "argnames", """
parameters { key: "INFERENCE_MODE" value: { string_value: "false" } }
parameters { key: "DISABLE_OPTIMIZED_EXECUTION" value: { string_value: "true" } }
parameters { key: "SOMETHING_ELSE" value: { string_value: "1" } }
""")
    with caplog.at_level(logging.WARNING):
        params = parse_parameters(spec.config)
    assert params["INFERENCE_MODE"] is False and params["DISABLE_OPTIMIZED_EXECUTION"] is True
    assert "parameter 'SOMETHING_ELSE' is not used by the pytorch backend" in caplog.text
    from llmserve.backends.base import InstanceSpec

    inst = TorchModel(spec).create_instance(InstanceSpec("argnames_0", "KIND_CPU", 0, "g", 0))
    assert inst.inference_mode is False and inst.optimize is False
    bad = _spec(torch_repo, "argnames", 'parameters { key: "INFERENCE_MODE" '
                                        'value: { string_value: "maybe" } }')
    with pytest.raises(ServerError, match="expects true or false"):
        parse_parameters(bad.config)
