"""``"package.module:function"`` references, the only way a recipe names code."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from slimserve.core.errors import ModelLoadError


def resolve_callable(spec: str) -> Any:
    """Import ``"package.module:function"`` (never ``eval``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(
            f"'{spec}' is not a 'package.module:function' reference. "
            "Write it as e.g. 'mypkg.models:build'."
        )
    _see_current_folder()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"Cannot import module '{module_name}' named in '{spec}': {exc}. "
            "Check the name and that it is importable: installed, on PYTHONPATH, or a "
            f"module in the current folder ({os.getcwd()})."
        ) from exc
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(
                f"Module '{module_name}' has no attribute '{attr}' (from '{spec}'). "
                "Check the function name after the colon."
            )
        target = getattr(target, part)
    if not callable(target):
        raise ModelLoadError(f"'{spec}' names {type(target).__name__}, not a function.")
    return target


def _see_current_folder() -> None:
    """Modules in the current folder are importable, as under ``python -m``; the folder
    goes last, so it never shadows an installed package."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
