"""KServe v2 gRPC service on grpc.aio with tritonclient's generated
definitions: every RPC incl. bidirectional ModelStreamInfer, and grpc.health.v1."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from llmserve.core.errors import InvalidArgument, ServerError, Unsupported
from llmserve.core.types import InferenceRequest, InferenceResponse
from llmserve.frontends.errors import as_server_error, grpc_code
from llmserve.frontends.grpc_wire import (
    decode_request,
    encode_response,
    index_response,
    metadata_response,
    param_value,
    statistics_response,
)
from llmserve.frontends.restricted import RestrictedProtocolInterceptor, Restrictions
from llmserve.frontends.tensors import parse_version

logger = logging.getLogger(__name__)

DECOUPLED_GRPC = "ModelInfer RPC doesn't support models with decoupled transaction policy"
_MAX_MESSAGE = 2**31 - 1


def _unary(method: Callable) -> Callable:
    """Map ServerError (and anything unexpected) to a gRPC status, once."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            err = as_server_error(exc)
            await context.abort(grpc_code(err), err.message)

    return wrapper


def _unimplemented(what: str) -> Callable:
    async def method(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by this server")

    return method


def _wants_grpc_error(context: grpc.aio.ServicerContext) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "triton_grpc_error" and str(value).lower() == "true":
            return True
    return False


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: Any):
        self.server = server

    def _batched(self, request: InferenceRequest) -> bool:
        version = "" if request.model_version < 0 else str(request.model_version)
        return self.server.model_config(request.model_name, version).max_batch_size > 0

    def labels_of(self, response: Any, output: str) -> list[str] | None:
        labels = getattr(self.server, "output_labels", None)
        if labels is None:
            return None
        return labels(response.model_name, str(response.model_version), output)

    def _needs_batched(self, request: InferenceRequest) -> bool:
        if not any(r.classification for r in request.requested_outputs or []):
            return False
        return self._batched(request)

    @_unary
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.server.is_live())

    @_unary
    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server.is_ready())

    @_unary
    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        try:
            ready = self.server.model_ready(request.name, request.version)
        except ServerError:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @_unary
    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        meta = self.server.metadata()
        return pb.ServerMetadataResponse(
            name=meta.get("name", ""),
            version=meta.get("version", ""),
            extensions=meta.get("extensions", []),
        )

    @_unary
    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        return metadata_response(self.server.model_metadata(request.name, request.version))

    @_unary
    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        config = self.server.model_config(request.name, request.version)
        msg = pb.ModelConfigResponse()
        msg.config.CopyFrom(config)
        return msg

    @_unary
    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        return statistics_response(self.server.statistics(request.name, request.version))

    @_unary
    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        return index_response(self.server.repository_index(ready_only=request.ready))

    @_unary
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        config = None
        files: dict[str, bytes] = {}
        for key, param in request.parameters.items():
            value = param_value(param)
            if key == "config":
                if not isinstance(value, str):
                    raise InvalidArgument("load parameter 'config' must be a string")
                config = value
            elif key.startswith("file:"):
                if not isinstance(value, bytes):
                    raise InvalidArgument(f"load parameter '{key}' must be bytes")
                files[key] = value
        if files and config is None:
            raise InvalidArgument("load with files requires the 'config' parameter")
        await self.server.load_model(request.model_name, config, files or None)
        return pb.RepositoryModelLoadResponse()

    @_unary
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        dependents = False
        if "unload_dependents" in request.parameters:
            dependents = param_value(request.parameters["unload_dependents"])
            if not isinstance(dependents, bool):
                raise InvalidArgument("'unload_dependents' must be a boolean")
        await self.server.unload_model(request.model_name, unload_dependents=dependents)
        return pb.RepositoryModelUnloadResponse()

    @_unary
    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        parse_version(request.model_version)
        if self.server.is_decoupled(request.model_name, request.model_version):
            raise Unsupported(DECOUPLED_GRPC)
        ireq = decode_request(request)
        result: InferenceResponse | None = None
        agen = self.server.infer(ireq)
        try:
            async for response in agen:
                if response.error is not None:
                    raise response.error
                if result is None or response.outputs:
                    result = response
        except asyncio.CancelledError:
            ireq.cancel.cancel()
            raise
        finally:
            await agen.aclose()
        if result is None:
            raise ServerError(f"model '{ireq.model_name}' sent no response")
        return encode_response(result, ireq.requested_outputs, self._needs_batched(ireq),
                               labels_of=self.labels_of)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        stream = _Stream(self, _wants_grpc_error(context))
        reader = asyncio.ensure_future(stream.read(request_iterator))
        try:
            async for item in stream.results():
                if isinstance(item, ServerError):
                    await context.abort(grpc_code(item), item.message)
                yield item
        finally:
            reader.cancel()
            await stream.cancel_all()

    SystemSharedMemoryStatus = _unimplemented("system shared memory")
    SystemSharedMemoryRegister = _unimplemented("system shared memory")
    SystemSharedMemoryUnregister = _unimplemented("system shared memory")
    CudaSharedMemoryStatus = _unimplemented("CUDA shared memory")
    CudaSharedMemoryRegister = _unimplemented("CUDA shared memory")
    CudaSharedMemoryUnregister = _unimplemented("CUDA shared memory")
    TraceSetting = _unimplemented("trace setting")
    LogSettings = _unimplemented("log settings")


