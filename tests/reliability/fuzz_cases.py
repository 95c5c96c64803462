"""Generated request cases for the fuzz suite (hypothesis strategies): OpenAI bodies drawn
from the server's own OpenAPI schema and then mutated, KServe infer bodies (JSON and the
binary extension), generate bodies, gRPC requests and raw request lines. Valid-looking
cases keep generation short (a few tokens) so the corpus stays fast."""

from __future__ import annotations

import json
import math
import struct
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

SURROGATES = ["\ud800", "\udfff", "a\udbffb", "\udc00\ud800"]
STRANGE_TEXT = ["", " ", "x" * 300, "\x00", "\r\nX-Injected: 1", "../..", "%2e%2e",
                "\u202e", "😀", "\ufffd"]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES", "STRING", "FP8", "", "int32"]
BIG_INTS = [-(2**63) - 1, -(2**31), -1, 0, 1, 2**31, 2**63, 2**64, 10**30]
FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0]

plain_texts = st.one_of(st.text(min_size=1, max_size=16), st.sampled_from(STRANGE_TEXT))
texts = st.one_of(plain_texts, st.sampled_from(SURROGATES))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000),
                    st.sampled_from(BIG_INTS), st.floats(), st.sampled_from(FLOATS), texts)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=6)


def dumps(doc: Any) -> bytes:
    """JSON as a client could send it: NaN/Infinity tokens and \\ud800 escapes allowed."""
    return json.dumps(doc, allow_nan=True).encode()


raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.just(b""), st.just(b"{"), st.just(b'{"a": }'), st.just(b"null"), st.just(b"[]"),
    st.just(b"\xff\xfe{}"), st.just(b'{"text_input": "\xc3\x28"}'),
    st.integers(1000, 20000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1000, 20000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.just(b"1" * 5000), st.just(b'{"max_tokens": 1e999999}'),
)

# -- JSON schema -> strategy (the subset pydantic emits) ----------------------------------


