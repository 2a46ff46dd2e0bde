"""Accuracy-aware int4 for decoder LMs (NNCF's AWQ, scale estimation and int4 share on the
builder's float model) and the exact rewrites that make NNCF's output fast in ONNX
Runtime: the same numbers before and after each rewrite, a tiny Llama built end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("nncf")

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import slimserve as ss
from slimserve.cli import app
from slimserve.core.errors import DataError, RecipeError
from slimserve.techniques.quantize import nbits

RNG = np.random.default_rng(0)


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feed)]


def per_channel_graph(signed: bool) -> onnx.ModelProto:
    """x @ dequant(W) and dequant(E)[ids]: NNCF's per-channel int8 backup layers."""
    dtype = np.int8 if signed else np.uint8
    low, high = (-128, 128) if signed else (0, 256)
    weight = RNG.integers(low, high, (64, 48)).astype(dtype)
    table = RNG.integers(low, high, (40, 64)).astype(dtype)
    initializers = [
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(RNG.random(48, dtype=np.float32), "w_scale"),
        numpy_helper.from_array(RNG.integers(low, high, 48).astype(dtype), "w_zp"),
        numpy_helper.from_array(table, "e_q"),
        numpy_helper.from_array(RNG.random(40, dtype=np.float32), "e_scale"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"),
        helper.make_node("DequantizeLinear", ["e_q", "e_scale"], ["e"], axis=0),
        helper.make_node("Gather", ["e", "ids"], ["rows"], name="gather"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("rows", TensorProto.FLOAT, None),
        ],
        initializers,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )


@pytest.mark.parametrize("signed", [False, True])
def test_per_channel_int8_becomes_blocks_with_the_same_values(signed: bool) -> None:
    model = per_channel_graph(signed)
    values = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer}
    weight = (values["w_q"] - values["w_zp"]) * values["w_scale"]
    table = values["e_q"] * values["e_scale"][:, None]
    feed = {"x": RNG.standard_normal((2, 64)).astype(np.float32), "ids": np.array([0, 7, 39])}
    assert nbits.per_channel_to_blocks(model, 32, accuracy_level=1) == 2
    ops = {n.op_type for n in model.graph.node}
    assert ops == {"MatMulNBits", "GatherBlockQuantized"}
    product, rows = run(model, feed)
    np.testing.assert_allclose(product, feed["x"] @ weight, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(rows, table[feed["ids"]])  # a table lookup: exact


def test_zero_points_one_per_byte_are_packed_as_matmulnbits_reads_them() -> None:
    k, n, block = 64, 8, 16
    codes = RNG.integers(0, 16, (n, k)).astype(np.uint8)
    points = RNG.integers(0, 16, (n, k // block)).astype(np.uint8)
    scales = RNG.random((n, k // block), dtype=np.float32)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(n, k // block, block // 2)
    node = helper.make_node(
        "MatMulNBits", ["x", "b", "s", "zp"], ["y"], domain="com.microsoft",
        K=k, N=n, bits=4, block_size=block, accuracy_level=1,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(packed, "b"),
            numpy_helper.from_array(scales, "s"),
            numpy_helper.from_array(points, "zp"),  # NNCF's layout: one per byte
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    with pytest.raises(Exception, match="zero_points"):
        run(model, {"x": np.ones((1, k), np.float32)})  # ONNX Runtime refuses that layout
    assert nbits.pack_zero_points(model) == 1
    x = RNG.standard_normal((1, k)).astype(np.float32)
    weight = (codes.astype(np.float32) - np.repeat(points, block, 1)) * np.repeat(scales, block, 1)
    np.testing.assert_allclose(run(model, {"x": x})[0], x @ weight.T, rtol=1e-4, atol=1e-4)


def recipe(folder: Path, prose: Path, quantize: dict[str, object], **data: object) -> ss.Recipe:
    return ss.parse_recipe(
        {
            "name": "tiny-awq",
            "model": {"hf": str(folder)},
            "data": {"eval": {"text": str(prose), "max_length": 64, "samples": 2}, **data},
            "steps": [
                {"quantize": {"mode": "llm", "weights": "int4", "group_size": 16, **quantize}}
            ],
            "goal": {"metric": "kl_divergence", "max_drop": 100.0},
            "bench": {"repeats": 3},
        }
    )


def test_awq_scale_estimation_and_an_int4_share_build_a_generating_artifact(
    tiny_llama: Path, prose: Path, tmp_path: Path
) -> None:
    methods = {"awq": True, "scale_estimation": True, "int4_share": 0.5, "calibration_samples": 4}
    result = ss.run_recipe(recipe(tiny_llama, prose, methods), tmp_path)
    built = result.stages[-1]
    assert "awq+se" in built.name and "50% int4 by hessian" in built.name
    assert 0 < built.metrics["kl_divergence"] < 5 and built.metrics["decode_tokens_per_s"] > 0
    notes = result.artifact.manifest.notes
    assert any("Calibration" in n and "Python's documentation" in n for n in notes)
    shown = CliRunner().invoke(app, ["inspect", str(result.artifact.path)])
    assert shown.exit_code == 0, shown.output
    # the int4 share leaves the rest of the body (and the embedding and head) in int8
    assert "int4 (groups of 16)" in shown.output and "int8 (groups of 16)" in shown.output
    assert "float32" not in shown.output.split("Weight layers by precision")[1]
    import onnx

    graph = onnx.load(result.artifact.path / "llm" / "model.onnx", load_external_data=False).graph
    table = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    assert table.input[0] not in {i.name for i in graph.initializer}  # the head's codes, shared
    generated = CliRunner().invoke(
        app, ["generate", str(result.artifact.path), "hello", "--max-tokens", "4"]
    )
    assert generated.exit_code == 0, generated.output


def test_nncf_methods_name_what_they_need(tiny_llama: Path, prose: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="set weights: int4"):
        recipe(tiny_llama, prose, {"weights": "int8", "awq": True})
    with pytest.raises(RecipeError, match="k_quant and sensitive_layers int8 are the builder's"):
        recipe(tiny_llama, prose, {"method": "k_quant", "scale_estimation": True})
    with pytest.raises(RecipeError, match="int4_share"):
        recipe(tiny_llama, prose, {"int4_share": 1.5})
    same = {"text": str(prose), "max_length": 64, "samples": 2}
    with pytest.raises(DataError, match="name the same text"):
        ss.run_recipe(recipe(tiny_llama, prose, {"awq": True}, calibration=same), tmp_path)


def test_one_line_awq_prints_its_recipe(tiny_llama: Path) -> None:
    line = ["quantize", str(tiny_llama), "--awq", "--scale-estimation", "--int4-share", "0.8"]
    result = CliRunner().invoke(app, [*line, "--calibration", "text:cal.txt", "--print-recipe"])
    assert result.exit_code == 0, result.output
    for key in ("awq: true", "scale_estimation: true", "int4_share: 0.8", "cal.txt"):
        assert key in result.output
