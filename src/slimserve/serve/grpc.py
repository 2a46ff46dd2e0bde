"""The V2 gRPC service (KServe/Triton ``GRPCInferenceService``), on the servicer that
``tritonclient.grpc`` ships (generated from the public grpc_predict_v2 proto), so the
wire format is exactly what tritonclient and KServe clients speak. Tensors travel in
``raw_input_contents`` / ``raw_output_contents``, the form tritonclient reads."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import numpy as np

from slimserve.errors import require
from slimserve.serve.protocol import V2_TO_NUMPY, ProtocolError, v2_datatype


def _metadata(models: dict[str, dict[str, Any]], name: str, version: str) -> Any:
    versions = models.get(name)
    if versions is None:
        raise ProtocolError(f"Unknown model '{name}'. Served: {', '.join(models)}.")
    if not version:
        version = max(versions, key=lambda v: int(v) if v.isdigit() else 0)
    if version not in versions:
        raise ProtocolError(f"Model '{name}' has no version '{version}'.")
    return versions[version]


def _decode(request: Any) -> dict[str, np.ndarray]:
    inputs = {}
    raw = list(request.raw_input_contents)
    for index, tensor in enumerate(request.inputs):
        if tensor.datatype not in V2_TO_NUMPY:
            raise ProtocolError(
                f"Input '{tensor.name}': datatype {tensor.datatype!r} is not supported."
            )
        dtype = np.dtype(V2_TO_NUMPY[tensor.datatype])
        shape = [int(d) for d in tensor.shape]
        if any(d < 0 for d in shape):
            raise ProtocolError(f"Input '{tensor.name}': negative dimension in {shape}.")
        count = int(np.prod(shape)) if shape else 1
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


def create_grpc_server(
    models: dict[str, dict[str, Any]], host: str, port: int, max_rows: int = 1024
) -> tuple[Any, int]:
    """A started-ready (not yet started) grpc.Server and the port it bound."""
    grpc: Any = require("grpc", "serve", "The gRPC endpoint")
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from slimserve import __version__
    from slimserve.serve.app import _check_inputs

    class Service(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        def ServerLive(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        def ServerReady(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerReadyResponse(ready=True)

        def ModelReady(self, request: Any, context: Any) -> Any:
            try:
                _metadata(models, request.name, request.version)
            except ProtocolError:
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=True)

        def ServerMetadata(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerMetadataResponse(
                name="slimserve", version=__version__, extensions=["model_repository_metadata"]
            )

        def ModelMetadata(self, request: Any, context: Any) -> Any:
            try:
                model = _metadata(models, request.name, request.version)
            except ProtocolError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

            def tensor(spec: dict[str, Any]) -> Any:
                shape = [d if isinstance(d, int) and d > 0 else -1 for d in spec["shape"]]
                return service_pb2.ModelMetadataResponse.TensorMetadata(
                    name=spec["name"], datatype=v2_datatype(spec["dtype"]), shape=shape
                )

            return service_pb2.ModelMetadataResponse(
                name=model.name,
                versions=list(models[model.name]),
                platform="onnxruntime_onnx",
                inputs=[tensor(s) for s in model.inputs],
                outputs=[tensor(s) for s in model.outputs],
            )

        def ModelInfer(self, request: Any, context: Any) -> Any:
            try:
                model = _metadata(models, request.model_name, request.model_version)
            except ProtocolError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            try:
                inputs = _check_inputs(model, _decode(request), max_rows)
                outputs = dict(
                    zip(model.predictor.output_names, model.predictor.predict(inputs), strict=True)
                )
                wanted = [o.name for o in request.outputs] or list(outputs)
                unknown = [o for o in wanted if o not in outputs]
                if unknown:
                    raise ProtocolError(
                        f"Unknown output(s) {unknown}; the model gives {list(outputs)}."
                    )
            except ProtocolError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
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

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", 256 * 2**20)],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Service(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    return server, bound
