"""Schedules against TF-MOT's formula, frequency and begin/end edges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slimserve import ConstantSparsity, PolynomialDecay


def tfmot_polynomial(
    initial: float, final: float, begin: int, end: int, power: float, t: int
) -> float:
    p = min(1.0, max(0.0, (t - begin) / (end - begin)))
    return final + (initial - final) * (1 - p) ** power


def test_polynomial_decay_values_and_update_steps() -> None:
    schedule = PolynomialDecay(
        initial_sparsity=0.2, final_sparsity=0.8, begin_step=100, end_step=600, frequency=50
    )
    assert schedule(99) == (False, pytest.approx(0.2))
    assert schedule(100) == (True, pytest.approx(0.2))
    assert schedule(125) == (False, pytest.approx(tfmot_polynomial(0.2, 0.8, 100, 600, 3, 125)))
    assert schedule(350)[0] is True
    assert schedule(350)[1] == pytest.approx(0.8 + (0.2 - 0.8) * 0.5**3)
    assert schedule(600) == (True, pytest.approx(0.8))
    assert schedule(650) == (False, pytest.approx(0.8))  # unchanged after end


def test_constant_sparsity_forever_and_bounded() -> None:
    forever = ConstantSparsity(target_sparsity=0.5, begin_step=10, frequency=5)
    assert forever(5) == (False, 0.5)
    assert forever(10) == (True, 0.5)
    assert forever(10_005) == (True, 0.5)
    assert forever(10_006)[0] is False
    bounded = ConstantSparsity(target_sparsity=0.5, begin_step=0, end_step=20, frequency=10)
    assert [s for s in range(40) if bounded(s)[0]] == [0, 10, 20]


@given(
    initial=st.floats(0, 0.99),
    final=st.floats(0, 0.99),
    begin=st.integers(0, 1000),
    length=st.integers(1, 5000),
    power=st.sampled_from([1, 2, 3, 4]),
    frequency=st.integers(1, 500),
    step=st.integers(0, 8000),
)
def test_polynomial_matches_formula_everywhere(
    initial: float, final: float, begin: int, length: int, power: int, frequency: int, step: int
) -> None:
    end = begin + length
    schedule = PolynomialDecay(
        initial_sparsity=initial,
        final_sparsity=final,
        begin_step=begin,
        end_step=end,
        power=power,
        frequency=frequency,
    )
    update, sparsity = schedule(step)
    assert sparsity == pytest.approx(tfmot_polynomial(initial, final, begin, end, power, step))
    assert update == (begin <= step <= end and (step - begin) % frequency == 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_sparsity": 1.0, "end_step": 10}, "final_sparsity must be in \\[0, 1\\)"),
        ({"final_sparsity": 0.5, "initial_sparsity": -0.1, "end_step": 10}, "initial_sparsity"),
        ({"final_sparsity": 0.5, "begin_step": 10, "end_step": 10}, "must be after begin_step"),
        ({"final_sparsity": 0.5, "begin_step": 10, "end_step": 5}, "must be after begin_step"),
        ({"final_sparsity": 0.5, "end_step": -1}, "end_step cannot be -1"),
        ({"final_sparsity": 0.5, "begin_step": -1, "end_step": 5}, "begin_step must be >= 0"),
        ({"final_sparsity": 0.5, "end_step": 5, "frequency": 0}, "frequency must be > 0"),
    ],
)
def test_polynomial_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PolynomialDecay(**kwargs)


def test_constant_bad_arguments() -> None:
    with pytest.raises(ValueError, match="target_sparsity must be in"):
        ConstantSparsity(target_sparsity=1.5)
    with pytest.raises(ValueError, match="end_step must be -1 or >= 0"):
        ConstantSparsity(target_sparsity=0.5, end_step=-5)


def test_schedules_take_tf_mots_positional_arguments() -> None:
    # tfmot code writes ConstantSparsity(0.5, 0) and PolynomialDecay(0.0, 0.8, 0, 1000).
    assert ConstantSparsity(0.5, 0) == ConstantSparsity(target_sparsity=0.5, begin_step=0)
    assert PolynomialDecay(0.0, 0.8, 0, 1000) == PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=1000
    )
    with pytest.raises(TypeError, match="both by position and by keyword"):
        ConstantSparsity(0.5, target_sparsity=0.4)
    with pytest.raises(TypeError, match="at most 4 arguments"):
        ConstantSparsity(0.5, 0, -1, 100, 7)
