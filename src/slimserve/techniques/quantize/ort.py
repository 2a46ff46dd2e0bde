"""ONNX Runtime quantization: dynamic int8, calibrated static QDQ, 4-bit weight-only, fp16.

ORT's quantizer does the work; this module adds the calibration data plumbing,
pre-processing and the checks that turn ORT's failures into fixes. The step's configs
(one per mode) are in ``quantize.configs``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from slimserve.core.errors import DataError, RecipeError, SlimserveError, first_line
from slimserve.data import Dataset
from slimserve.models.onnx import OnnxModel

MIN_CALIBRATION_SAMPLES = 16

if TYPE_CHECKING:
    from slimserve.techniques.quantize.configs import (
        CalibrationConfig,
        DynamicQuantizeConfig,
        Fp16QuantizeConfig,
        OrtQuantizeConfig,
        WeightOnlyQuantizeConfig,
    )


def quantize_onnx(
    model: OnnxModel,
    config: OrtQuantizeConfig,
    calibration: Dataset | None = None,
    work_dir: Path | None = None,
    tensor_ranges: dict[str, tuple[float, float]] | None = None,
) -> OnnxModel:
    """Quantize ``model`` as ``config`` says; static mode needs ``calibration`` data.

    ``tensor_ranges`` ({tensor name: (min, max)}) fixes activation ranges instead of
    calibrating them (QAT passes the ranges it learned).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    from slimserve.techniques.quantize.exclude import resolve_exclusions

    config = config.model_copy(update={"exclude": resolve_exclusions(model, config.exclude)})
    if config.mode == "weight_only":
        return _weight_only(model, config)
    if config.mode == "fp16":
        return _fp16(model, config)
    if config.mode == "dynamic" and config.activation_scales == "token":
        return _per_token(model, config, work_dir)
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    alpha = getattr(config, "smooth_quant_alpha", None)
    if alpha is not None and calibration is not None:
        from slimserve.techniques.quantize.nncf import smooth_quant

        model = smooth_quant(model, calibration, alpha)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        source: onnx.ModelProto | Path = model.proto
        if config.preprocess:
            source = _preprocess(model, Path(tmp) / "pre.onnx")
        output = Path(tmp) / "quantized.onnx"
        common: dict[str, Any] = {
            "per_channel": config.per_channel,
            "reduce_range": config.reduce_range,
            "weight_type": qtype[config.weights],
            "op_types_to_quantize": list(config.op_types) if config.op_types else None,
            "nodes_to_exclude": list(config.exclude),
        }
        # Outputs of ORT's fused contrib ops (Attention, BiasGelu ...) have no inferred
        # type; they are float in every graph slimserve fuses.
        default_type = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        with _quiet():
            if config.mode == "dynamic":
                quantize_dynamic(source, output, extra_options=default_type, **common)
            else:
                if calibration is None:
                    raise DataError(
                        "Static quantization needs calibration data: add "
                        "data.calibration to the recipe (or pass calibration=...)."
                    )
                reader = _reader(model, calibration, config.calibration)
                overrides = {
                    name: [{"rmin": np.float32(low), "rmax": np.float32(high)}]
                    for name, (low, high) in (tensor_ranges or {}).items()
                }
                quantize_static(
                    source,
                    output,
                    reader,
                    activation_type=qtype[config.activations],
                    calibrate_method=_method(config.calibration.method),
                    extra_options={
                        "ActivationSymmetric": config.symmetric_activations,
                        "CalibPercentile": config.calibration.percentile,
                        "TensorQuantOverrides": overrides,
                        **default_type,
                    },
                    **common,
                )
        return OnnxModel(strip_debug_info(onnx.load(str(output))))


def _weight_only(model: OnnxModel, config: WeightOnlyQuantizeConfig) -> OnnxModel:
    """Block-wise 4/8-bit weights for MatMul (ORT's MatMulNBits); Gemm is split first."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    proto = gemm_to_matmul(model.proto)
    candidates = _constant_weight_matmuls(proto, config.exclude)
    if not candidates:
        raise RecipeError(
            "Weight-only quantization found no MatMul/Gemm with constant weights to quantize "
            "(it targets Linear layers; convolutions stay float). Use mode: static for CNNs."
        )
    with _quiet():
        quantizer = MatMulNBitsQuantizer(
            proto,
            bits=config.bits,
            block_size=config.block_size,
            is_symmetric=config.symmetric_weights,
            accuracy_level=config.accuracy_level,
            nodes_to_exclude=list(config.exclude),
            op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
    return OnnxModel(strip_debug_info(quantizer.model.model))


def _per_token(model: OnnxModel, config: DynamicQuantizeConfig, work_dir: Path | None) -> OnnxModel:
    """MatMuls and fused Attention by slimserve's rewrite (quantize/per_token.py), the
    other op types (Gather, Conv, ...) by ORT's dynamic quantizer as usual."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    from slimserve.techniques.quantize.per_token import (
        attention_weight_only,
        mark_fold_dequantize,
        per_token_matmuls,
    )

    types = set(config.op_types or IntegerOpsRegistry)

    def skip(name: str) -> bool:
        return name in config.exclude

    # The rewrite runs first: ORT's pre-processing renames nodes, and exclusions name
    # the nodes of the model the user has.
    proto = model.proto
    if "MatMul" in types:
        proto, _ = per_token_matmuls(gemm_to_matmul(proto), config.per_channel, skip)
    attention: list[str] = []
    if "Attention" in types:
        proto, attention = attention_weight_only(proto, config.per_channel, skip)
    others = tuple(sorted(types - {"MatMul", "Attention"}))
    if others:
        plain = config.model_copy(update={"activation_scales": "tensor", "op_types": others})
        proto = quantize_onnx(OnnxModel(proto), plain, work_dir=work_dir).proto
    if attention:
        mark_fold_dequantize(proto)
    return OnnxModel(proto)