def from_schema(schema: dict, root: dict) -> st.SearchStrategy:
    """Values valid for `schema`; $ref points into root["components"]["schemas"]."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return st.deferred(lambda: from_schema(root["components"]["schemas"][name], root))
    if "anyOf" in schema:
        return st.one_of([from_schema(s, root) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind is None:
        return json_values
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 12), 12))
    if kind == "array":
        items = from_schema(schema.get("items", {}), root)
        low = schema.get("minItems", 0)
        return st.lists(items, min_size=low, max_size=max(low, min(schema.get("maxItems", 3), 3)))
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    return st.fixed_dictionaries(
        {k: from_schema(v, root) for k, v in props.items() if k in required},
        optional={k: from_schema(v, root) for k, v in props.items() if k not in required})


def _number(schema: dict, integer: bool) -> st.SearchStrategy:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if integer:
        low = None if low is None else int(low) + ("exclusiveMinimum" in schema)
        high = None if high is None else int(high) - ("exclusiveMaximum" in schema)
        return st.integers(min_value=low, max_value=high)
    return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False,
                     exclude_min="exclusiveMinimum" in schema,
                     exclude_max="exclusiveMaximum" in schema)


# -- OpenAI ------------------------------------------------------------------------------
TEXT_MODELS = ["ensemble", "tensorrt_llm_bls"]
_SMALL = {"max_tokens": 2, "max_completion_tokens": 2, "n": 2, "best_of": 2, "logprobs": 2,
          "top_logprobs": 2, "min_tokens": 2}


def _short(doc: dict) -> dict:
    """Keep a schema-valid body cheap: a few tokens, few choices."""
    for key, cap in _SMALL.items():
        if type(doc.get(key)) is int and doc[key] > cap:
            doc[key] = cap
    if doc.get("best_of") is not None and doc.get("n", 1) > doc["best_of"]:
        doc["n"] = doc["best_of"]
    if "max_tokens" not in doc and "max_completion_tokens" not in doc:
        doc["max_tokens"] = 2  # the default is the whole context left
    return doc


@st.composite
def openai_body(draw: Any, schema: dict, root: dict) -> bytes:
    """One OpenAI request body: schema-valid (for a served model), then maybe mutated."""
    doc = _short(draw(from_schema(schema, root)))
    doc["model"] = draw(st.sampled_from([*TEXT_MODELS, *TEXT_MODELS, "nope", "\ud800"]))
    mutation = draw(st.integers(0, 5))
    if mutation == 1:  # one field of the wrong type or an extreme value
        key = draw(st.sampled_from(sorted(schema_keys(schema, root)) or ["model"]))
        doc[key] = draw(json_values)
    elif mutation == 2 and doc:
        doc.pop(draw(st.sampled_from(sorted(doc))))
    elif mutation == 3:
        return draw(raw_bodies)
    return dumps(doc)


def schema_keys(schema: dict, root: dict) -> set[str]:
    if "$ref" in schema:
        schema = root["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return set(schema.get("properties", {}))


# -- KServe infer ------------------------------------------------------------------------


def element_count(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def _values(datatype: str, count: int) -> st.SearchStrategy:
    """`count` well-formed values for the datatype (token ids may be negative)."""
    if datatype == "BYTES":
        return st.lists(plain_texts, min_size=count, max_size=count)
    if datatype == "BOOL":
        return st.lists(st.booleans(), min_size=count, max_size=count)
    if datatype.startswith("FP") or datatype == "BF16":
        return st.lists(st.floats(-10, 10, width=32), min_size=count, max_size=count)
    low = 0 if datatype.startswith("UINT") else -5
    return st.lists(st.integers(low, 400), min_size=count, max_size=count)


@st.composite
def tensor_spec(draw: Any, meta: dict, batch: int) -> tuple[str, str, list[int]]:
    """(name, datatype, shape) of a declared input: batch first, other -1 dims drawn."""
    shape = [draw(st.integers(1, 3)) if d == -1 else d for d in meta["shape"]]
    if shape and meta["shape"][0] == -1:
        shape[0] = batch
    return meta["name"], meta["datatype"], shape


def _mutate_input(draw: Any, item: dict) -> None:
    """Make one thing about an input wrong."""
    what = draw(st.sampled_from(["name", "datatype", "shape", "data", "value", "parameters"]))
    if what == "datatype":
        item["datatype"] = draw(st.sampled_from(DATATYPES) | json_values)
    elif what == "shape":
        item["shape"] = draw(st.lists(st.integers(-2, 4), max_size=4) | json_values)
    elif what == "value" and item["data"]:
        i = draw(st.integers(0, len(item["data"]) - 1))
        item["data"][i] = draw(st.sampled_from([*BIG_INTS, *FLOATS, *SURROGATES]) | scalars)
    elif what == "parameters":
        item["parameters"] = draw(st.dictionaries(texts, scalars, min_size=1, max_size=2))
    else:
        item[what] = draw(json_values)


@st.composite
def infer_body(draw: Any, metadata: dict[str, dict]) -> tuple[str, dict]:
    """(model, KServe infer JSON): a well-formed request (required inputs plus a few
    optional ones) with at most one thing wrong; models that answer /infer come most."""
    plain = [m for m, meta in metadata.items() if not meta.get("decoupled")]
    model = draw(st.sampled_from([*plain, *plain, *plain, *metadata, "nope"]))
    declared = metadata.get(model, {}).get("inputs", [])
    chosen = [i for i in declared if not i.get("optional")]
    optional = [i for i in declared if i.get("optional")]
    if optional:
        chosen += draw(st.lists(st.sampled_from(optional), max_size=2, unique_by=lambda i: i["name"]))
    inputs = []
    batch = draw(st.sampled_from([1, 1, 1, 2, 3]))
    for meta in chosen:
        name, datatype, shape = draw(tensor_spec(meta, batch))
        count = element_count(shape)  # an image input would need 150,528 values: too few
        data = draw(_values(datatype, count) if count <= 256 else _values(datatype, 3))
        inputs.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    doc: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        doc["id"] = draw(plain_texts)
    mutation = draw(st.integers(0, 8))
    if mutation in (1, 2, 3) and inputs:
        _mutate_input(draw, draw(st.sampled_from(inputs)))
    elif mutation == 4 and inputs:
        inputs.pop(draw(st.integers(0, len(inputs) - 1)))
    elif mutation == 5:
        inputs.append(draw(st.sampled_from(inputs)) if inputs and draw(st.booleans()) else
                      {"name": draw(texts), "datatype": draw(st.sampled_from(DATATYPES)),
                       "shape": [1], "data": [draw(scalars)]})
    elif mutation == 6:
        doc[draw(st.sampled_from(["id", "parameters", "outputs", "inputs"]))] = draw(json_values)
    elif mutation == 7:
        doc["outputs"] = draw(st.lists(st.fixed_dictionaries(
            {"name": texts}, optional={"parameters": st.dictionaries(texts, scalars)}), max_size=2))
    return model, doc


def _raw(datatype: str, values: list) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in
                        (str(v).encode("utf-8", "surrogatepass") for v in values))
    ints = [int(v) % 2**31 for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return struct.pack(f"<{len(ints)}i", *ints)


@st.composite
def binary_infer(draw: Any, metadata: dict[str, dict]) -> tuple[str, bytes, str]:
    """(model, body, Inference-Header-Content-Length): sizes right or wrong."""
    model, doc = draw(infer_body(metadata))
    blobs = []
    items = doc["inputs"] if isinstance(doc.get("inputs"), list) else []
    for item in (i for i in items if isinstance(i, dict)):
        if isinstance(item.get("data"), list) and draw(st.booleans()):
            blob = _raw(str(item.get("datatype")), item.pop("data"))
            if not draw(st.integers(0, 4)):
                blob = draw(st.binary(max_size=32))
            size = len(blob) if draw(st.integers(0, 5)) else draw(st.sampled_from(
                [-1, 0, len(blob) + 1, 2**40, "12", None]))
            item["parameters"] = {"binary_data_size": size}
            blobs.append(blob)
    header = dumps(doc)
    length = str(len(header)) if draw(st.integers(0, 6)) else draw(st.sampled_from(
        ["-5", "x", str(len(header) + 10**6), "0", str(len(header) - 1)]))
    return model, header + b"".join(blobs), length


# -- generate ----------------------------------------------------------------------------
GENERATE_VALUES = {
    "text_input": texts, "max_tokens": st.integers(-3, 3) | st.sampled_from(BIG_INTS[:3]),
    "beam_width": st.integers(-1, 5), "num_return_sequences": st.integers(-1, 2),
    "temperature": st.floats(-1, 3) | st.sampled_from(FLOATS), "top_k": st.integers(-2, 50),
    "top_p": st.floats(-1, 2) | st.sampled_from(FLOATS), "stream": st.booleans(),
    "stop_words": st.lists(texts, max_size=3), "bad_words": st.lists(texts, max_size=3),
    "embedding_bias_words": st.lists(texts, max_size=2),
    "embedding_bias_weights": st.lists(st.floats(width=32), max_size=2),
    "lora_task_id": st.sampled_from([7, 8, -1, 2**64 - 1]),
}


@st.composite
def generate_body(draw: Any, declared: list[str]) -> bytes:
    """A generate body: a prompt and a few tokens plus some sampling fields, each value
    well-formed or (sometimes) not; now and then a body that is not JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(raw_bodies)
    doc: dict[str, Any] = {"text_input": draw(plain_texts), "max_tokens": draw(st.integers(1, 3))}
    for key in draw(st.lists(st.sampled_from([*declared, "parameters", "id", "x"]), max_size=3)):
        strategy = GENERATE_VALUES.get(key)
        doc[key] = draw(strategy if strategy is not None and draw(st.integers(0, 3))
                        else json_values)
    if type(doc.get("max_tokens")) is int and doc["max_tokens"] > 3:
        doc["max_tokens"] = 3  # the BIG_INTS path is one targeted regression test
    return dumps(doc)


