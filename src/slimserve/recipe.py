"""Recipes: YAML -> frozen pydantic models, with errors that name the key path and the fix.

``STEPS`` is the one registry of techniques: recipe key -> config class, or a tagged union
of config classes (quantize: one per mode) that a discriminator picks among.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, field_serializer

from slimserve.core.errors import RecipeError
from slimserve.core.specs import DataSpec, Frozen, ModelSpec
from slimserve.techniques.distill_llm import DistillConfig
from slimserve.techniques.edge import ExportStepConfig
from slimserve.techniques.export import ExportConfig
from slimserve.techniques.fuse import FuseConfig
from slimserve.techniques.prune.llm import PruneStepConfig
from slimserve.techniques.quantize.configs import QuantizeConfig
from slimserve.techniques.quantize.qat import QATConfig
from slimserve.techniques.torch_program import RuntimeChoice
from slimserve.techniques.unpad import UnpadConfig

TAG_KEYS = {"export": "format", "prune": "granularity", "quantize": "mode"}
"""The key that picks a step's config among its variants."""

STEPS: dict[str, Any] = {
    "prune": PruneStepConfig,
    "distill": DistillConfig,
    "qat": QATConfig,
    "unpad": UnpadConfig,
    "export": ExportStepConfig,
    "fuse": FuseConfig,
    "quantize": QuantizeConfig,
}
"""Recipe key -> technique config. Adding a technique = one module + one entry here."""


def step_variants(config_type: Any) -> dict[str, type[BaseModel]]:
    """A step's config classes by tag: ``{"": cls}`` for a plain class, each tagged member
    for an ``Annotated[A | B, Discriminator(...)]`` union."""
    if isinstance(config_type, type):
        return {"": config_type}
    union = typing.get_args(config_type)[0]
    variants = {}
    for member in typing.get_args(union):
        cls, *marks = typing.get_args(member)
        variants[next(m.tag for m in marks if isinstance(m, Tag))] = cls
    return variants


def _tag(config_type: Any, body: Any) -> str:
    if isinstance(config_type, type):
        return ""
    marks = typing.get_args(config_type)[1:]
    pick: Any = next(m.discriminator for m in marks if isinstance(m, Discriminator))
    return str(pick(body))


def validate_step(key: str, body: dict[str, Any]) -> Any:
    """One step's config from its recipe body (``{"mode": "static"}`` for ``quantize``)."""
    cls = step_class(key, body)
    if cls is None:
        raise RecipeError(f"{key}: unknown mode {body.get('mode')!r}")
    return cls.model_validate(body)


def step_class(key: str, body: Any) -> type[BaseModel] | None:
    """The config class a step's body validates against (None: an unknown tag)."""
    config_type = STEPS[key]
    return step_variants(config_type).get(_tag(config_type, body))


ORDER_ADVICE = (
    "The right order is prune -> fine-tune -> quantize: pruning and fine-tuning in float "
    "let training recover what pruning costs, and quantization then calibrates the final "
    "weights. Move this step before the quantization/export step."
)


def plan_steps(steps: tuple[Any, ...], source_format: str) -> tuple[Any, ...]:
    """Check each step accepts what the previous produces; insert ``export`` where needed."""
    if source_format == "keras":
        for index, step in enumerate(steps):
            if step.trains:
                raise RecipeError(
                    f"steps[{index}] '{step.name}' trains the model with PyTorch's training "
                    "loop, which a Keras model in a recipe cannot take. Prune a Keras model "
                    "in Python with slimserve.keras (prune_low_magnitude, model.fit with "
                    "UpdatePruningStep, strip_pruning; see docs/keras.md), save it with "
                    "model.save('model.keras') and give that file here: the recipe then "
                    "exports, quantizes and measures it."
                )
        source_format = "torch"
    fmt = source_format
    planned: list[Any] = []
    for index, step in enumerate(steps):
        if fmt == "causal_lm" and fmt not in step.accepts:
            raise RecipeError(
                f"steps[{index}] '{step.describe()}' does not take a decoder LM: prune it "
                "with granularity depth or width, distill it, and quantize it with mode llm "
                "(weight-only int4/int8 for generation, docs/llm.md), e.g. {quantize: "
                "{mode: llm, weights: int4, group_size: 32}}."
            )
        if fmt not in step.accepts:
            if fmt == "torch" and "onnx" in step.accepts:
                planned.append(ExportConfig())
                fmt = "onnx"
            else:
                turned = next((s.name for s in reversed(planned) if s.produces == fmt), None)
                because = (
                    f"step '{turned}' before it already made an ONNX model"
                    if turned
                    else "the source model is ONNX"
                )
                raise RecipeError(
                    f"steps[{index}] '{step.name}' needs a {'/'.join(step.accepts)} model, "
                    f"but {because}. {ORDER_ADVICE if turned else ''}".rstrip()
                )
        planned.append(step)
        fmt = step.produces
    if fmt == "torch":
        planned.append(ExportConfig())
    if fmt == "causal_lm":  # no quantize step: built for generation in float32
        from slimserve.techniques.quantize.llm import LlmQuantizeConfig

        planned.append(LlmQuantizeConfig(weights="fp32"))
    return tuple(planned)


