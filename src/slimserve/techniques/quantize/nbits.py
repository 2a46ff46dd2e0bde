"""Graph rewrites that put NNCF's compressed decoder LM into the shapes ONNX Runtime's CPU
kernels run fast, each exact (the same integers, scales and zero points re-expressed):

- a per-channel int8 weight (``DequantizeLinear`` into a ``MatMul``, what NNCF writes for
  its int8 backup layers) becomes a ``MatMulNBits`` of 8 bits whose groups all carry their
  channel's scale: the float weight is no longer rebuilt at every step;
- a per-row int8 embedding (``DequantizeLinear`` into a ``Gather``) becomes a
  ``GatherBlockQuantized`` of 8 bits;
- 4-bit zero points written one per byte (NNCF) are packed two per byte, the layout
  MatMulNBits requires;
- a tied embedding (the builder's ``Transpose`` of the head's weight) gets its own
  initializer, so the head and the embedding can be compressed each in its own way.

No library does these: NNCF writes the first two as DequantizeLinear (correct, slow: the
head alone is 28 M weights dequantized per token) and ONNX Runtime fuses only blockwise
int4 DequantizeLinear into MatMulNBits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MS_DOMAIN = "com.microsoft"


def untie_embedding(model: Any) -> bool:
    """Give a tied embedding (``Gather`` from a ``Transpose`` of the head's weight) its
    own initializer; True when there was one."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        consumers = [n for n in model.graph.node if node.output[0] in n.input]
        if not consumers or any(c.op_type != "Gather" for c in consumers):
            continue
        table = numpy_helper.to_array(initializers[node.input[0]]).T.copy()
        name = "model.embed_tokens.weight"
        model.graph.initializer.append(numpy_helper.from_array(table, name))
        for consumer in consumers:
            consumer.input[0] = name
        model.graph.node.remove(node)
        return True
    return False


def pack_zero_points(model: Any) -> int:
    """4-bit zero points stored one per byte ([N, blocks]) packed two per byte, low
    nibble first ([N, ceil(blocks / 2)]); returns how many were packed."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    packed = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or _attribute(node, "bits") != 4:
            continue
        if len(node.input) < 4 or not node.input[3]:
            continue
        points = numpy_helper.to_array(initializers[node.input[3]])
        blocks = -(-_attribute(node, "K") // _attribute(node, "block_size"))
        if points.dtype != np.uint8 or points.size != _attribute(node, "N") * blocks:
            continue  # already packed (half the size) or in float
        rows = points.reshape(_attribute(node, "N"), blocks)
        if blocks % 2:
            rows = np.pad(rows, ((0, 0), (0, 1)))
        nibbles = (rows[:, 0::2] & 15) | ((rows[:, 1::2] & 15) << 4)
        initializers[node.input[3]].CopyFrom(
            numpy_helper.from_array(nibbles.astype(np.uint8), node.input[3])
        )
        packed += 1
    return packed


def per_channel_to_blocks(model: Any, block_size: int, accuracy_level: int) -> int:
    """Every per-channel 8-bit ``DequantizeLinear`` of an initializer that feeds one
    ``MatMul`` (as its weight) or one ``Gather`` (as its table) rewritten as an 8-bit
    ``MatMulNBits`` / ``GatherBlockQuantized`` with the same values; returns how many."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    rewritten = 0
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        if dq.input[0] not in initializers or len(dq.input) < 2:
            continue
        consumers = [n for n in model.graph.node if dq.output[0] in n.input]
        if len(consumers) != 1:
            continue
        user = consumers[0]
        values = numpy_helper.to_array(initializers[dq.input[0]])
        scales = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float32)
        if values.ndim != 2 or values.dtype not in (np.uint8, np.int8) or scales.ndim != 1:
            continue
        if len(dq.input) > 2 and dq.input[2]:
            points = numpy_helper.to_array(initializers[dq.input[2]]).astype(np.int16)
        else:
            points = np.zeros(scales.shape, np.int16)
        if values.dtype == np.int8:  # signed: shift onto the unsigned grid
            values, points = (values.astype(np.int16) + 128).astype(np.uint8), points + 128
        axis = _attribute(dq, "axis", 1) % 2
        if user.op_type == "MatMul" and user.input[1] == dq.output[0] and axis == 1:
            rows, width = values.T, values.shape[0]  # MatMulNBits: one row per output
        elif user.op_type == "Gather" and user.input[0] == dq.output[0] and axis == 0:
            rows, width = values, values.shape[1]
        else:
            continue
        if width % block_size:
            continue
        blocks = width // block_size
        prefix = dq.input[0]
        block_scales = np.repeat(scales[:, None], blocks, axis=1)
        block_points = np.repeat(points.astype(np.uint8)[:, None], blocks, axis=1)
        tensors = [
            numpy_helper.from_array(block_scales, f"{prefix}_block_scales"),
            numpy_helper.from_array(block_points, f"{prefix}_block_zero_points"),
        ]
        if user.op_type == "MatMul":
            data = np.ascontiguousarray(rows).reshape(len(rows), blocks, block_size)
            tensors.insert(0, numpy_helper.from_array(data, f"{prefix}_blocks"))
            node = helper.make_node(
                "MatMulNBits",
                [user.input[0], *(t.name for t in tensors)],
                [user.output[0]],
                name=f"{user.name}_nbits",
                domain=MS_DOMAIN,
                K=width,
                N=len(rows),
                bits=8,
                block_size=block_size,
                accuracy_level=accuracy_level,
            )
        else:
            tensors.insert(0, numpy_helper.from_array(np.ascontiguousarray(rows), prefix + "_q8"))
            node = helper.make_node(
                "GatherBlockQuantized",
                [tensors[0].name, user.input[1], tensors[1].name, tensors[2].name],
                [user.output[0]],
                name=f"{user.name}_q8",
                domain=MS_DOMAIN,
                gather_axis=0,
                quantize_axis=1,
                block_size=block_size,
                bits=8,
            )
        index = list(model.graph.node).index(user)
        model.graph.node.insert(index, node)
        model.graph.node.remove(user)
        model.graph.node.remove(dq)
        for name in dq.input:
            if name in initializers:
                model.graph.initializer.remove(initializers.pop(name))
        model.graph.initializer.extend(tensors)
        rewritten += 1
    return rewritten


def set_accuracy_level(model: Any, level: int) -> None:
    """What every MatMulNBits computes in (4: int8 activations, 1: float32)."""
    from onnx import helper

    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("accuracy_level", level)])


def _attribute(node: Any, name: str, default: int = 0) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default
