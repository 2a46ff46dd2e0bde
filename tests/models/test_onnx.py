from pathlib import Path

import pytest

import slimserve as ss
from slimserve.models.onnx import describe_io


def test_load_onnx_file(onnx_file: Path) -> None:
    model = ss.load_model(onnx_file)
    assert isinstance(model, ss.OnnxModel)
    io = describe_io(model.proto)
    assert io["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert io["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 10]}]


def test_truncated_onnx_file_is_refused(tmp_path: Path, onnx_file: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(onnx_file.read_bytes()[:1000])
    with pytest.raises(ss.ModelLoadError, match="not a valid ONNX model.*export it again"):
        ss.load_model(broken)


def test_text_file_named_onnx_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.onnx"
    fake.write_text("this is not a model")
    with pytest.raises(ss.ModelLoadError, match="not a valid ONNX model"):
        ss.load_model(fake)


def test_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ss.ModelLoadError, match="neither manifest.json.*nor config.json"):
        ss.load_model(tmp_path)


def test_save_writes_a_model_that_loads_and_keeps_the_old_file_on_failure(
    digits_onnx: ss.OnnxModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quantized = ss.quantize(digits_onnx, ss.DynamicQuantizeConfig())
    target = quantized.save(tmp_path / "out" / "model.onnx")
    assert ss.load_model(target).to_bytes() == quantized.to_bytes()

    def broken() -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(digits_onnx, "to_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        digits_onnx.save(target)
    assert ss.load_model(target).to_bytes() == quantized.to_bytes()  # the earlier file is intact
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]  # no temp file left
