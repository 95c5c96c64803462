"""Model warmup (`model_warmup` in config.pbtxt), as Triton runs it: each sample becomes
`batch_size` requests of batch 1 (zero_data, random_data, or input_data_file read from the
model folder's warmup/ folder) executed together on an instance, `count` times (at least
once), before the model turns READY; a sample of batch size 0 is skipped. A response
error fails the load with the sample's name in the reason.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends import BackendInstance
from llmserve.core import datatypes
from llmserve.core.errors import InternalError, InvalidArgument, ServerError
from llmserve.core.types import InferenceRequest, InferenceResponse, Tensor
from llmserve.scheduling.request import ResponseSink, SchedRequest, now_ns
from llmserve.scheduling.validate import output_transform, validate_request

log = logging.getLogger(__name__)

WARMUP_FOLDER = "warmup"  # beside config.pbtxt, as in Triton


@dataclass(slots=True)
class WarmupSample:
    name: str
    count: int
    batch_size: int  # requests per run
    inputs: dict[str, Tensor]  # validated model inputs plus any that are not model inputs
    request_batch: int  # each request's batch size (1)


def _read_file(model_dir: Path, file_name: str) -> bytes:
    path = model_dir / WARMUP_FOLDER / file_name
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"failed to read warmup data file '{path}': "
                              f"{e.strerror or e}") from None


def _decode(dt: datatypes.DataType, raw: bytes, shape: list[int]) -> np.ndarray:
    if dt.api_name == "BF16":
        return datatypes.bf16_to_float32(raw, tuple(shape))
    if dt.api_name == "BOOL":
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    return np.frombuffer(raw, dtype=dt.numpy.newbyteorder("<")).astype(dt.numpy).reshape(shape)


def sample_tensor(config: mc.ModelConfig, model_dir: Path, name: str,
                  meta: mc.ModelWarmup.Input, rng: np.random.Generator) -> Tensor:
    """One warmup input: its dims (plus a batch dimension of 1 for a model input of a
    batching model) filled with zeros, random bytes or the bytes of a warmup/ file.
    Random BYTES are empty strings, as Triton sends them."""
    if meta.data_type == mc.TYPE_INVALID:
        raise InvalidArgument(f"warmup setting expects input '{name}' to have 'data_type' set")
    dt = datatypes.from_config_name(mc.DataType.Name(meta.data_type))
    dims = [int(d) for d in meta.dims]
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"warmup setting expects all variable-size dimensions are "
                              f"specified for input '{name}'")
    is_model_input = any(i.name == name for i in config.input)
    shape = ([1] if config.max_batch_size > 0 and is_model_input else []) + dims
    count = math.prod(shape)
    kind = meta.WhichOneof("input_data_type")
    if kind is None:
        raise InvalidArgument(f"warmup setting expects input '{name}' to have "
                              "input_data_type set")
    if dt.api_name == "BYTES":
        if kind != "input_data_file":
            return Tensor(name, "BYTES", np.full(shape, b"", dtype=np.object_))
        data = datatypes.deserialize_bytes_tensor(_read_file(model_dir, meta.input_data_file))
        if data.size != count:
            raise InvalidArgument(f"warmup setting expects {count} string element(s) for input "
                                  f"'{name}', but {meta.input_data_file} holds {data.size}")
        return Tensor(name, "BYTES", data.reshape(shape))
    size = count * dt.itemsize
    if kind == "input_data_file":
        raw = _read_file(model_dir, meta.input_data_file)
        if len(raw) < size:
            raise InvalidArgument(f"warmup setting expects {size} bytes, but the data provided "
                                  f"from {meta.input_data_file} only has {len(raw)} bytes")
        raw = raw[:size]
    elif kind == "zero_data":
        raw = bytes(size)
    else:
        raw = rng.bytes(size)
    return Tensor(name, dt.api_name, _decode(dt, raw, shape))


def build_samples(config: mc.ModelConfig, model_dir: Path) -> list[WarmupSample]:
    """The warmup samples of `config`; raises InvalidArgument naming a bad sample."""
    rng = np.random.default_rng()
    samples = []
    for setting in config.model_warmup:
        if setting.batch_size == 0:
            log.debug("model '%s': skipping batch 0 warmup sample '%s'", config.name,
                      setting.name)
            continue
        try:
            tensors = {name: sample_tensor(config, model_dir, name, meta, rng)
                       for name, meta in sorted(setting.inputs.items())}
            model_inputs = {i.name for i in config.input}
            request = InferenceRequest(config.name, {n: t for n, t in tensors.items()
                                                     if n in model_inputs})
            inputs, request_batch = validate_request(config, request)
        except ServerError as e:
            raise InvalidArgument(f"failed to run warmup sample '{setting.name}': "
                                  f"{e.message}") from None
        # inputs that are not model inputs (sequence control inputs) pass as given
        inputs.update({n: t for n, t in tensors.items() if n not in model_inputs})
        samples.append(WarmupSample(setting.name, max(int(setting.count), 1),
                                    int(setting.batch_size), inputs, request_batch))
    return samples


def _run(version: Any, instance: BackendInstance, sample: WarmupSample) -> list[str]:
    """Execute one run of `sample` on `instance`; returns the responses' error messages."""
    config = version.config
    names = [o.name for o in config.output]
    errors: list[str] = []
    lock = threading.Lock()
    finals: list[threading.Event] = []
    rescheduled: list[SchedRequest] = []
    batch: list[SchedRequest] = []
    for _ in range(sample.batch_size):
        final = threading.Event()

        def deliver(resp: InferenceResponse, final: threading.Event = final) -> None:
            if resp.error is not None:
                with lock:
                    errors.append(resp.error.message)
            if resp.final:
                final.set()

        request = InferenceRequest(version.name, dict(sample.inputs), model_version=version.version)
        sreq = SchedRequest(request, dict(sample.inputs), sample.request_batch, names,
                            ResponseSink(deliver), model_version=version.version)
        sreq.output_transform = output_transform(config, names, False)
        sreq.requeue = rescheduled.append  # a RESCHEDULE release runs again below
        finals.append(final)
        batch.append(sreq)
    start = now_ns()
    todo = list(batch)
    while todo:
        try:
            future = instance.execute(todo)
            if future is not None:
                future.result()
        except Exception as exc:  # the backend raised: every open request fails
            for sreq in todo:
                if not sreq.sink.closed:
                    sreq.fail(InternalError(f"{type(exc).__name__}: {exc}"))
        todo, rescheduled[:] = list(rescheduled), []
    for final in finals:
        final.wait()
    elapsed = now_ns() - start
    # warmup executions count in the statistics, as they do in Triton (its backends
    # report every request they execute)
    version.stats.executed(sample.request_batch * len(batch), len(batch), 0, elapsed, 0)
    for sreq in batch:
        version.stats.request_done(not sreq.sink.failed, elapsed)
    return errors


def warm_up(version: Any, instance: BackendInstance, instance_name: str) -> None:
    """Run every warmup sample of `version` (a ModelVersion) on one new instance; raises
    InvalidArgument at the first failing sample."""
    if not len(version.config.model_warmup):
        return
    samples = build_samples(version.config, Path(version.model_dir))
    for sample in samples:
        for iteration in range(1, sample.count + 1):
            log.debug("model '%s' instance %s is running warmup sample '%s' for iteration %d",
                      version.name, instance_name, sample.name, iteration)
            errors = _run(version, instance, sample)
            if errors:
                raise InvalidArgument(f"failed to run warmup sample '{sample.name}': "
                                      + "".join(f"{e}; " for e in errors))
    log.info("model '%s' instance %s: warmed up with %d sample(s)", version.name,
             instance_name, len(samples))