RECIPE_SCHEMA_VERSION = 1


class DataConfig(Frozen):
    """The data splits a recipe uses; each is optional."""

    train: DataSpec | None = Field(None, description="Training data (fine-tuning, QAT).")
    calibration: DataSpec | None = Field(None, description="Calibration data (static quant).")
    eval: DataSpec | None = Field(None, description="Evaluation data for every stage.")


class Goal(Frozen):
    """The quality bound the final model is checked against."""

    metric: Literal[
        "accuracy",
        "cosine_mean",
        "top1_agreement",
        "kl_divergence",
        "perplexity",
        "greedy_agreement",
    ] = Field(
        "accuracy",
        description="Quality metric the goal bounds (kl_divergence, perplexity and "
        "greedy_agreement: decoder LMs, against the float model on the eval text; "
        "kl_divergence and perplexity: lower is better).",
    )
    max_drop: float = Field(
        0.01,
        ge=0,
        description="Largest allowed drop vs baseline (for kl_divergence and perplexity: the "
        "largest allowed rise, e.g. 0.02 of KL).",
    )


class BenchConfig(Frozen):
    """How every stage is timed (interleaved, medians)."""

    batch_sizes: tuple[int, ...] = Field((1, 32), description="Batch sizes to time.")
    threads: int = Field(2, ge=1, description="Intra-op threads for every runtime.")
    warmup: int = Field(10, ge=0, description="Untimed runs before timing.")
    repeats: int = Field(50, ge=3, description="Timed runs per model and batch size.")


