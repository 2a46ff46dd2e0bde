"""The V2 gRPC service (KServe/Triton ``GRPCInferenceService``), on the servicer that
``tritonclient.grpc`` ships (generated from the public grpc_predict_v2 proto), so the
wire format is exactly what tritonclient and KServe clients speak. Tensors travel in
``raw_input_contents`` / ``raw_output_contents``, the form tritonclient reads.

It is a ``grpc.aio`` server on the HTTP server's event loop: both protocols feed the same
batchers, and the bearer token (when set) guards both."""

from __future__ import annotations

import hmac
import math
import time
from typing import Any

import numpy as np

from slimserve.core.errors import require
from slimserve.serve.state import ServerState
from slimserve.serve.v2codec import (
    V2_TO_NUMPY,
    ProtocolError,
    check_shape,
    decode_bytes_elements,
    v2_datatype,
)


def _decode(request: Any) -> dict[str, np.ndarray]:
    inputs = {}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        # Triton's rule: raw_input_contents is empty or has one entry per input, in order.
        raise ProtocolError(
            f"The request has {len(raw)} raw_input_contents for {len(request.inputs)} "
            "inputs: send one per input, or none."
        )
    for index, tensor in enumerate(request.inputs):
        if tensor.datatype == "BYTES":
            inputs[tensor.name] = _bytes_input(tensor, raw[index] if index < len(raw) else None)
            continue
        if tensor.datatype not in V2_TO_NUMPY:
            raise ProtocolError(
                f"Input '{tensor.name}': datatype {tensor.datatype!r} is not supported."
            )
        dtype = np.dtype(V2_TO_NUMPY[tensor.datatype])
        shape = check_shape(tensor.name, [int(d) for d in tensor.shape])
        count = math.prod(shape)
        if index < len(raw):
            data = raw[index]
            if len(data) != count * dtype.itemsize:
                raise ProtocolError(
                    f"Input '{tensor.name}': {len(data)} raw bytes for shape {shape} of "
                    f"{tensor.datatype} ({count * dtype.itemsize} expected)."
                )
            inputs[tensor.name] = np.frombuffer(data, dtype=dtype).reshape(shape)
            continue
        contents = tensor.contents
        field = {
            "FP32": "fp32_contents",
            "FP64": "fp64_contents",
            "INT64": "int64_contents",
            "INT32": "int_contents",
            "INT8": "int_contents",
            "INT16": "int_contents",
            "UINT8": "uint_contents",
            "UINT32": "uint_contents",
            "UINT64": "uint64_contents",
            "BOOL": "bool_contents",
        }.get(tensor.datatype)
        values = list(getattr(contents, field)) if field else []
        if len(values) != count:
            raise ProtocolError(
                f"Input '{tensor.name}': shape {shape} needs {count} values, got {len(values)}."
            )
        inputs[tensor.name] = np.asarray(values, dtype=dtype).reshape(shape)
    return inputs


def _bytes_input(tensor: Any, raw: bytes | None) -> np.ndarray:
    """A BYTES input: raw (length-prefixed elements, as tritonclient sends) or
    ``bytes_contents``."""
    shape = check_shape(tensor.name, [int(d) for d in tensor.shape])
    items = (
        decode_bytes_elements(raw, tensor.name)
        if raw is not None
        else list(tensor.contents.bytes_contents)
    )
    if len(items) != math.prod(shape):
        raise ProtocolError(
            f"Input '{tensor.name}': shape {shape} needs {math.prod(shape)} elements, "
            f"got {len(items)}."
        )
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


_GRPC_STATUS = {
    400: lambda grpc: grpc.StatusCode.INVALID_ARGUMENT,
    413: lambda grpc: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: lambda grpc: grpc.StatusCode.UNAVAILABLE,
    504: lambda grpc: grpc.StatusCode.DEADLINE_EXCEEDED,
    500: lambda grpc: grpc.StatusCode.INTERNAL,
}


def create_grpc_server(state: ServerState, host: str, port: int) -> tuple[Any, int]:
    """A ``grpc.aio`` server (not started) for the models in ``state`` (a ServerState),
    and the port it bound. Start it from a running event loop."""
    grpc: Any = require("grpc", "serve", "The gRPC endpoint")
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from slimserve.core.version import __version__
    from slimserve.serve.infer import input_metadata, tensor_metadata
    from slimserve.serve.submit import error_status, infer

    class Service(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ServerLive(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerReadyResponse(ready=not state.draining)

        async def ModelReady(self, request: Any, context: Any) -> Any:
            if state.draining:
                return service_pb2.ModelReadyResponse(ready=False)
            try:
                state.find(request.name, request.version)
            except LookupError:
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=True)

        async def ServerMetadata(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerMetadataResponse(
                name="slimserve", version=__version__, extensions=["model_repository_metadata"]
            )

        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            try:
                model = state.find(request.name, request.version)
            except LookupError as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            tensor = service_pb2.ModelMetadataResponse.TensorMetadata
            return service_pb2.ModelMetadataResponse(
                name=model.name,
                versions=list(state.models[model.name]),
                platform="onnxruntime_onnx",
                inputs=[tensor(**spec) for spec in input_metadata(model)],
                outputs=[tensor(**tensor_metadata(s)) for s in model.outputs],
            )

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            if state.draining:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "The server is shutting down; retry (another replica will answer).",
                )
            state.grpc_in_flight += 1
            try:
                return await self.answer_infer(request, context)
            finally:
                state.grpc_in_flight -= 1

        async def answer_infer(self, request: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                model = state.find(request.model_name, request.model_version)
            except LookupError as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            code = 200
            try:
                outputs = await infer(state, model, _decode(request))
                wanted = [o.name for o in request.outputs] or list(outputs)
                unknown = [o for o in wanted if o not in outputs]
                if unknown:
                    raise ProtocolError(
                        f"Unknown output(s) {unknown}; the model gives {list(outputs)}."
                    )
            except Exception as exc:  # a bad request, a limit, or the model failed
                code, message = error_status(model, exc)
                await context.abort(_GRPC_STATUS[code](grpc), message)
            finally:
                state.observe(model.name, code, time.perf_counter() - started, "grpc")
            response = service_pb2.ModelInferResponse(
                model_name=model.name, model_version=model.version, id=request.id
            )
            for name in wanted:
                array = np.ascontiguousarray(outputs[name])
                response.outputs.add(
                    name=name, datatype=v2_datatype(array.dtype.name), shape=list(array.shape)
                )
                response.raw_output_contents.append(array.tobytes())
            return response

    interceptors = []
    if state.config.token is not None:
        interceptors.append(_token_interceptor(grpc, state.config.token))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", state.config.max_body_bytes),
            ("grpc.max_send_message_length", 256 * 2**20),
        ],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Service(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    return server, bound


def _token_interceptor(grpc: Any, token: str) -> Any:
    """Refuse calls without ``authorization: Bearer TOKEN`` metadata (ServerLive stays
    open, as /v2/health/live does over HTTP, for orchestrators' liveness probes)."""
    expected = f"Bearer {token}".encode()

    async def refuse(request: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "Missing or wrong bearer token (metadata 'authorization: Bearer ...').",
        )

    refusal = grpc.unary_unary_rpc_method_handler(refuse)

    class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            if details.method.endswith("/ServerLive"):
                return await continuation(details)
            supplied = dict(details.invocation_metadata or ()).get("authorization", "")
            supplied_bytes = supplied.encode() if isinstance(supplied, str) else supplied
            if hmac.compare_digest(supplied_bytes, expected):
                return await continuation(details)
            return refusal

    return TokenInterceptor()
