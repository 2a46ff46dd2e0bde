import numpy as np
import torch

from slimserve.examples import digits


def test_split_is_fixed_and_disjoint() -> None:
    x_train, _ = digits.load_split("train")
    x_test, y_test = digits.load_split("test")
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == np.float32
    assert len(x_train) + len(x_test) == 1797
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    again, _ = digits.load_split("test")
    np.testing.assert_array_equal(x_test, again)
    assert set(np.unique(y_test)) == set(range(10))


def test_pretrained_reaches_97_percent(digits_torch) -> None:  # type: ignore[no-untyped-def]
    x, y = digits.load_split("test")
    with torch.no_grad():
        predicted = digits_torch.module(torch.from_numpy(x)).argmax(1).numpy()
    assert (predicted == y).mean() >= 0.97


def test_pretrained_is_cached_and_reused(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SLIMSERVE_CACHE", str(tmp_path))
    calls = []
    real_train = digits.train

    def counting_train(**kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return real_train(epochs=1, **kwargs)

    monkeypatch.setattr(digits, "train", counting_train)
    first = digits.pretrained()
    second = digits.pretrained()
    assert len(calls) == 1
    assert list(tmp_path.glob("*.safetensors"))
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_damaged_cache_is_retrained(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SLIMSERVE_CACHE", str(tmp_path))
    (tmp_path / f"{digits.CACHE_VERSION}-seed0.safetensors").write_bytes(b"not safetensors")
    monkeypatch.setattr(digits, "train", lambda **kw: digits.DigitsCNN().eval())
    model = digits.pretrained()
    assert isinstance(model, digits.DigitsCNN)
