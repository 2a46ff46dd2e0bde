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

from dataclasses import dataclass
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
    from onnx import numpy_helper

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
            rows = values.T  # MatMulNBits: one row per output
        elif user.op_type == "Gather" and user.input[0] == dq.output[0] and axis == 0:
            rows = values
        else:
            continue
        if rows.shape[1] % block_size:
            continue
        blocks = rows.shape[1] // block_size
        per_block = np.repeat(scales[:, None], blocks, axis=1)
        zero_points = np.repeat(points.astype(np.float32)[:, None], blocks, axis=1)
        weight = QuantizedRows(8, block_size, np.ascontiguousarray(rows), per_block, zero_points)
        replace_with_blocks(model, user, dq.output[0], weight, accuracy_level)
        model.graph.node.remove(dq)
        for name in dq.input:
            if name in initializers:
                model.graph.initializer.remove(initializers.pop(name))
        rewritten += 1
    return rewritten


@dataclass
class QuantizedRows:
    """A weight as rows of blocks: unsigned ``codes`` [rows, width]; ``scales``,
    ``zero_points`` (None: the midpoint, 8 or 128) and ``offsets`` (None: 0) [rows, width
    / block]; each weight is ``scale * (code - zero_point) + offset``. A row is an output
    of a MatMul, an entry of an embedding table."""

    bits: int
    block: int
    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def dequantized(self) -> np.ndarray:
        def wide(per_block: np.ndarray) -> np.ndarray:
            return np.repeat(per_block, self.block, axis=1)

        points = float(1 << (self.bits - 1)) if self.zero_points is None else wide(self.zero_points)
        values: np.ndarray = (self.codes.astype(np.float32) - points) * wide(self.scales)
        return values if self.offsets is None else values + wide(self.offsets)

    def rows(self, order: np.ndarray) -> QuantizedRows:
        def pick(per_row: np.ndarray | None) -> np.ndarray | None:
            return None if per_row is None else per_row[order]

        return QuantizedRows(
            self.bits,
            self.block,
            self.codes[order],
            self.scales[order],
            pick(self.zero_points),
            pick(self.offsets),
        )


def replace_with_blocks(
    model: Any, user: Any, weight_input: str, weight: QuantizedRows, accuracy_level: int
) -> None:
    """``user`` (a MatMul reading ``weight_input`` as its weight, or a Gather as its
    table) replaced by MatMulNBits / GatherBlockQuantized on ``weight``'s blocks. Zero
    points that are whole codes are stored as integers (packed for 4 bits), others in
    float. Offsets (Q4_1's float minimum per block) are added by a small float MatMul of
    the input's block sums: MatMulNBits with float zero points is exact too, but ONNX
    Runtime runs it 60x slower (it rebuilds the float weight at every call, measured)."""
    from onnx import helper, numpy_helper

    rows, width = weight.codes.shape
    blocks = width // weight.block
    prefix = f"{weight_input}_{weight.bits}bit"
    codes: np.ndarray = weight.codes.astype(np.uint8)
    if weight.bits == 4:
        codes = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    tensors = [
        numpy_helper.from_array(codes.reshape(rows, blocks, -1), f"{prefix}_codes"),
        numpy_helper.from_array(weight.scales.astype(np.float32), f"{prefix}_scales"),
    ]
    if weight.zero_points is not None:
        points = weight.zero_points
        whole = np.array_equal(points, np.round(points)) and points.min() >= 0
        if whole and points.max() < (1 << weight.bits):
            points = points.astype(np.uint8)
            if weight.bits == 4:
                padded = np.pad(points, ((0, 0), (0, blocks % 2)))
                points = padded[:, 0::2] | (padded[:, 1::2] << 4)
        tensors.append(numpy_helper.from_array(points, f"{prefix}_zero_points"))
    if user.op_type == "MatMul":
        output = user.output[0] if weight.offsets is None else f"{prefix}_scaled"
        node = helper.make_node(
            "MatMulNBits",
            [user.input[0], *(t.name for t in tensors)],
            [output],
            name=f"{user.name}_nbits",
            domain=MS_DOMAIN,
            K=width,
            N=rows,
            bits=weight.bits,
            block_size=weight.block,
            accuracy_level=accuracy_level,
        )
    else:
        tensors[0] = numpy_helper.from_array(weight.codes.astype(np.uint8), f"{prefix}_codes")
        if len(tensors) == 2:  # the midpoint, said explicitly
            middle = np.full(weight.scales.shape, 1 << (weight.bits - 1), np.uint8)
            tensors.append(numpy_helper.from_array(middle, f"{prefix}_zero_points"))
        node = helper.make_node(
            "GatherBlockQuantized",
            [tensors[0].name, user.input[1], tensors[1].name, tensors[2].name],
            [user.output[0]],
            name=f"{user.name}_blocks",
            domain=MS_DOMAIN,
            gather_axis=0,
            quantize_axis=1,
            block_size=weight.block,
            bits=weight.bits,
        )
    index = list(model.graph.node).index(user)
    added = [node]
    if weight.offsets is not None and user.op_type == "MatMul":
        added += _offset_nodes(model, user, weight, prefix, tensors)
    for position, new in enumerate(added):
        model.graph.node.insert(index + position, new)
    model.graph.node.remove(user)
    model.graph.initializer.extend(tensors)
    still_read = {name for n in model.graph.node for name in n.input}
    for initializer in list(model.graph.initializer):
        if initializer.name == weight_input and weight_input not in still_read:
            model.graph.initializer.remove(initializer)


