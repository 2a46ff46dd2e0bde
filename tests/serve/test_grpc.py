"""The V2 gRPC service driven by tritonclient.grpc."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")

import slimserve as ss  # noqa: E402
from slimserve.serve.grpc import create_grpc_server  # noqa: E402
from slimserve.serve.repository import load_repository  # noqa: E402


@pytest.fixture(scope="module")
def grpc_url(served_artifact) -> Iterator[str]:  # type: ignore[no-untyped-def]
    server, port = create_grpc_server(load_repository(served_artifact), "127.0.0.1", 0)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_health_metadata_and_infer(grpc_url: str, digits_onnx, digits_test) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "slimserve"
    meta = client.get_model_metadata("digits")
    assert meta.inputs[0].name == "input" and list(meta.inputs[0].shape) == [-1, 1, 8, 8]
    x = np.ascontiguousarray(digits_test.inputs["input"][:8])
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("digits", [tensor], outputs=[grpcclient.InferRequestedOutput("output")])
    (expected,) = ss.load_predictor(digits_onnx).predict({"input": x})
    np.testing.assert_allclose(result.as_numpy("output"), expected, atol=1e-5)


def test_errors_are_grpc_statuses(grpc_url: str) -> None:
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(grpc_url)
    bad = grpcclient.InferInput("input", [1, 1, 8, 7], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, 8, 7), "f4"))
    with pytest.raises(InferenceServerException, match="must have shape"):
        client.infer("digits", [bad])
    with pytest.raises(InferenceServerException, match="Unknown model 'nope'"):
        client.get_model_metadata("nope")
