from pathlib import Path

import numpy as np
import pytest

import slimserve as ss
from slimserve.core.specs import DataSpec


def test_example_split_and_samples() -> None:
    data = ss.load_data(DataSpec(example="digits", split="train", samples=100))
    assert len(data) == 100 and data.labels is not None


def test_unknown_split_and_too_many_samples() -> None:
    with pytest.raises(ss.DataError, match="splits 'train' and 'test', not 'val'"):
        ss.load_data(DataSpec(example="digits", split="val"))
    with pytest.raises(ss.DataError, match="asks for 5000 samples but the source has only"):
        ss.load_data(DataSpec(example="digits", split="test", samples=5000))


def test_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input=np.zeros((6, 3), "f4"), labels=np.arange(6))
    data = ss.load_data(DataSpec(npz=path))
    assert list(data.inputs) == ["input"] and data.labels is not None and len(data) == 6


def test_npz_errors(tmp_path: Path) -> None:
    with pytest.raises(ss.DataError, match="does not exist"):
        ss.load_data(DataSpec(npz=tmp_path / "missing.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_text("nope")
    with pytest.raises(ss.DataError, match="not a readable .npz"):
        ss.load_data(DataSpec(npz=bad))
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, input=np.zeros((6, 3)), labels=np.arange(4))
    with pytest.raises(ss.DataError, match="disagree on the number of samples"):
        ss.load_data(DataSpec(npz=uneven))
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((6, 3)))
    with pytest.raises(ss.DataError, match=r"no array\(s\) \['pixels'\]"):
        ss.load_data(DataSpec(npz=path, inputs=["pixels"]))


def test_python_source() -> None:
    data = ss.load_data(DataSpec(python="slimserve.examples.digits:load_split", split="test"))
    assert data.labels is not None and len(data) == 450
    with pytest.raises(ss.DataError, match="Cannot import module"):
        ss.load_data(DataSpec(python="nowhere.mod:fn"))


def test_padded_width_counts_only_trailing_padding() -> None:
    from slimserve.data import padded_width

    assert padded_width(np.array([[1, 1, 0, 0], [1, 0, 0, 0]])) == 2
    assert padded_width(np.array([[0, 0, 1, 1], [0, 1, 1, 1]])) == 4  # left padding kept
    assert padded_width(np.zeros((2, 3))) == 1


def test_load_data_takes_the_command_line_text_and_the_recipe_dict() -> None:
    from_text = ss.load_data("example:digits:train")
    from_dict = ss.load_data({"example": "digits", "split": "train"})
    spec = ss.load_data(DataSpec(example="digits", split="train"))
    assert len(from_text) == len(from_dict) == len(spec) > 1000
    np.testing.assert_array_equal(from_text.inputs["input"], spec.inputs["input"])
    with pytest.raises(ss.DataError, match="Cannot read data spec 'digits'.*example:digits"):
        ss.load_data("digits")
    with pytest.raises(ss.DataError, match="Not a valid data spec.*exampel"):
        ss.load_data({"exampel": "digits"})
    with pytest.raises(ss.DataError, match="not int"):
        ss.load_data(3)  # type: ignore[arg-type]
