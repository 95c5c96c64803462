"""The typed messages between the server and an engine process, and their msgpack form.

Dataclasses (requests, configs, stats, the messages themselves) travel as tagged maps,
enums by value, torch tensors and numpy arrays as dtype + shape + raw bytes. Responses,
sent every step, have a compact positional form (encode_response) because their cost
is paid per token.
"""

from __future__ import annotations

import enum
import operator
import struct
from dataclasses import dataclass, field, fields
from pathlib import PurePath
from typing import Any

import msgpack
import numpy as np
import torch

from llmserve.core import errors
from llmserve.llm import config as cfg
from llmserve.llm import request as rq
from llmserve.llm import stats as st
from llmserve.llm.kv_events import KvEventsConfig

INIT_FILE = "init.msgpack"  # the Init message, in the channel folder

# -- messages: server -> engine ----------------------------------------------------------


@dataclass(slots=True)
class Init:
    """Written to the channel folder before the engine starts: what to load."""

    model_path: str | None
    model_type: cfg.ModelType
    config: cfg.ExecutorConfig


@dataclass(slots=True)
class EnqueueRequests:
    call: int
    requests: list[rq.Request]


@dataclass(slots=True)
class CancelRequest:
    request_id: int


@dataclass(slots=True)
class Query:
    """A read-only executor call answered with a Reply (stats, KV cache snapshot)."""

    call: int
    method: str


@dataclass(slots=True)
class Shutdown:
    call: int
    wait_for_requests: bool = False
    timeout_s: float | None = None


# -- messages: engine -> server ----------------------------------------------------------


@dataclass(slots=True)
class WireError:
    """An exception raised in the engine, raised again in the server (to_exception)."""

    kind: str  # a ServerError subclass name, or a builtin exception's name
    message: str


@dataclass(slots=True)
class EngineInfo:
    pid: int
    vocab_size: int
    max_seq_len: int
    max_batch_size: int
    max_num_tokens: int
    tokens_per_block: int
    gc_frozen: int = 0  # objects kept out of garbage collection (core/gc_freeze.py)


@dataclass(slots=True)
class Ready:
    info: EngineInfo


@dataclass(slots=True)
class LoadFailed:
    error: WireError


@dataclass(slots=True)
class EnqueueReply:
    """The ids given to the requests, in order; error: the request at len(ids) failed
    (the ones before it are queued, as Executor.enqueue_requests leaves them)."""

    call: int
    ids: list[int]
    error: WireError | None = None


@dataclass(slots=True)
class Reply:
    call: int
    value: Any = None
    error: WireError | None = None


@dataclass(slots=True)
class StepOutputs:
    """Every response one engine step (or one cancel / shutdown round) produced."""

    responses: list[rq.Response] = field(default_factory=list)


# -- errors ------------------------------------------------------------------------------

_SERVER_ERRORS = {cls.__name__: cls for cls in (
    errors.ServerError, errors.InvalidArgument, errors.NotFound, errors.Unavailable,
    errors.Unsupported, errors.InternalError, errors.AlreadyExists, errors.Cancelled,
    errors.QueueFull)}
_BUILTIN_ERRORS = {cls.__name__: cls for cls in (ValueError, TypeError, KeyError)}


def wire_error(exc: BaseException) -> WireError:
    name = type(exc).__name__
    if isinstance(exc, errors.ServerError):
        name = name if name in _SERVER_ERRORS else "ServerError"
        return WireError(name, str(exc))
    if name in _BUILTIN_ERRORS:
        return WireError(name, str(exc))
    # the load's reason reads as it does in-process: "<type>: <message>"
    return WireError("InternalError", f"{name}: {exc}")


def to_exception(error: WireError) -> Exception:
    cls = _SERVER_ERRORS.get(error.kind) or _BUILTIN_ERRORS.get(error.kind)
    return (cls or errors.InternalError)(error.message)


# -- generic encoding --------------------------------------------------------------------

_DATACLASSES: list[type] = [
    Init, EnqueueRequests, CancelRequest, Query, Shutdown, WireError, EngineInfo, Ready,
    LoadFailed, EnqueueReply, Reply,
    rq.Request, rq.SamplingConfig, rq.OutputConfig, rq.LoraConfig,
    rq.ExternalDraftTokensConfig, rq.Response, rq.Result, rq.RequestPerfMetrics,
    rq.TimingMetrics, rq.KvCacheMetrics, rq.SpeculativeDecodingMetrics,
    cfg.ExecutorConfig, cfg.SchedulerConfig, cfg.KvCacheConfig, cfg.PeftCacheConfig,
    cfg.SpeculativeDecodingConfig, cfg.PromptLookupConfig, KvEventsConfig,
    st.IterationStats, st.KvCacheStats, st.InflightBatchingStats,
    st.RequestStatsPerIteration, st.RequestStats,
    rq.GuidedDecodingParams, cfg.GuidedDecodingConfig,
]
_ENUMS: list[type[enum.Enum]] = [
    rq.FinishReason, cfg.ModelType, cfg.CapacitySchedulerPolicy, cfg.BatchingType,
    cfg.SpeculativeDecodingMode, st.RequestStage, rq.GuideType, cfg.GuidedDecodingBackend,
]
_DC_TAG, _ENUM_TAG, _STEP_TAG = "__dc__", "__enum__", "__step__"
_TENSOR_EXT = 1
_DC_INDEX = {cls: (i, tuple(f.name for f in fields(cls))) for i, cls in enumerate(_DATACLASSES)}
_ENUM_INDEX = {cls: i for i, cls in enumerate(_ENUMS)}
assert all(f.init for cls in _DATACLASSES for f in fields(cls)), "positional decoding"


