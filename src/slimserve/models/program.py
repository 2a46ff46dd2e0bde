"""Read a ``torch.export`` program (``.pt2``) without running anything it carries.

``torch.export.load`` is not safe on a file from elsewhere: it unpickles weights marked
``use_pickle`` (and any sample inputs that the safe unpickler refuses) with
``weights_only=False``, loads AOTInductor shared libraries, parses symbolic shapes with
``sympy.sympify`` (an ``eval``), ``exec``s the guards stored in the program, and resolves
any node target under ``torch.`` by name (``torch.os.system`` included). So the archive
is read here piece by piece, and refused unless every piece is data:

- no AOTInductor, legacy or pickled payloads; weights and constants are raw tensors;
  sample inputs load with ``torch.load(weights_only=True)``;
- every node calls an ATen/prims/quantized operator or an arithmetic builtin from a
  fixed list; symbolic expressions use only shape symbols, numbers and sympy functions;
- the stored guard code is dropped and regenerated from the checked graph.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
from typing import Any

import torch

from slimserve.core.errors import ModelLoadError

MODEL_NAME = "model"
# Operator namespaces whose ops compute on tensors; none of them reads or runs files.
_OP_NAMESPACES = ("torch.ops.aten.", "torch.ops.prims.", "torch.ops.quantized_decomposed.")
_REFUSED_OPS = ("torch.ops.aten.from_file", "torch.ops.aten._nested")  # reads a named file
_BUILTIN_TARGETS = frozenset(
    [
        f"_operator.{n}"
        for n in ["getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow"]
    ]
    + [
        f"_operator.{n}"
        for n in ["eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "pos", "abs"]
    ]
    + [f"math.{n}" for n in ("ceil", "floor", "sqrt", "trunc")]
    + [f"torch.{n}" for n in ["sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite"]]
    + [f"torch.{n}" for n in ["sym_sqrt", "sym_sum", "_assert", "_assert_async"]]
)
_SYMBOL = re.compile(r"[a-z]+\d+\Z")
_SYMPY_NAMES = frozenset(
    [
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "Mod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
        "Max",
        "Min",
        "Abs",
        "floor",
        "ceiling",
        "sqrt",
        "oo",
        "zoo",
        "Integer",
        "Rational",
        "Float",
        "True",
        "False",
        "And",
        "Or",
        "Not",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "IsNonOverlappingAndDenseIndicator",
        "OpaqueUnaryFn_sqrt",
        "BitwiseFn_bitwise_and",
        "BitwiseFn_bitwise_or",
        "Symbol",
        "positive",
        "negative",
        "nonnegative",
        "nonpositive",
        "integer",
        "real",
        "finite",
        "zero",
        "nonzero",
        "even",
        "odd",
    ]
)
_OPERATORS = frozenset(
    [
        "+",
        "-",
        "*",
        "/",
        "//",
        "%",
        "**",
        "(",
        ")",
        ",",
        "<",
        ">",
        "<=",
        ">=",
        "==",
        "!=",
        "&",
        "|",
        "~",
        "=",
    ]
)
_SYMBOL_NAME = re.compile(r"(['\"])[a-z]+\d+\1\Z")  # Symbol('s0', integer=True)


def _refuse(where: str, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"Refused to load the torch program '{where}': {why}. slimserve never runs code "
        "from a model file; re-export it with slimserve (runtimes: {candidates: [torch]}) "
        "or serve the ONNX model."
    )


def _check_expression(text: str, where: str) -> None:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise _refuse(where, f"a symbolic shape '{text[:80]}' does not parse") from exc
    for token in tokens:
        if token.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.NUMBER):
            continue
        if token.type == tokenize.NAME and (
            _SYMBOL.match(token.string) or token.string in _SYMPY_NAMES
        ):
            continue
        if token.type == tokenize.OP and token.string in _OPERATORS:
            continue
        if token.type == tokenize.STRING and _SYMBOL_NAME.match(token.string):
            continue
        raise _refuse(where, f"a symbolic shape holds '{token.string[:40]}', not a shape term")


def _check_target(target: str, where: str) -> None:
    if target in _BUILTIN_TARGETS:
        return
    if target.startswith(_OP_NAMESPACES) and not target.startswith(_REFUSED_OPS):
        return
    raise _refuse(where, f"a node calls '{target[:80]}', which is not a tensor operator")


def _check_program_json(value: Any, where: str) -> None:
    """Every node target and symbolic expression in the serialized program, recursively
    (higher-order ops carry subgraphs)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            target = item.get("target")
            if isinstance(target, str) and "inputs" in item:
                _check_target(target, where)
            expr = item.get("expr_str")
            if isinstance(expr, str):
                _check_expression(expr, where)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def read_program(data: bytes, where: str) -> torch.export.ExportedProgram:
    """The ``ExportedProgram`` in ``.pt2`` bytes, or a ModelLoadError saying what was
    refused (``where`` names the file in messages)."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass
    from torch.export.exported_program import _convert_guards_to_code
    from torch.export.pt2_archive import _package as package
    from torch.export.pt2_archive import constants as names

    try:
        reader_context = package.PT2ArchiveReader(io.BytesIO(data))
    except Exception as exc:
        raise _refuse(where, "it is not a readable torch.export program (.pt2 archive)") from exc
    with reader_context as reader:
        files = reader.get_file_names()
        if reader.read_string(names.ARCHIVE_VERSION_PATH) != names.ARCHIVE_VERSION_VALUE:
            raise _refuse(where, "its archive version is not this torch's")
        program_file = names.MODELS_FILENAME_FORMAT.format(MODEL_NAME)
        programs = [f for f in files if f.startswith(names.MODELS_DIR)]
        if programs != [program_file]:
            raise _refuse(where, f"it holds programs {programs}, not one '{program_file}'")
        code_dirs = (names.AOTINDUCTOR_DIR, names.EXECUTORCH_DIR, names.MTIA_DIR)
        for file in files:
            if file.startswith(code_dirs) or file.endswith((".so", ".pyd", ".dll")):
                raise _refuse(where, f"it carries compiled code ('{file}')")
            if file in (
                f"{names.WEIGHTS_DIR}{MODEL_NAME}.pt",
                f"{names.CONSTANTS_DIR}{MODEL_NAME}.pt",
            ):
                raise _refuse(where, f"it stores pickled weights in the legacy format ('{file}')")
        for config_name in (
            names.WEIGHTS_CONFIG_FILENAME_FORMAT.format(MODEL_NAME),
            names.CONSTANTS_CONFIG_FILENAME_FORMAT.format(MODEL_NAME),
        ):
            if config_name not in files:
                raise _refuse(where, f"'{config_name}' is missing")
            try:
                config = json.loads(reader.read_string(config_name)).get("config", {})
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
                raise _refuse(where, f"'{config_name}' is not a JSON object") from exc
            for fqn, payload in config.items():
                if payload.get("use_pickle", True):
                    raise _refuse(where, f"'{fqn}' is stored as a pickle (use_pickle)")
                path = str(payload.get("path_name", ""))
                if config_name.startswith(names.CONSTANTS_DIR) and not path.startswith(
                    names.TENSOR_CONSTANT_FILENAME_PREFIX
                ):
                    raise _refuse(where, f"constant '{fqn}' is a Python object, not a tensor")
        try:
            program_json = json.loads(reader.read_bytes(program_file))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _refuse(where, f"'{program_file}' is not valid JSON") from exc
        _check_program_json(program_json, where)
        try:
            sample = torch.load(
                io.BytesIO(
                    reader.read_bytes(names.SAMPLE_INPUTS_FILENAME_FORMAT.format(MODEL_NAME))
                ),
                weights_only=True,
            )
        except Exception as exc:
            raise _refuse(where, "its sample inputs are not plain tensors") from exc
        if not isinstance(sample, tuple):
            raise _refuse(where, "its sample inputs are not an (args, kwargs) pair")
        state_dict = package._load_state_dict(reader, MODEL_NAME)
        constants = package._load_constants(reader, MODEL_NAME)
    serialized = _dict_to_dataclass(schema.ExportedProgram, program_json)  # type: ignore[no-untyped-call]
    program = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, sample)
    program._guards_code = _convert_guards_to_code(program.graph_module)  # type: ignore[no-untyped-call]
    return program
