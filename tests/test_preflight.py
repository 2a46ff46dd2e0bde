"""preflight: machine facts, a measured table, and warnings backed by the numbers."""

from __future__ import annotations

from typer.testing import CliRunner

from slimserve.cli import app
from slimserve.preflight import cpu_features, preflight, ranking


def test_cpu_features_are_read() -> None:
    features = cpu_features()
    assert set(features) >= {"avx2", "avx512_vnni", "amx_int8"}
    assert all(isinstance(v, bool) for v in features.values())


def test_preflight_measures_every_candidate(digits_torch, digits_test) -> None:  # type: ignore[no-untyped-def]
    result = preflight(digits_torch, digits_test.take(128), repeats=5)
    names = {p.name for p in result.probes}
    assert {
        "fp32 (ORT)",
        "dynamic int8",
        "static int8, per-channel",
        "unstructured 50% (ORT fp32)",
    } <= names
    for probe in result.probes:
        assert probe.size_bytes > 0 and probe.b32_items_per_s > 0 and 0 < probe.cosine <= 1.0001
    assert sorted(ranking(result)) == sorted(names)
    sparse = next(p for p in result.probes if p.name.startswith("unstructured"))
    fp32 = next(p for p in result.probes if p.name == "fp32 (ORT)")
    assert sparse.size_bytes == fp32.size_bytes  # zeros don't shrink the raw file
    assert any("Unstructured sparsity does not speed up" in w for w in result.warnings)


def test_preflight_command(onnx_file) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        app, ["preflight", str(onnx_file), "--repeats", "3"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "This machine" in result.output and "b32 speed-up" in result.output
    assert "static int8, per-channel" in result.output
