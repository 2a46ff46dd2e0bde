"""Open Inference Protocol V2 tensors: datatypes, JSON and the binary data extension.

Request bodies follow the KServe/Triton V2 spec; the binary extension is the one
tritonclient uses: a JSON header of ``Inference-Header-Content-Length`` bytes followed
by raw tensors in order, each input/output marked with ``binary_data_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

V2_TO_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
NUMPY_TO_V2 = {np.dtype(v).name: k for k, v in V2_TO_NUMPY.items()}
_DTYPES = {k: np.dtype(v) for k, v in V2_TO_NUMPY.items()}
# By dtype object: ``dtype.name`` is computed in Python on every call (~5 % of a served
# request's CPU in a py-spy profile).
_V2_BY_DTYPE = {np.dtype(v): k for k, v in V2_TO_NUMPY.items()}


class ProtocolError(Exception):
    """A bad request: the message goes back to the client as {"error": ...} with 400."""


class TooLarge(ProtocolError):
    """A request over a size limit: answered 413."""


MAX_RANK = 16
MAX_DIM = 2**31 - 1  # what ONNX Runtime and numpy index with; larger is no real tensor


def check_shape(name: str, shape: Any) -> list[int]:
    """A request's shape as ints, or a ProtocolError: every dimension a non-negative int
    below 2**31, at most 16 of them (so no shape overflows numpy or ORT)."""
    if not isinstance(shape, list | tuple) or not all(
        type(d) is int and 0 <= d <= MAX_DIM  # bool is not a dimension
        for d in shape
    ):
        raise ProtocolError(
            f"Input '{name}': 'shape' must be a list of integers in [0, {MAX_DIM}], got "
            f"{str(shape)[:100]}."
        )
    if len(shape) > MAX_RANK:
        raise ProtocolError(f"Input '{name}' has {len(shape)} dimensions, over {MAX_RANK}.")
    return list(shape)


def v2_datatype(dtype: str) -> str:
    """V2 datatype of a numpy dtype name ('float32' -> 'FP32')."""
    if dtype not in NUMPY_TO_V2:
        raise ProtocolError(f"dtype {dtype} has no V2 datatype")
    return NUMPY_TO_V2[dtype]


@dataclass(frozen=True)
class Request:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    binary_outputs: set[str]
    binary_default: bool


def parse_request(body: bytes, header_length: int | None) -> Request:
    """A V2 inference request (JSON, or JSON + binary tensors) -> numpy arrays."""
    import orjson

    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length is {header_length} but the body has "
                f"{len(body)} bytes."
            )
        header_bytes, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header_bytes, binary = body, memoryview(b"")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise ProtocolError("A V2 request is a JSON object with an 'inputs' list.")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, spec in enumerate(header["inputs"]):
        if not isinstance(spec, dict):
            raise ProtocolError(f"inputs[{index}] must be an object.")
        name, array, used = _input_tensor(spec, index, binary[offset:])
        offset += used
        if name in inputs:
            raise ProtocolError(f"Input '{name}' is given twice.")
        inputs[name] = array
    if offset != len(binary):
        raise ProtocolError(
            f"The body has {len(binary) - offset} bytes of binary data that no input claims."
        )
    params = header.get("parameters") or {}
    binary_default = (
        bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    )
    outputs, binary_outputs = None, set()
    if isinstance(header.get("outputs"), list):
        outputs = []
        for spec in header["outputs"]:
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ProtocolError("Each requested output is an object with a 'name'.")
            outputs.append(spec["name"])
            out_params = spec.get("parameters") or {}
            if isinstance(out_params, dict) and out_params.get("binary_data", binary_default):
                binary_outputs.add(spec["name"])
    request_id = header.get("id")
    return Request(
        str(request_id) if request_id is not None else None,
        inputs,
        outputs,
        binary_outputs,
        binary_default,
    )


def _input_tensor(
    spec: dict[str, Any], index: int, binary: memoryview
) -> tuple[str, np.ndarray, int]:
    name = spec.get("name")
    shape = spec.get("shape")
    datatype = spec.get("datatype")
    if not isinstance(name, str):
        raise ProtocolError(f"inputs[{index}] needs a 'name'.")
    if not isinstance(shape, list):
        raise ProtocolError(f"Input '{name}': 'shape' must be a list of integers.")
    shape = check_shape(name, shape)
    if datatype == "BYTES":
        return _bytes_tensor(name, shape, spec, binary)
    dtype = _DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise ProtocolError(
            f"Input '{name}': datatype {datatype!r} is not one of {', '.join(V2_TO_NUMPY)}, BYTES."
        )
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise ProtocolError(
                f"Input '{name}': binary_data_size {size} does not match shape {shape} of "
                f"{datatype} ({count * dtype.itemsize} bytes)."
            )
        if size > len(binary):
            raise ProtocolError(f"Input '{name}': the body ends before its {size} binary bytes.")
        array = np.frombuffer(binary[:size], dtype=dtype).reshape(shape)
        return name, array, size
    data = spec.get("data")
    if data is None:
        raise ProtocolError(f"Input '{name}' has neither 'data' nor binary_data_size.")
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"Input '{name}': 'data' cannot be read as {datatype}.") from None
    if array.size != count:
        raise ProtocolError(
            f"Input '{name}': shape {shape} needs {count} elements but 'data' has {array.size}."
        )
    return name, array.reshape(shape), 0


def encode_response(
    model: str, version: str, request: Request, outputs: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow."""
    import orjson

    entries, chunks = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": _V2_BY_DTYPE.get(array.dtype) or v2_datatype(array.dtype.name),
            "shape": list(array.shape),
        }
        if name in request.binary_outputs or (request.outputs is None and request.binary_default):
            raw = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        body["id"] = request.id
    header = orjson.dumps(body)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _bytes_tensor(
    name: str, shape: list[int], spec: dict[str, Any], binary: memoryview
) -> tuple[str, np.ndarray, int]:
    """A BYTES tensor: JSON strings, or the binary form (each element a 4-byte
    little-endian length, then its bytes), as an object array of ``bytes``."""
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise ProtocolError(f"Input '{name}': binary_data_size {size!r} is not in the body.")
        items = decode_bytes_elements(bytes(binary[:size]), name)
        used = size
    else:
        data = spec.get("data")
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise ProtocolError(f"Input '{name}': BYTES 'data' must be a list of strings.")
        items = [d.encode() for d in data]
        used = 0
    if len(items) != count:
        raise ProtocolError(
            f"Input '{name}': shape {shape} needs {count} elements but the data has {len(items)}."
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return name, array.reshape(shape), used


def decode_bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """Triton's serialized BYTES tensor: <uint32 little-endian length><bytes>, repeated."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"Input '{name}': a BYTES element's length is cut short.")
        length = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"Input '{name}': a BYTES element runs past its data.")
        items.append(raw[offset : offset + length])
        offset += length
    return items
