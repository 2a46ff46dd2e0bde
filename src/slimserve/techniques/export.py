"""torch -> ONNX export with a dynamic batch axis, followed by a parity check in ORT."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import replace
from typing import Any, ClassVar, Literal

import onnx
import torch
from pydantic import BaseModel, ConfigDict, Field

from slimserve.core.context import Context
from slimserve.core.errors import ExportError, first_line
from slimserve.models.keras import is_keras
from slimserve.models.onnx import OnnxModel
from slimserve.models.torch import TorchModel, as_eval


class ExportConfig(BaseModel):
    """Export a torch model to ONNX and check ONNX Runtime agrees with torch."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "export"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    produces: ClassVar[str] = "onnx"
    trains: ClassVar[bool] = False

    format: Literal["onnx"] = Field(
        "onnx", description="ONNX (served); litert and executorch are for devices."
    )
    opset: int = Field(18, ge=17, description="ONNX opset version (17 or newer).")
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        "auto",
        description="torch.export-based exporter, or the legacy TorchScript one; auto: "
        "TorchScript for Hugging Face models (its graph is what ORT's transformer "
        "optimizer fuses), torch.export otherwise.",
    )
    dynamic_batch: bool = Field(True, description="Make the first axis of every input dynamic.")
    atol: float = Field(1e-4, gt=0, description="Parity: largest allowed max abs error.")
    min_cosine: float = Field(0.9999, gt=0, le=1, description="Parity: smallest allowed cosine.")

    def describe(self) -> str:
        """A short label for tables."""
        return "export"

    def apply(self, model: TorchModel, ctx: Context) -> OnnxModel:
        samples = model.example_inputs
        if samples is None:
            data = ctx.split("calibration", "eval", "train")
            if data is None:
                raise ExportError(
                    "Export needs example inputs: the model has none and the recipe "
                    "defines no data. Add a 'data' section or return example inputs "
                    "from the model factory."
                )
            batch = data.renamed(model.input_names).take(2)
            samples = tuple(torch.from_numpy(batch.inputs[n]) for n in model.input_names)
            model = replace(model, example_inputs=samples)
        onnx_model = export_onnx(model, self)
        check_parity(model, onnx_model, samples, self, threads=ctx.threads)
        return onnx_model


def export_onnx(model: TorchModel, config: ExportConfig) -> OnnxModel:
    """Run torch's exporter; quiet on success, a clear ExportError on failure."""
    if model.example_inputs is None:
        raise ExportError("Export needs example inputs; give them with the model.")
    module = as_eval(model.module)
    args = model.example_inputs
    exporter = config.exporter
    if exporter == "auto":
        # HF: TorchScript's graph is the one ORT's optimizer fuses. Keras: its call takes
        # *args/**kwargs, which torch.export cannot map dynamic shapes onto.
        legacy = model.hf_folder is not None or is_keras(model.module)
        exporter = "torchscript" if legacy else "dynamo"
    axes_of = {n: {0: "batch"} for n in model.input_names} | (model.dynamic_axes or {})
    sink = io.StringIO()
    # torch.onnx and the onnxscript optimizer it runs log at INFO/WARNING: keep it quiet.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    old_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dynamic = (
                    tuple(
                        dict.fromkeys(axes_of[n], torch.export.Dim.DYNAMIC)
                        for n in model.input_names
                    )
                    if config.dynamic_batch
                    else None
                )
                program = torch.onnx.export(
                    module,
                    args,
                    None,
                    dynamo=True,
                    input_names=list(model.input_names),
                    opset_version=config.opset,
                    dynamic_shapes=dynamic,
                    verbose=False,
                )
                if program is None:
                    raise ExportError("torch.onnx.export returned no program.")
                # Outputs are renamed afterwards: the dynamo exporter can give an internal
                # value the same name as a requested output, which makes the graph invalid.
                proto = rename_outputs(program.model_proto, model.output_names)
                proto = _name_batch_axis(proto, model)
            else:
                buffer = io.BytesIO()
                axes = axes_of | {n: {0: "batch"} for n in model.output_names}
                torch.onnx.export(
                    module,
                    args,
                    buffer,  # type: ignore[arg-type]
                    dynamo=False,
                    input_names=list(model.input_names),
                    output_names=list(model.output_names),
                    opset_version=config.opset,
                    dynamic_axes=axes if config.dynamic_batch else None,
                )
                proto = onnx.load_from_string(buffer.getvalue())
    except ExportError:
        raise
    except Exception as exc:
        detail = first_line(exc)
        raise ExportError(
            f"torch could not export the model to ONNX ({exporter} exporter): {detail}. "
            "Try the other exporter (export: {exporter: torchscript}) or check that "
            "forward() has no data-dependent Python control flow."
        ) from exc
    finally:
        for lg, level in zip(loggers, old_levels, strict=True):
            lg.setLevel(level)
    if model.hf_folder is not None:
        _record_attention_shape(proto, model.module)
    return OnnxModel(proto)