# -- request lines -----------------------------------------------------------------------
PATHS = ["/v2", "/v2/health/{}", "/v2/models/{}", "/v2/models/{}/versions/{}",
         "/v2/models/{}/infer", "/v2/models/{}/versions/{}/ready", "/v2/models/{}/config",
         "/v2/models/{}/stats", "/v2/models/{}/generate", "/v2/models/{}/generate_stream",
         "/v2/repository/index", "/v2/repository/models/{}/load",
         "/v2/repository/models/{}/unload", "/v2/systemsharedmemory/region/{}/status",
         "/v2/cudasharedmemory/{}", "/v2/trace/setting", "/v2/logging", "/v1/models/{}",
         "/v1/completions", "/v1/chat/completions", "/{}", "/v2/models/{}/trace/setting"]
SEGMENTS = st.one_of(st.sampled_from(["ensemble", "preprocessing", "1", "-1", "..", "%2e%2e",
                                      "%00", "%0d%0a", "x" * 300, "", "stats"]),
                     st.text(max_size=12).map(lambda t: quote(t, safe="")))


@st.composite
def request_line(draw: Any) -> tuple[str, str, bytes | None]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    template = draw(st.sampled_from(PATHS))
    path = template.format(*(draw(SEGMENTS) for _ in range(template.count("{}"))))
    if draw(st.booleans()):
        path += "?" + draw(SEGMENTS) + "=" + draw(SEGMENTS)
    body = draw(st.one_of(st.none(), raw_bodies, json_values.map(dumps)))
    return method, path, body