class Recipe(Frozen):
    """A declared pipeline: model, data, steps in order, goal and bench settings."""

    schema_version: Literal[1] = Field(1, description="Recipe format version.")
    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Artifact folder name."
    )
    model: ModelSpec = Field(..., description="The model to optimize.")
    data: DataConfig = Field(
        default_factory=DataConfig, description="Data splits: train, calibration, eval."
    )
    steps: tuple[Any, ...] = Field((), description="Technique steps, run in order.")
    alternatives: tuple[tuple[Any, ...], ...] = Field(
        (),
        description="Step lists, each tried after steps (e.g. ORT per-token int8, NNCF "
        "int8): every one is run, scored and timed with the others in one run on this "
        "machine, and the fastest within the goal (in any of the runtimes) serves.",
    )
    goal: Goal = Field(default_factory=Goal, description="The quality the result must keep.")
    bench: BenchConfig = Field(default_factory=BenchConfig, description="How every stage is timed.")
    runtimes: RuntimeChoice = Field(
        default_factory=RuntimeChoice,
        description="Serve the ONNX model (ONNX Runtime or OpenVINO) or a torch program: the "
        "fastest within the goal, measured in the run.",
    )
    seed: int = Field(0, description="Seed for every random choice.")

    @field_serializer("steps")
    def _dump_steps(self, steps: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [{s.name: s.model_dump(mode="json")} for s in steps]

    @field_serializer("alternatives")
    def _dump_alternatives(self, chains: tuple[tuple[Any, ...], ...]) -> list[Any]:
        return [[{s.name: s.model_dump(mode="json")} for s in chain] for chain in chains]

    def resolved(self) -> dict[str, Any]:
        """Every default filled in: what the manifest stores and ``optimize`` re-runs."""
        return self.model_dump(mode="json")


def load_recipe(path: str | Path) -> Recipe:
    """Read a YAML recipe; errors name the file, the key path and the fix."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file '{path}' does not exist.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path}{where}: not valid YAML ({problem}).") from exc
    return parse_recipe(raw, base=path.parent.resolve(), source=str(path))


def parse_recipe(raw: Any, base: Path | None = None, source: str = "recipe") -> Recipe:
    """Validate a recipe given as data (a dict, e.g. a manifest's resolved recipe)."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of keys, got {type(raw).__name__}.")
    context = {"base": base} if base else None
    problems: list[str] = []
    steps = []
    raw_steps = raw.get("steps") or []
    if not isinstance(raw_steps, list):
        problems.append("steps: a list of steps, e.g. [{quantize: {mode: dynamic}}]")
        raw_steps = []
    for index, item in enumerate(raw_steps):
        step, errors = _parse_step(f"steps[{index}]", item, context)
        problems.extend(errors)
        if step is not None:
            steps.append(step)
    alternatives = []
    raw_alternatives = raw.get("alternatives") or []
    if not isinstance(raw_alternatives, list) or not all(
        isinstance(a, list) for a in raw_alternatives
    ):
        problems.append(
            "alternatives: a list of step lists, e.g. [[{quantize: {mode: dynamic}}], "
            "[{quantize: {mode: nncf}}]]"
        )
        raw_alternatives = []
    for number, chain in enumerate(raw_alternatives):
        parsed = []
        for index, item in enumerate(chain):
            step, errors = _parse_step(f"alternatives[{number}][{index}]", item, context)
            problems.extend(errors)
            parsed.append(step)
        alternatives.append(tuple(parsed))
    recipe = None
    try:
        recipe = Recipe.model_validate({**raw, "steps": (), "alternatives": ()}, context=context)
    except ValidationError as exc:
        problems.extend(_format(exc, Recipe, ()))
    if problems:
        listing = "\n  ".join(problems)
        raise RecipeError(f"{source} has {len(problems)} problem(s):\n  {listing}")
    assert recipe is not None
    if recipe.runtimes.candidates == ("torch",) and recipe.model.format == "onnx":
        raise RecipeError(
            f"{source}: runtimes.candidates is [torch], but the model is ONNX, so there is no "
            "PyTorch model to make a torch program of. Use candidates: [onnx], or give the "
            "PyTorch model."
        )
    recipe = recipe.model_copy(update={"steps": tuple(steps), "alternatives": tuple(alternatives)})
    plan_chains(recipe)
    return recipe


def plan_chains(recipe: Recipe) -> tuple[tuple[Any, ...], ...]:
    """Each full step list the recipe runs, planned: ``steps`` followed by each of the
    ``alternatives`` (``steps`` alone when there are none)."""
    chains = []
    for number, chain in enumerate(recipe.alternatives or ((),)):
        try:
            chains.append(plan_steps(recipe.steps + chain, recipe.model.format))
        except RecipeError as exc:
            if not recipe.alternatives:
                raise
            raise RecipeError(f"alternatives[{number}] (after steps): {exc}") from None
    return tuple(chains)


def shared_length(chains: tuple[tuple[Any, ...], ...]) -> int:
    """How many leading steps every chain has in common (run once, not per chain)."""
    length = 0
    for steps in zip(*chains, strict=False):
        if any(step != steps[0] for step in steps[1:]):
            break
        length += 1
    return length


def _parse_step(
    where: str, item: Any, context: dict[str, Any] | None
) -> tuple[BaseModel | None, list[str]]:
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, dict) or len(item) != 1:
        return None, [f"{where}: a step is one key naming the technique, e.g. {{quantize: {{}}}}"]
    ((key, body),) = item.items()
    if key not in STEPS:
        return None, [f"{where}: unknown step '{key}'{_suggest(str(key), list(STEPS))}"]
    body = body or {}
    cls = step_class(key, body)
    if cls is None:
        *first, last = (repr(t) for t in step_variants(STEPS[key]))
        return None, [
            f"{where}.{key}.mode: Input should be {', '.join(first)} or {last} "
            f"(got {body.get('mode')!r})"
        ]
    try:
        return cls.model_validate(body, context=context), []
    except ValidationError as exc:
        return None, _format(exc, cls, (where, key))


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    return f"{hint} Valid: {', '.join(sorted(valid))}"


def _path(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).startswith(("steps[", "alternatives[")):
            text += str(part)
        else:
            text += f".{part}" if text else str(part)
    return text


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the key at ``loc`` (to list its valid keys)."""
    current: Any = cls
    for part in loc:
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _model_in(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation


def _format(exc: ValidationError, cls: type[BaseModel], prefix: tuple[Any, ...]) -> list[str]:
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = _path(prefix + loc)
        if error["type"] == "extra_forbidden":
            parent = _model_at(cls, loc[:-1])
            valid = list(parent.model_fields) if parent else []
            key = str(loc[-1])
            lines.append(f"{where}: unknown key '{key}'{_suggest(key, valid)}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        elif "input" in error and error["type"] not in ("value_error", "assertion_error"):
            lines.append(f"{where}: {message} (got {error['input']!r})")
        else:
            lines.append(f"{where or 'recipe'}: {message}")
    return lines
