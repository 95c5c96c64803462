"""Batch dimension handling for backends that run one tensor per batch (TorchScript,
ONNX, ...): drop cancelled requests, concatenate every request's inputs along dim 0 and
split outputs back.
Ragged inputs are flattened and concatenated, as Triton hands them to a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import Cancelled, InternalError, InvalidArgument, ServerError
from llmserve.core.types import Tensor
from llmserve.scheduling.request import SchedRequest
from llmserve.scheduling.sequence_state import save_states


def live_requests(model_name: str, batch: list[SchedRequest]) -> list[SchedRequest]:
    """Fail the cancelled requests of `batch` (CANCELLED) and return the others."""
    live = []
    for sreq in batch:
        if sreq.is_cancelled():
            sreq.fail(Cancelled(f"request for model '{model_name}' was cancelled"))
        else:
            live.append(sreq)
    return live


def fail_all(batch: list[SchedRequest], error: ServerError) -> None:
    for sreq in batch:
        sreq.fail(error)


def concat_inputs(config: mc.ModelConfig, batch: list[SchedRequest]) -> dict[str, np.ndarray]:
    """One array per input for the whole batch."""
    result: dict[str, np.ndarray] = {}
    batching = config.max_batch_size > 0
    if not batching and len(batch) != 1:
        raise InternalError(f"model '{config.name}' does not batch but got {len(batch)} requests")
    ragged = {cfg.name for cfg in config.input if cfg.allow_ragged_batch}
    # config inputs, then what the sequence batcher added (control and state inputs)
    names = [cfg.name for cfg in config.input]
    names += [n for n in batch[0].inputs if n not in names] if batch else []
    for name in names:
        present = [r.inputs.get(name) for r in batch]
        if all(t is None for t in present):
            continue
        if any(t is None for t in present):
            raise InvalidArgument(
                f"optional input '{name}' of model '{config.name}' must be given by every "
                "request of a batch or by none"
            )
        arrays = [t.data for t in present]
        if len(arrays) == 1:
            result[name] = arrays[0]
        elif name in ragged:
            result[name] = np.concatenate([a.reshape(-1) for a in arrays])
        else:
            result[name] = np.concatenate(arrays, axis=0)
    return result


def split_outputs(config: mc.ModelConfig, batch: list[SchedRequest],
                  outputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per-request slices of the batch outputs (by each request's batch size)."""
    if config.max_batch_size <= 0:
        return [dict(outputs)]
    sizes = [r.batch_size for r in batch]
    total = sum(sizes)
    per_request: list[dict[str, np.ndarray]] = [{} for _ in batch]
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise InternalError(
                f"output '{name}' of model '{config.name}' has shape {list(array.shape)}, "
                f"expected batch dimension {total}"
            )
        offset = 0
        for i, n in enumerate(sizes):
            per_request[i][name] = array[offset : offset + n]
            offset += n
    return per_request


def run_and_respond(model_name: str, batch: list[SchedRequest],
                    run: Callable[[list[SchedRequest]], list[dict[str, np.ndarray]]],
                    api_names: Mapping[str, str]) -> None:
    """The framework backends' execute: fail the cancelled requests, run the others as one
    batch (a ServerError fails them all), keep each sequence's implicit state, and answer
    each request with the outputs it asked for (api_names: output -> datatype name)."""
    live = live_requests(model_name, batch)
    if not live:
        return
    try:
        per_request = run(live)
    except ServerError as e:
        fail_all(live, e)
        return
    for sreq, outputs in zip(live, per_request, strict=True):
        try:
            save_states(sreq, outputs, model_name)
        except ServerError as e:
            sreq.fail(e)
            continue
        sreq.respond([Tensor(n, api_names[n], outputs[n])
                      for n in sreq.output_names if n in outputs])
