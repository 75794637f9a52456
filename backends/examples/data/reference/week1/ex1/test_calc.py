"""Tests for week 1, exercise 1: the student writes `calc.py` with `add`, `mul` and `mean`."""

from calc import add, mean, mul


def test_add():
    assert add(2, 3) == 5, "add(2, 3) should be 5"


def test_mul():
    assert mul(4, 5) == 20, "mul(4, 5) should be 20"


def test_mean():
    assert mean([1, 2, 3, 4]) == 2.5, "mean([1, 2, 3, 4]) should be 2.5"
