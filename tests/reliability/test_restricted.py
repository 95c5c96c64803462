"""Restricted endpoints (Triton's --http-restricted-api / --grpc-restricted-protocol) and
the OpenAI API key: each restricted group refused without its header (HTTP 403, gRPC
UNAVAILABLE, Triton's messages) and served with it; unrestricted groups stay open; a body
over the limit is a 413 before it is parsed."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from e2e.e2e_live import LiveServer, e2e_options
from tritonclient.utils import InferenceServerException

from llmserve.cli import parse_serve_args

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python_models"
ADMIN = ("admin-key", "s3cret=with:colon")
INFER = ("infer-key", "let-me-in")
OPENAI_KEY = "sk-reliability"
BODY_LIMIT = 64 * 1024
FLAGS = ["--model-repository", str(EXAMPLES),
         "--http-restricted-api", f"model-repository,model-config:{ADMIN[0]}={ADMIN[1]}",
         "--http-restricted-api", f"inference,statistics:{INFER[0]}={INFER[1]}",
         "--grpc-restricted-protocol", f"model-repository,health:{ADMIN[0]}={ADMIN[1]}",
         "--grpc-restricted-protocol", f"inference:{INFER[0]}={INFER[1]}",
         "--openai-api-key", OPENAI_KEY, "--http-max-input-size", str(BODY_LIMIT),
         "--model-control-mode", "explicit", "--load-model", "add_sub"]


@pytest.fixture(scope="module")
def server():
    parsed = parse_serve_args(FLAGS)
    options = e2e_options(
        model_repositories=parsed.model_repositories, model_control_mode="explicit",
        load_models=["add_sub"], http_restricted_apis=parsed.http_restricted_apis,
        grpc_restricted_protocols=parsed.grpc_restricted_protocols,
        openai_api_key=parsed.openai_api_key, http_max_body_bytes=parsed.http_max_body_bytes)
    live = LiveServer(options)
    yield live
    live.stop()


def test_flags_parse_as_triton_does():
    options = parse_serve_args(FLAGS)
    assert options.http_restricted_apis == {
        "model-repository": ADMIN, "model-config": ADMIN,
        "inference": INFER, "statistics": INFER}
    assert options.grpc_restricted_protocols["health"] == (
        "triton-grpc-protocol-admin-key", ADMIN[1])
    for bad in ("nope:k=v", "inference:k", "inference:=v", ":k=v", "inference:k="):
        with pytest.raises(SystemExit):
            parse_serve_args(["--model-repository", "x", "--http-restricted-api", bad])
    with pytest.raises(SystemExit):  # one group in two flags
        parse_serve_args(["--model-repository", "x", "--grpc-restricted-protocol", "health:a=1",
                          "--grpc-restricted-protocol", "health,trace:b=2"])


INFER_BODY = json.dumps({"inputs": [
    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
    {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]})
HTTP_CALLS = [  # (group's header or None, method, path, body, status when served)
    (ADMIN, "POST", "/v2/repository/index", None, 200),
    (ADMIN, "POST", "/v2/repository/models/add_sub/load", None, 200),
    (ADMIN, "GET", "/v2/models/add_sub/config", None, 200),
    (INFER, "POST", "/v2/models/add_sub/infer", INFER_BODY, 200),
    (INFER, "POST", "/v2/models/add_sub/versions/1/infer", INFER_BODY, 200),
    (INFER, "GET", "/v2/models/add_sub/stats", None, 200),
    (INFER, "GET", "/v2/models/stats", None, 200),
    (None, "GET", "/v2/health/ready", None, 200),
    (None, "GET", "/v2/models/add_sub", None, 200),
    (None, "GET", "/v2", None, 200),
]


@pytest.mark.parametrize("header,method,path,body,served", HTTP_CALLS)
def test_http_groups(server, header, method, path, body, served):
    url = f"http://{server.http_url}{path}"
    if header is not None:
        for sent in ({}, {header[0]: "wrong"}, {"other": header[1]}):
            r = httpx.request(method, url, content=body, headers=sent)
            assert r.status_code == 403, (sent, r.text)
            assert r.json() == {"error": f"This API is restricted, expecting header '{header[0]}'"}
    headers = {header[0].upper(): header[1]} if header else {}  # names are case-insensitive
    r = httpx.request(method, url, content=body, headers=headers)
    assert r.status_code == served, r.text


def test_grpc_groups(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    admin = {f"triton-grpc-protocol-{ADMIN[0]}": ADMIN[1]}
    infer = {f"triton-grpc-protocol-{INFER[0]}": INFER[1]}
    for call in (lambda h: client.is_server_live(headers=h),
                 lambda h: client.get_model_repository_index(headers=h)):
        with pytest.raises(InferenceServerException) as err:
            call({})
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        assert "This protocol is restricted, expecting header " \
               "'triton-grpc-protocol-admin-key'" in err.value.message()
        assert call(admin) is not None
    inputs = [grpcclient.InferInput(n, [1, 4], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("add_sub", inputs, headers=admin)
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    out = client.infer("add_sub", inputs, headers=infer).as_numpy("OUTPUT0")
    assert out.tolist() == [[2.0] * 4]
    assert client.get_model_metadata("add_sub").name == "add_sub"  # metadata: open
    client.close()


def test_openai_api_key(server):
    url = f"http://{server.http_url}/v1"
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": OPENAI_KEY}):
        r = httpx.get(f"{url}/models", headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0).models.list()
    models = openai.OpenAI(base_url=url, api_key=OPENAI_KEY, max_retries=0).models.list()
    assert models.object == "list"


def test_body_over_the_limit_is_413_before_parsing(server):
    big = b"[" * (BODY_LIMIT + 1)  # would be a deep-nesting 400 if it were parsed
    for path, headers in (("/v1/completions", {"Authorization": f"Bearer {OPENAI_KEY}"}),
                          ("/v2/models/add_sub/infer", {INFER[0]: INFER[1]})):
        r = httpx.post(f"http://{server.http_url}{path}", content=big, headers=headers)
        assert r.status_code == 413, r.text