# -- gRPC --------------------------------------------------------------------------------


def _clean(text: Any) -> str:
    """protobuf strings must be valid UTF-8: the client could not send a lone surrogate."""
    return str(text).encode("utf-8", "replace").decode("utf-8")


@st.composite
def grpc_request(draw: Any, metadata: dict[str, dict]) -> Any:
    """A ModelInferRequest built from an infer case, tensors mostly as raw contents."""
    from tritonclient.grpc import service_pb2 as pb

    model, doc = draw(infer_body(metadata))
    rid = doc.get("id", "")
    req = pb.ModelInferRequest(model_name=_clean(model), id=_clean(rid if isinstance(rid, str) else ""))
    if draw(st.integers(0, 5)) == 0:
        req.model_version = _clean(draw(texts))
    use_raw = draw(st.booleans())
    items = doc["inputs"] if isinstance(doc.get("inputs"), list) else []
    for item in (i for i in items if isinstance(i, dict)):
        tensor = req.inputs.add(name=_clean(item.get("name")), datatype=_clean(item.get("datatype")))
        shape = item.get("shape") if isinstance(item.get("shape"), list) else []
        tensor.shape.extend(int(d) for d in shape if type(d) is int and abs(d) < 2**62)
        data = item.get("data") if isinstance(item.get("data"), list) else []
        if use_raw:
            blob = _raw(_clean(item.get("datatype")), data)
            req.raw_input_contents.append(blob if draw(st.integers(0, 4)) else draw(st.binary(max_size=24)))
        elif item.get("datatype") == "BYTES":
            tensor.contents.bytes_contents.extend(_clean(v).encode() for v in data)
        else:
            tensor.contents.int_contents.extend(
                int(v) % 2**31 for v in data if isinstance(v, (int, float)) and math.isfinite(v))
    params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    for key, value in params.items():
        param = req.parameters[_clean(key)]
        if isinstance(value, bool):
            param.bool_param = value
        elif type(value) is int and -(2**63) <= value < 2**63:
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = _clean(value)
    return req