def _fp16(model: OnnxModel, config: Fp16QuantizeConfig) -> OnnxModel:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        proto = convert_float_to_float16(
            copy.deepcopy(model.proto),
            keep_io_types=config.keep_io_types,
            node_block_list=list(config.exclude) or None,
        )
    return OnnxModel(strip_debug_info(proto))


def strip_debug_info(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node debug metadata (source stack traces, scopes): it is
    not needed to run the model and is a few percent of a small quantized file."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return proto


def _constant_weight_matmuls(proto: onnx.ModelProto, exclude: tuple[str, ...]) -> list[str]:
    weights = {i.name: i for i in proto.graph.initializer}
    return [
        n.name
        for n in proto.graph.node
        if n.op_type == "MatMul"
        and n.name not in exclude
        and n.input[1] in weights
        and len(weights[n.input[1]].dims) == 2
    ]


def gemm_to_matmul(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Gemm(A, W, b) with a constant W as MatMul(A, W') + b, the form ORT's
    weight-only quantizer handles. Other Gemms are left as they are."""
    from onnx import helper, numpy_helper

    proto = copy.deepcopy(proto)
    graph = proto.graph
    weights = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if (
            node.op_type != "Gemm"
            or node.input[1] not in weights
            or attrs.get("transA", 0)
            or not plain
        ):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        name = f"{node.input[1]}_matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=node.name))
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"
                )
            )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto


def _preprocess(model: OnnxModel, path: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from slimserve.models.onnx import scratch_cwd

    # From a file: given a ModelProto, quant_pre_process may move its weights to external
    # data in place, and a second attempt then reads a model whose data is gone.
    path = path.resolve()  # it runs in a scratch working directory
    source = path.with_name("pre-source.onnx")
    onnx.save(model.proto, source)
    with _quiet(), scratch_cwd():
        try:
            quant_pre_process(source, path, skip_symbolic_shape=False)
        except Exception:
            # Symbolic shape inference fails on some graphs (ORT's fused contrib ops among
            # them); ONNX's own shape inference is enough for quantization.
            quant_pre_process(source, path, skip_symbolic_shape=True)
    return path


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


class _BatchReader:
    """ORT's CalibrationDataReader protocol over a Dataset (duck-typed: get_next)."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]) -> None:
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _reader(model: OnnxModel, data: Dataset, config: CalibrationConfig) -> _BatchReader:
    if len(data) < MIN_CALIBRATION_SAMPLES:
        raise DataError(
            f"Static quantization got {len(data)} calibration samples; it needs at least "
            f"{MIN_CALIBRATION_SAMPLES} to estimate activation ranges (256+ is better). "
            "Give a larger data.calibration split."
        )
    names = model.input_names
    if set(data.inputs) != set(names) and len(data.inputs) == len(names) == 1:
        data = data.renamed(names)
    if set(data.inputs) != set(names):
        raise DataError(
            f"Calibration data has arrays {list(data.inputs)} but the model's inputs are "
            f"{list(names)}. Name the calibration arrays after the model inputs."
        )
    data = data.take(min(config.samples, len(data)))
    batches = (
        {
            k: np.ascontiguousarray(v, dtype=np.float32) if v.dtype.kind == "f" else v
            for k, v in batch.inputs.items()
        }
        for batch in data.batches(config.batch_size)
    )
    return _BatchReader(batches)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizer logs and prints progress; keep the user's terminal for our table."""
    sink = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink):
            yield
    except SlimserveError:
        raise
    except Exception as exc:
        detail = first_line(exc)
        raise SlimserveError(
            f"ONNX Runtime's quantizer failed: {detail}. Try excluding the node it names "
            "(quantize.exclude) or restricting quantize.op_types."
        ) from exc
    finally:
        root.setLevel(level)
