"""Errors a user can cause. Every message says what happened and what to do."""

from __future__ import annotations


class SlimserveError(Exception):
    """Base of every error slimserve raises on purpose; the CLI prints it in one line."""


class RecipeError(SlimserveError):
    """A recipe is malformed: unknown key, wrong type, impossible step order."""


class ModelLoadError(SlimserveError):
    """A model file or factory could not be loaded safely."""


class ExportError(SlimserveError):
    """Export to ONNX failed, or the exported model disagrees with the original."""


class ArtifactError(SlimserveError):
    """An artifact folder is missing, tampered with, or of an unknown schema version."""


class DataError(SlimserveError):
    """A data spec cannot be turned into batches that fit the model."""


class MissingExtraError(SlimserveError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the optional package '{package}', which is not installed. "
            f"Install it with: pip install 'slimserve[{extra}]'"
        )
        self.package = package
        self.extra = extra


class CpuFeatureWarning(UserWarning):
    """An artifact was chosen on a CPU with a feature this one lacks (bf16, VNNI)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require(module: str, extra: str, feature: str) -> object:
    """Import an optional module, or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra, feature) from exc