def _offset_nodes(
    model: Any, user: Any, weight: QuantizedRows, prefix: str, tensors: list[Any]
) -> list[Any]:
    """``+ blocksums(x) @ offsets.T``: the per-block offsets' share of the product, the
    input's block sums computed once per input and block size."""
    from onnx import helper, numpy_helper

    assert weight.offsets is not None
    source = user.input[0]
    sums = f"{source}_block_sums_{weight.block}"
    nodes = []
    if not any(sums in n.output for n in model.graph.node):
        shape, axis = f"{sums}_shape", f"{sums}_axis"
        tensors.append(numpy_helper.from_array(np.array([0, 0, -1, weight.block]), shape))
        tensors.append(numpy_helper.from_array(np.array([-1]), axis))
        nodes += [
            helper.make_node("Reshape", [source, shape], [f"{sums}_blocks"], name=f"{sums}_r"),
            helper.make_node("ReduceSum", [f"{sums}_blocks", axis], [sums], name=sums, keepdims=0),
        ]
    offsets = numpy_helper.from_array(
        np.ascontiguousarray(weight.offsets.T.astype(np.float32)), f"{prefix}_offsets"
    )
    tensors.append(offsets)
    return [
        *nodes,
        helper.make_node("MatMul", [sums, offsets.name], [f"{prefix}_offset"], name=prefix),
        helper.make_node(
            "Add", [f"{prefix}_scaled", f"{prefix}_offset"], [user.output[0]], name=f"{prefix}_add"
        ),
    ]


def share_tied_table(model: Any) -> bool:
    """When the embedding table (a GatherBlockQuantized) holds the same codes and scales
    as the LM head (a MatMulNBits) — a tied embedding quantized once — the table reads the
    head's codes through a Reshape (as onnxruntime-genai's builder ties them), and its own
    copy is dropped: a vocabulary-sized tensor less on disk. True when shared."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    tables = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    heads = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    for table in tables:
        if table.input[0] not in initializers or table.input[2] not in initializers:
            continue
        codes = numpy_helper.to_array(initializers[table.input[0]])
        for head in heads:
            if head.input[1] not in initializers or head.input[2] not in initializers:
                continue
            head_codes = numpy_helper.to_array(initializers[head.input[1]])
            if head_codes.size != codes.size or head_codes.tobytes() != codes.tobytes():
                continue
            if any(_attribute(head, k) != _attribute(table, k) for k in ("bits", "block_size")):
                continue
            if not _same_values(initializers, head.input[2], table.input[2]):
                continue
            middle = 1 << (_attribute(head, "bits") - 1)
            head_points = (
                numpy_helper.to_array(initializers[head.input[3]])
                if len(head.input) > 3 and head.input[3]
                else None
            )
            table_points = (
                numpy_helper.to_array(initializers[table.input[3]])
                if len(table.input) > 3
                else None
            )
            if head_points is None:
                head_points = (
                    np.full_like(table_points, middle) if table_points is not None else None
                )
            if (head_points is None) != (table_points is None) or (
                head_points is not None
                and table_points is not None
                and not np.array_equal(head_points.reshape(-1), table_points.reshape(-1))
            ):
                continue
            shape_name = f"{table.input[0]}_shape"
            model.graph.initializer.append(
                numpy_helper.from_array(np.array(codes.shape, np.int64), shape_name)
            )
            reshaped = f"{head.input[1]}_as_table"
            reshape = helper.make_node(
                "Reshape", [head.input[1], shape_name], [reshaped], name=f"{table.name}_reshape"
            )
            model.graph.node.insert(list(model.graph.node).index(table), reshape)
            stale = [table.input[0], table.input[2]]
            table.input[0], table.input[2] = reshaped, head.input[2]
            still_read = {name for n in model.graph.node for name in n.input}
            for name in stale:
                if name not in still_read:
                    model.graph.initializer.remove(initializers[name])
            return True
    return False


def set_accuracy_level(model: Any, level: int) -> None:
    """What every MatMulNBits computes in (4: int8 activations, 1: float32)."""
    from onnx import helper

    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("accuracy_level", level)])


def _same_values(initializers: dict[str, Any], first: str, second: str) -> bool:
    from onnx import numpy_helper

    a = numpy_helper.to_array(initializers[first]).reshape(-1)
    b = numpy_helper.to_array(initializers[second]).reshape(-1)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _attribute(node: Any, name: str, default: int = 0) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default
