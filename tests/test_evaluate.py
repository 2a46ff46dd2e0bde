import numpy as np
import pytest

from slimserve.evaluate import cosine, fidelity


def test_cosine_on_known_vectors() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine(a, b), [0.0, 1.0, 1.0, 0.0])


def test_fidelity_on_known_outputs() -> None:
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    cand = np.array([[3.0, 1.5, 0.0], [0.0, 1.0, 2.0]])
    stats = fidelity(ref, cand)
    assert stats["top1_agreement"] == 0.5
    assert stats["max_abs_error"] == pytest.approx(1.0)
    assert stats["cosine_min"] == pytest.approx(4 / 5)
