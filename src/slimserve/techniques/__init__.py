"""Techniques: each a frozen config (pydantic, ``extra="forbid"``, ``frozen=True``) whose
fields are its only knobs and which satisfies ``Technique``. No base class: the protocol
is the contract, and a test checks every registered step against it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from slimserve.core.context import Context


@runtime_checkable
class Technique(Protocol):
    """What the recipe, the pipeline and the report ask of a step."""

    name: ClassVar[str]
    """Its recipe key."""
    accepts: ClassVar[tuple[str, ...]]
    """The model formats it takes: ``torch``, ``onnx``."""
    produces: ClassVar[str]
    """The format it returns."""
    trains: ClassVar[bool]
    """Whether it runs PyTorch's training loop (which a Keras model cannot take)."""

    def describe(self) -> str:
        """A short label for tables and reports: 'prune unstructured 80%'."""
        ...

    def apply(self, model: Any, ctx: Context) -> Any:
        """The model after the technique."""
        ...

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]:
        """Its fields as data (pydantic's): what the manifest records of the step."""
        ...
