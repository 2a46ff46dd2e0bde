"""``exclude`` in a quantize step: ONNX node names or the PyTorch module names pruning
uses (``fc1``, ``encoder.layer.0.attention``), mapped to the nodes exported from them."""

from __future__ import annotations

import ast
import difflib

from slimserve.core.errors import RecipeError
from slimserve.models.onnx import OnnxModel

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
"""Where torch.export's ONNX exporter records each node's module path."""


def module_nodes(model: OnnxModel) -> dict[str, list[str]]:
    """Module name -> the names of the nodes exported from it (and from its children).
    Read from the dynamo exporter's name scopes, or from the TorchScript exporter's node
    names (``/encoder/layer.0/attention/self/query/MatMul``)."""
    found: dict[str, list[str]] = {}
    for node in model.proto.graph.node:
        parts: list[str] = []
        scopes = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), None)
        if scopes is not None:
            try:
                listed = ast.literal_eval(scopes)  # a literal list of strings, never code
            except (ValueError, SyntaxError):
                listed = []
            if isinstance(listed, list):
                parts = [str(p) for p in listed[1:-1] if p]  # '' is the root, last the op
        elif node.name.startswith("/"):
            parts = node.name.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            found.setdefault(".".join(parts[:depth]), []).append(node.name)
            found.setdefault(parts[depth - 1], [])
            if node.name not in found[parts[depth - 1]]:
                found[parts[depth - 1]].append(node.name)  # dynamo scopes are full paths
    return {name: nodes for name, nodes in found.items() if nodes}


def resolve_exclusions(model: OnnxModel, exclude: tuple[str, ...]) -> tuple[str, ...]:
    """The node names ``exclude`` stands for; a name that is neither a node nor a module
    is an error naming the nearest of both."""
    if not exclude:
        return ()
    nodes = [n.name for n in model.proto.graph.node]
    modules: dict[str, list[str]] | None = None
    resolved: list[str] = []
    for name in exclude:
        if name in nodes:
            resolved.append(name)
            continue
        modules = module_nodes(model) if modules is None else modules
        if name in modules:
            resolved.extend(modules[name])
            continue
        close = difflib.get_close_matches(name, [*modules, *nodes], n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RecipeError(
            f"quantize.exclude names '{name}', which is neither a node nor a module of the "
            f"model.{hint} It takes ONNX node names or PyTorch module names (as pruning "
            "does); list both with: slimserve inspect MODEL"
        )
    return tuple(dict.fromkeys(resolved))
