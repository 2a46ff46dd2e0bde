"""Loaders for PyTorch models: factories, TorchScript, torch.export, and refusals."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import slimserve as ss
from slimserve.examples.digits import DigitsCNN


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "userpkg_models.py").write_text(
        textwrap.dedent(
            """
            import torch
            from slimserve.examples.digits import DigitsCNN

            def build():
                torch.manual_seed(123)
                return DigitsCNN(), torch.zeros(2, 1, 8, 8)

            def not_a_model():
                return 42

            VALUE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userpkg_models"
    sys.modules.pop("userpkg_models", None)


def test_factory_with_safetensors_weights(
    tmp_path: Path, factory_module: str, digits_torch
) -> None:  # type: ignore[no-untyped-def]
    weights = tmp_path / "w.safetensors"
    save_file(digits_torch.module.state_dict(), str(weights))
    model = ss.load_model(f"{factory_module}:build", weights=weights)
    assert isinstance(model, ss.TorchModel)
    assert model.input_names == ("input",)
    assert model.example_inputs is not None and model.example_inputs[0].shape == (2, 1, 8, 8)
    for name, value in digits_torch.module.state_dict().items():
        torch.testing.assert_close(model.module.state_dict()[name], value)


def test_factory_errors_name_the_problem(factory_module: str) -> None:
    with pytest.raises(ss.ModelLoadError, match="Cannot import module 'no_such_pkg.mod'"):
        ss.load_model("no_such_pkg.mod:build")
    with pytest.raises(ss.ModelLoadError, match="has no attribute 'missing'"):
        ss.load_model(f"{factory_module}:missing")
    with pytest.raises(ss.ModelLoadError, match="returned int"):
        ss.load_model(f"{factory_module}:not_a_model")
    with pytest.raises(ss.ModelLoadError, match="not a function"):
        ss.load_model(f"{factory_module}:VALUE")


def test_weights_that_do_not_fit(tmp_path: Path, factory_module: str) -> None:
    weights = tmp_path / "other.safetensors"
    save_file(DigitsCNN(width=8).state_dict(), str(weights))
    with pytest.raises(ss.ModelLoadError, match="do not fit the model"):
        ss.load_model(f"{factory_module}:build", weights=weights)


def test_torchscript_file(tmp_path: Path, digits_torch, digits_test) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(digits_torch.module), str(path))
    model = ss.load_model(path)
    x = torch.from_numpy(digits_test.inputs["input"][:8])
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), digits_torch.module(x))


def test_pickled_module_is_refused(tmp_path: Path, digits_torch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "pickled.pt"
    torch.save(digits_torch.module, str(path))  # a full pickle: could run any code on load
    with pytest.raises(ss.ModelLoadError, match="contains pickled Python objects"):
        ss.load_model(path)


def test_state_dict_given_as_model_says_how_to_use_it(tmp_path: Path, digits_torch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "weights.pt"
    torch.save(digits_torch.module.state_dict(), str(path))
    with pytest.raises(ss.ModelLoadError, match="is a state dict, not a model"):
        ss.load_model(path)


def test_pickled_weights_for_factory_are_refused(
    tmp_path: Path, factory_module: str, digits_torch
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "weights.pt"
    torch.save({"model": digits_torch.module}, str(path))
    with pytest.raises(ss.ModelLoadError, match="contains pickled Python objects"):
        ss.load_model(f"{factory_module}:build", weights=path)


def test_torch_export_program(tmp_path: Path, digits_torch, digits_test) -> None:  # type: ignore[no-untyped-def]
    x = torch.from_numpy(digits_test.inputs["input"][:4])
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(digits_torch.module, (x,)), str(path))
    model = ss.load_model(path)
    assert model.example_inputs is not None and model.example_inputs[0].shape == x.shape
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), digits_torch.module(x))


def test_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"garbage")
    with pytest.raises(ss.ModelLoadError, match="not a readable torch.export program"):
        ss.load_model(bad)
    with pytest.raises(ss.ModelLoadError, match="does not exist"):
        ss.load_model(tmp_path / "missing.onnx")
    odd = tmp_path / "model.tflite"
    odd.write_bytes(b"x")
    with pytest.raises(ss.ModelLoadError, match="Don't know how to load"):
        ss.load_model(odd)
    with pytest.raises(ss.ModelLoadError, match="Unknown example model 'cifar'"):
        ss.load_model("example:cifar")


def test_a_factory_in_the_current_folder_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_local_models.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Linear(4, 2), (torch.zeros(1, 4),)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    model = ss.load_model("my_local_models:build")
    assert model.format == "torch"
    with pytest.raises(ss.ModelLoadError, match="current folder"):
        ss.load_model("no_such_module_here:build")