_READER_DONE = object()
_TASK_DONE = object()


class _Stream:
    """One ModelStreamInfer call: many concurrent requests, responses in arrival order."""

    def __init__(self, servicer: InferenceServicer, grpc_error: bool):
        self.servicer = servicer
        self.grpc_error = grpc_error
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tasks: set[asyncio.Task] = set()
        self.requests: dict[int, InferenceRequest] = {}
        self.active = 0

    async def read(self, request_iterator: AsyncIterator[Any]) -> None:
        try:
            async for req in request_iterator:
                self.active += 1
                task = asyncio.ensure_future(self._run(req))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client side of the stream broke
            logger.debug("ModelStreamInfer reader ended: %s", exc)
        finally:
            self.queue.put_nowait(_READER_DONE)

    async def results(self) -> AsyncIterator[Any]:
        reader_done = False
        while not (reader_done and self.active == 0):
            item = await self.queue.get()
            if item is _READER_DONE:
                reader_done = True
            elif item is _TASK_DONE:
                self.active -= 1
            else:
                yield item

    def _error(self, err: ServerError, req: Any) -> Any:
        if self.grpc_error:
            return err
        msg = pb.ModelStreamInferResponse(error_message=err.message)
        msg.infer_response.model_name = req.model_name
        msg.infer_response.model_version = req.model_version
        msg.infer_response.id = req.id
        return msg

    async def _run(self, req: Any) -> None:
        ireq: InferenceRequest | None = None
        agen = None
        try:
            ireq = decode_request(req)
            self.requests[id(ireq)] = ireq
            empty_final = False
            if "triton_enable_empty_final_response" in req.parameters:
                empty_final = param_value(req.parameters["triton_enable_empty_final_response"])
            batched = self.servicer._needs_batched(ireq)
            agen = self.servicer.server.infer(ireq)
            async for response in agen:
                if response.error is not None:
                    self.queue.put_nowait(self._error(response.error, req))
                elif not response.flag_only or empty_final is True:
                    msg = encode_response(response, ireq.requested_outputs, batched,
                                          response.final, labels_of=self.servicer.labels_of)
                    self.queue.put_nowait(pb.ModelStreamInferResponse(infer_response=msg))
                if response.final:
                    break
        except asyncio.CancelledError:
            if ireq is not None:
                ireq.cancel.cancel()
            raise
        except Exception as exc:
            self.queue.put_nowait(self._error(as_server_error(exc), req))
        finally:
            if agen is not None:
                with contextlib.suppress(Exception):
                    await agen.aclose()
            if ireq is not None:
                self.requests.pop(id(ireq), None)
            self.queue.put_nowait(_TASK_DONE)

    async def cancel_all(self) -> None:
        for ireq in list(self.requests.values()):
            ireq.cancel.cancel()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _health_request_service(data: bytes) -> str:
    """`service` (field 1) of a grpc.health.v1.HealthCheckRequest; "" when absent."""
    if len(data) >= 2 and data[0] == 0x0A:
        length, pos, shift = 0, 1, 0
        while pos < len(data):
            byte = data[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            shift += 7
            if not byte & 0x80:
                break
        return data[pos : pos + length].decode("utf-8", errors="replace")
    return ""


def health_handler(server: Any) -> grpc.GenericRpcHandler:
    """grpc.health.v1.Health/Check, answered from the server's readiness."""

    async def check(service: str, context: grpc.aio.ServicerContext) -> bytes:
        if service:  # a model name; unknown names are NOT_FOUND per the health protocol
            if not any(m.get("name") == service for m in server.repository_index()):
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{service}'")
            try:
                ready = server.model_ready(service, "")
            except ServerError:
                ready = False
        else:
            ready = server.is_ready()
        return bytes([0x08, 1 if ready else 2])  # SERVING = 1, NOT_SERVING = 2

    method = grpc.unary_unary_rpc_method_handler(
        check, request_deserializer=_health_request_service, response_serializer=lambda b: b
    )
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": method})


async def start_grpc(server: Any, address: str, port: int,
                     restrictions: Restrictions | None = None) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server; returns it and the bound port. restrictions: the
    --grpc-restricted-protocol groups (group -> metadata key, value)."""
    options = [
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.so_reuseport", 0),
    ]
    interceptors = [RestrictedProtocolInterceptor(restrictions)] if restrictions else []
    grpc_server = grpc.aio.server(options=options, interceptors=interceptors)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(server), grpc_server
    )
    grpc_server.add_generic_rpc_handlers((health_handler(server),))
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    try:
        bound = grpc_server.add_insecure_port(target)
    except RuntimeError as exc:
        raise OSError(f"failed to bind gRPC on {target}: {exc}") from exc
    if bound == 0:
        raise OSError(f"failed to bind gRPC on {target}")
    await grpc_server.start()
    return grpc_server, bound
