"""The one CPU-feature probe: which instruction sets that decide int8 and bf16 speed the
machine has. Preflight, the torch program's dtype, the manifest and the load-time
warnings all read it, so they never disagree.

``SLIMSERVE_CPU_FEATURES`` (comma-separated flags, e.g. ``avx2``) replaces what
/proc/cpuinfo says: to see what an artifact would do on another CPU kind, and in tests.
"""

from __future__ import annotations

import os
from pathlib import Path

FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI (int8 dot products)",
    "avx_vnni": "AVX-VNNI (int8 dot products)",
    "avx512_bf16": "AVX512-BF16",
    "amx_tile": "AMX tiles",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}
OVERRIDE_ENV = "SLIMSERVE_CPU_FEATURES"
# What each precision needs to run at full speed (any one of them).
FAST_KERNELS = {
    "bfloat16": ("avx512_bf16", "amx_bf16"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
}
_COST = {
    "bfloat16": "PyTorch emulates bf16 without it, several times slower than float32",
    "int8": "ONNX Runtime falls back to AVX2 int8 kernels (saturating int16 pairs): slower, "
    "and per-tensor int8 loses more accuracy",
}


def cpu_features() -> frozenset[str]:
    """The flags of ``FEATURES`` this CPU has (or ``SLIMSERVE_CPU_FEATURES`` says)."""
    override = os.environ.get(OVERRIDE_ENV)
    if override is not None:
        return frozenset(f.strip() for f in override.split(",") if f.strip() in FEATURES)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(f for f in line.split(":", 1)[1].split() if f in FEATURES)
    return frozenset()


def has_fast(precision: str, features: frozenset[str] | None = None) -> bool:
    """True when ``precision`` has its fast kernels here (or needs none)."""
    needed = FAST_KERNELS.get(precision)
    if needed is None:
        return True
    return any(f in (cpu_features() if features is None else features) for f in needed)


def missing_feature_warning(precision: str | None, recorded: list[str]) -> str | None:
    """A warning when an artifact chosen as ``precision`` on a CPU with ``recorded``
    features is loaded on one that lacks what made that precision fast; else None."""
    if precision is None or precision not in FAST_KERNELS:
        return None
    here = cpu_features()
    if has_fast(precision, here):
        return None
    needed = FAST_KERNELS[precision]
    had = [f for f in needed if f in recorded]
    if precision == "int8" and not had:
        return None  # it was chosen without them too: nothing changed
    names = " or ".join(FEATURES[f] for f in needed)
    where = f" (it was verified and timed on a CPU with {', '.join(had)})" if had else ""
    return (
        f"This artifact serves {precision}{where}, but this CPU has no {names}: "
        f"{_COST[precision]}. Re-run 'slimserve optimize' on this machine to pick what is "
        "fastest here, or 'slimserve check' to re-measure."
    )