def _pack_tensor(value: torch.Tensor | np.ndarray) -> msgpack.ExtType:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        array = t.view(torch.int16).numpy() if t.dtype is torch.bfloat16 else t.numpy()
        lib = "torch"
    else:
        if value.dtype.hasobject:
            raise TypeError("numpy object arrays cannot travel to the engine process")
        array, dtype, lib = np.ascontiguousarray(value), value.dtype.str, "numpy"
    head = msgpack.packb([lib, dtype, list(array.shape)])
    return msgpack.ExtType(_TENSOR_EXT, struct.pack("<I", len(head)) + head + array.tobytes())


def _unpack_tensor(data: bytes) -> torch.Tensor | np.ndarray:
    (n,) = struct.unpack_from("<I", data)
    lib, dtype, shape = msgpack.unpackb(data[4:4 + n])
    raw = bytearray(memoryview(data)[4 + n:])  # writable: torch warns on read-only memory
    if lib == "numpy":
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    if dtype == "bfloat16":
        return torch.from_numpy(np.frombuffer(raw, np.int16).reshape(shape)).view(torch.bfloat16)
    np_dtype = torch.empty(0, dtype=getattr(torch, dtype)).numpy().dtype
    return torch.from_numpy(np.frombuffer(raw, np_dtype).reshape(shape))


def _default(obj: Any) -> Any:
    entry = _DC_INDEX.get(type(obj))
    if entry is not None:
        index, names = entry
        return {_DC_TAG: index, "v": [getattr(obj, n) for n in names]}
    if isinstance(obj, StepOutputs):
        return {_STEP_TAG: [encode_response(r) for r in obj.responses]}
    if isinstance(obj, enum.Enum) and type(obj) in _ENUM_INDEX:
        return {_ENUM_TAG: _ENUM_INDEX[type(obj)], "v": obj.value}
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return _pack_tensor(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} cannot travel to or from the engine process")


def _object_hook(d: dict) -> Any:
    if _DC_TAG in d:
        return _DATACLASSES[d[_DC_TAG]](*d["v"])
    if _STEP_TAG in d:
        return StepOutputs([decode_response(r) for r in d[_STEP_TAG]])
    if _ENUM_TAG in d:
        return _ENUMS[d[_ENUM_TAG]](d["v"])
    return d


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _TENSOR_EXT:
        return _unpack_tensor(data)
    return msgpack.ExtType(code, data)


def encode(message: Any) -> bytes:
    return msgpack.packb(message, default=_default, use_bin_type=True)


def decode(frame: bytes) -> Any:
    return msgpack.unpackb(frame, object_hook=_object_hook, ext_hook=_ext_hook, raw=False)


# -- responses: positional, the fields of every token first -----------------------------

_HOT = ("is_final", "output_token_ids", "finish_reasons", "sequence_index",
        "is_sequence_final", "decoding_iter")
# the rest (log probs, logits, perf metrics, fields added later) travel only when set
_COLD = tuple(f.name for f in fields(rq.Result) if f.name not in _HOT)
_cold_of = operator.attrgetter(*_COLD)
_REASON_VALUES = {r: r.value for r in rq.FinishReason}
_REASONS = {r.value: r for r in rq.FinishReason}


def encode_response(r: rq.Response) -> tuple:
    """A Response as a tuple; the cost is per response per step, so no generic walk."""
    res = r.result
    if res is None:
        return (r.request_id, r.client_id, r.error_msg)
    cold = _cold_of(res)
    for value in cold:
        if value is not None:
            break
    else:
        cold = None
    return (r.request_id, r.client_id, r.error_msg, res.is_final, res.output_token_ids,
            [_REASON_VALUES[f] for f in res.finish_reasons], res.sequence_index,
            res.is_sequence_final, res.decoding_iter, cold)


def decode_response(w: list) -> rq.Response:
    if len(w) == 3:
        return rq.Response(w[0], None, w[2], w[1])
    result = rq.Result(w[3], w[4], [_REASONS[v] for v in w[5]], sequence_index=w[6],
                       is_sequence_final=w[7], decoding_iter=w[8])
    if w[9] is not None:
        for name, value in zip(_COLD, w[9], strict=True):
            setattr(result, name, value)
    return rq.Response(w[0], result, w[2], w[1])
