"""A generated corpus of over 2,000 requests against the LLM server: OpenAI bodies from the
server's own OpenAPI schema, KServe infer (JSON and binary), generate / generate_stream,
gRPC ModelInfer / ModelStreamInfer and raw request lines. Every answer must be a client
error or a success (501 for an unsupported feature), errors in JSON, on a connection
that stays up; afterwards the server is healthy, idle and its greedy output unchanged.
Cases are derandomized: every run sends the same corpus."""

from __future__ import annotations

import json
from collections import Counter

import grpc
import pytest
from fuzz_cases import (
    binary_infer,
    generate_body,
    grpc_request,
    infer_body,
    openai_body,
    request_line,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2_grpc

COUNTS: Counter[str] = Counter()
STATUSES: Counter = Counter()
CORPUS_MIN = 2000
# gRPC statuses a client error may end with; INTERNAL / UNKNOWN would be server faults
GRPC_CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                     grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE,
                     grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.FAILED_PRECONDITION}


def fuzz(examples: int):  # noqa: ANN201
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck))


def allowed(status: int) -> bool:
    return status < 500 or status == 501  # 501: a feature the server does not have


@pytest.fixture(scope="module", autouse=True)
def before(llm):
    """What must hold after the corpus: greedy text, index rows, idle."""
    with llm.client() as c:
        rows = c.post("/v2/repository/index").json()
    return {"greedy": llm.greedy(), "index": rows}


@pytest.fixture(scope="module")
def http(llm):
    with llm.client(timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def metadata(http):
    """Model -> its inputs as metadata lists them, with the config's `optional` flag."""
    out = {}
    for row in http.post("/v2/repository/index").json():
        name = row["name"]
        inputs = http.get(f"/v2/models/{name}").json()["inputs"]
        optional = {i["name"] for i in http.get(f"/v2/models/{name}/config").json()["input"]
                    if i.get("optional")}
        config = http.get(f"/v2/models/{name}/config").json()
        out[name] = {"inputs": [{**i, "optional": i["name"] in optional} for i in inputs],
                     "decoupled": config.get("model_transaction_policy", {}).get("decoupled",
                                                                                False)}
    return out


class OpenApi(tuple):
    """(document, request body schema by path); a short repr, so that a failing case's
    report shows the request and its answer, not the whole document."""

    def __repr__(self) -> str:
        return "<the server's OpenAPI document>"


@pytest.fixture(scope="module")
def openapi(http):
    doc = http.get("/openapi.json").json()
    bodies = {}
    for path in ("/v1/completions", "/v1/chat/completions"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        bodies[path] = body["schema"]
    return OpenApi((doc, bodies))


@pytest.fixture(scope="module")
def stub(llm):
    with grpc.insecure_channel(llm.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def send(http, kind: str, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> int:
    """One request, its whole answer read (streams too); checks status and error shape."""
    COUNTS[kind] += 1
    with http.stream(method, path, content=body, headers=headers) as response:
        content = response.read()
    STATUSES[(kind, response.status_code)] += 1
    status = response.status_code
    assert allowed(status), f"{method} {path} {body!r:.300} -> {status} {content!r:.500}"
    readiness = path.split("?")[0].endswith(("/ready", "/live"))  # status only, as Triton
    if status >= 400 and not readiness:
        doc = json.loads(content)
        assert "error" in doc, content
    return status


@fuzz(200)
@given(data=st.data())
def test_openai_completions(http, openapi, data):
    doc, bodies = openapi
    body = data.draw(openai_body(bodies["/v1/completions"], doc))
    send(http, "openai", "POST", "/v1/completions", body, {"content-type": "application/json"})


@fuzz(200)
@given(data=st.data())
def test_openai_chat(http, openapi, data):
    doc, bodies = openapi
    body = data.draw(openai_body(bodies["/v1/chat/completions"], doc))
    send(http, "openai", "POST", "/v1/chat/completions", body)


@fuzz(400)
@given(data=st.data())
def test_kserve_infer_json(http, metadata, data):
    model, doc = data.draw(infer_body(metadata))
    send(http, "infer", "POST", f"/v2/models/{model}/infer", json.dumps(doc).encode())


@fuzz(250)
@given(data=st.data())
def test_kserve_infer_binary(http, metadata, data):
    model, body, length = data.draw(binary_infer(metadata))
    send(http, "infer_binary", "POST", f"/v2/models/{model}/infer", body,
         {"Inference-Header-Content-Length": length, "content-type": "application/octet-stream"})


@fuzz(350)
@given(data=st.data())
def test_generate(http, metadata, data):
    model = data.draw(st.sampled_from(["ensemble", "tensorrt_llm_bls", "preprocessing", "x"]))
    declared = [i["name"] for i in metadata.get(model, {}).get("inputs", [])]
    body = data.draw(generate_body(declared))
    route = data.draw(st.sampled_from(["generate", "generate_stream"]))
    send(http, "generate", "POST", f"/v2/models/{model}/{route}", body)


@fuzz(250)
@given(data=st.data())
def test_grpc_infer(stub, metadata, data):
    request = data.draw(grpc_request(metadata))
    COUNTS["grpc"] += 1
    try:
        if metadata.get(request.model_name, {}).get("decoupled"):
            for reply in stub.ModelStreamInfer(iter([request]), timeout=30):
                assert "Internal" not in reply.error_message, reply.error_message
                if reply.error_message or _final(reply):
                    break
        else:
            stub.ModelInfer(request, timeout=30)
        STATUSES[("grpc", "OK")] += 1
    except grpc.RpcError as exc:
        STATUSES[("grpc", exc.code().name)] += 1
        assert exc.code() in GRPC_CLIENT_CODES, (exc.code(), exc.details(), request)


def _final(reply) -> bool:
    param = reply.infer_response.parameters.get("triton_final_response")
    return param is not None and param.bool_param


@fuzz(400)
@given(line=request_line())
def test_request_lines(http, line):
    method, path, body = line
    send(http, "request_line", method, path, body)


def test_zz_server_intact_after_corpus(llm, http, before):
    """Runs last in this module: the corpus size, then health, idle, greedy, index."""
    total = sum(COUNTS.values())
    print(f"\nfuzz corpus: {total} requests {dict(COUNTS)}; answers {sorted(STATUSES.items())}")
    assert total >= CORPUS_MIN, COUNTS
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").status_code == 200
    elapsed, held = llm.wait_idle(within=2.0)
    assert not any(held.values()), held
    assert llm.greedy() == before["greedy"]
    assert http.post("/v2/repository/index").json() == before["index"]