def _record_attention_shape(proto: onnx.ModelProto, module: torch.nn.Module) -> None:
    """Heads and attention width in the ONNX metadata, for the fuse step (ORT's optimizer
    cannot always read them from the graph). Read from the module, not its config:
    head pruning changes both."""
    from slimserve.techniques.prune.structured import attention_modules

    blocks = attention_modules(module)
    if not blocks:
        return
    first: Any = blocks[0]
    width = first.query.out_features
    for key, value in (("num_attention_heads", first.num_attention_heads), ("hidden_size", width)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"hf.{key}", str(value)


def check_parity(
    model: TorchModel,
    onnx_model: OnnxModel,
    samples: tuple[torch.Tensor, ...],
    config: ExportConfig,
    threads: int = 2,
) -> dict[str, dict[str, float]]:
    """Compare ORT with torch on the samples (and on a doubled batch when the batch is
    dynamic); raise ExportError naming the first output past tolerance."""
    from slimserve.core.metrics import fidelity
    from slimserve.runtime import OrtPredictor

    predictor = OrtPredictor(onnx_model, threads=threads)
    cases = [samples]
    if config.dynamic_batch:
        cases.append(tuple(torch.cat([s, s]) for s in samples))
    report: dict[str, dict[str, float]] = {}
    for case in cases:
        with torch.no_grad():
            expected = model.module(*case)
        expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        feeds = {n: t.numpy() for n, t in zip(model.input_names, case, strict=True)}
        try:
            got = predictor.predict(feeds)
        except Exception as exc:
            raise ExportError(
                f"ONNX Runtime cannot run the exported model on inputs of shape "
                f"{[tuple(t.shape) for t in case]}: {exc}"
            ) from exc
        for name, ref, out in zip(onnx_model.output_names, expected_list, got, strict=False):
            ref_np = ref.detach().numpy()
            if ref_np.shape != out.shape:
                raise ExportError(
                    f"Exported output '{name}' has shape {out.shape} but torch gives "
                    f"{ref_np.shape}. Check the dynamic axes of the export."
                )
            stats = fidelity(ref_np, out)
            report[name] = stats
            if stats["max_abs_error"] > config.atol or stats["cosine_min"] < config.min_cosine:
                raise ExportError(
                    f"Exported output '{name}' differs from torch: max abs error "
                    f"{stats['max_abs_error']:.3g} (allowed {config.atol:g}), cosine "
                    f"{stats['cosine_min']:.6f} (required {config.min_cosine:g}). forward() "
                    "may depend on Python state that export froze; fix it, or loosen "
                    "export.atol / export.min_cosine if the difference is expected."
                )
    return report


def _name_batch_axis(proto: onnx.ModelProto, model: TorchModel) -> onnx.ModelProto:
    """torch.export names dynamic dims 's0', 's77', ...; call the batch axis 'batch'."""
    symbols = set()
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in model.input_names and dims and dims[0].dim_param:
            symbols.add(dims[0].dim_param)
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = "batch"
    return proto


def rename_outputs(proto: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    """Give the graph outputs ``names``, moving any internal value that already has one
    of those names out of the way first."""
    graph = proto.graph
    if len(names) != len(graph.output):
        names = tuple(f"output_{i}" for i in range(len(graph.output)))
    current = [o.name for o in graph.output]
    taken = {n for node in graph.node for n in (*node.input, *node.output)}
    taken |= {i.name for i in graph.input} | {i.name for i in graph.initializer}
    mapping: dict[str, str] = {}
    for wanted, old in zip(names, current, strict=True):
        if wanted != old and wanted in taken:
            mapping[wanted] = f"{wanted}__internal"
    for wanted, old in zip(names, current, strict=True):
        if wanted != old:
            mapping[old] = wanted

    def rename(values: Any) -> None:
        for index, value in enumerate(values):
            if value in mapping:
                values[index] = mapping[value]

    for node in graph.node:
        rename(node.input)
        rename(node.output)
    for value in (*graph.output, *graph.value_info):
        if value.name in mapping:
            value.name = mapping[value.name]
    return proto
