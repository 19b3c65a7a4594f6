"""tf_lottery.masking.distributions: uniform, ER and ERK by hand (pure numpy).

The 3-layer model used throughout (the tiny model of conftest):

    conv  (3, 3, 1, 4)  36 params   ERK raw = (3+3+1+4)/36  = 11/36
                                    ER  raw = (1+4)/(1*4)   = 5/4
    d1    (144, 32)   4608 params   raw     = (144+32)/4608 = 11/288
    d2    (32, 10)     320 params   raw     = (32+10)/320   = 21/160
                      4964 params in all

The density of a layer is eps * raw, with eps solved so that the non-zeros total
(1 - S) * N over the unpinned layers. Since raw * params = sum(shape) for ERK, the
denominator of eps is the sum of the shapes' sums: 11 + 176 + 42 = 229.
"""
from fractions import Fraction as F

import numpy as np
import pytest

from tf_lottery.masking import distributions
from tf_lottery.masking.distributions import check_sparsity, distribute, parameter_weighted
from tf_lottery.masking.selection import count_zeros

SHAPES = {"conv": (3, 3, 1, 4), "d1": (144, 32), "d2": (32, 10)}
PARAMS = {"conv": 36, "d1": 4608, "d2": 320}


def _close(got, expected):
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), abs=1e-12), key


def test_erk_no_layer_saturates_at_90_percent():
    # budget = 0.1 * 4964 = 496.4; eps = 496.4 / 229 = 2482/1145 = 2.16769
    # densities: conv 2.16769 * 11/36 = 0.66235 (<= 1, so no layer is forced dense),
    #            d1   2.16769 * 11/288 = 0.082793, d2 2.16769 * 21/160 = 0.284509
    eps = F(2482, 1145)
    got = distribute(SHAPES, 0.9, "erk")
    _close(got, {"conv": 1 - eps * F(11, 36), "d1": 1 - eps * F(11, 288),
                 "d2": 1 - eps * F(21, 160)})
    assert got["conv"] == pytest.approx(0.3376516254245512, abs=1e-12)
    assert got["d1"] == pytest.approx(0.9172064531780689, abs=1e-12)
    assert got["d2"] == pytest.approx(0.7154912663755458, abs=1e-12)
    # exact zero counts: round(12.155) = 12, round(4226.49) = 4226, round(228.96) = 229;
    # 4467 in all vs 0.9 * 4964 = 4467.6
    zeros = [count_zeros(PARAMS[k], got[k]) for k in SHAPES]
    assert zeros == [12, 4226, 229]
    assert abs(sum(zeros) - 0.9 * 4964) <= len(SHAPES)


def test_erk_one_layer_forced_dense_and_eps_resolved():
    # S = 0.8: budget = 0.2 * 4964 = 992.8; eps = 992.8 / 229 = 4.33537
    # conv density 4.33537 * 11/36 = 1.3247 > 1 -> conv is dense (36 non-zeros);
    # re-solve: eps = (992.8 - 36) / (176 + 42) = 956.8 / 218 = 2392/545 = 4.38899
    # d2 density 4.38899 * 21/160 = 0.57605 <= 1: done.
    eps = F(2392, 545)
    got = distribute(SHAPES, 0.8, "erk")
    _close(got, {"conv": 0, "d1": 1 - eps * F(11, 288), "d2": 1 - eps * F(21, 160)})
    assert got["d1"] == pytest.approx(0.8323649337410806, abs=1e-12)
    assert got["d2"] == pytest.approx(0.42394495412844035, abs=1e-12)
    # the sparse layers carry the whole budget: zeros == 0.8 * 4964 = 3971.2
    zeros = sum(PARAMS[k] * got[k] for k in SHAPES)
    assert zeros == pytest.approx(0.8 * 4964, abs=1e-9)


def test_erk_two_layers_forced_dense_in_turn():
    # S = 0.5: eps = 2482/229 = 10.84 -> conv 3.31 > 1: dense.
    # eps = (2482 - 36) / 218 = 11.22 -> d2 density 11.22 * 21/160 = 1.47 > 1: dense.
    # eps = (2446 - 320) / 176 = 1063/88 = 12.0795 -> d1 density 0.46137.
    got = distribute(SHAPES, 0.5, "erk")
    _close(got, {"conv": 0, "d1": 1 - F(1063, 88) * F(11, 288), "d2": 0})
    assert got["d1"] == pytest.approx(0.5386284722222222, abs=1e-12)
    assert got["d1"] * 4608 == pytest.approx(0.5 * 4964, abs=1e-9)


def test_er_differs_from_erk_for_convs():
    # ER uses only the last two dims of the conv: raw = (1 + 4) / (1 * 4) = 5/4, and
    # raw * params = 45. eps = 496.4 / (45 + 176 + 42) = 2.3593; conv 2.95 > 1: dense.
    # re-solve: eps = 460.4 / 218 = 1151/545 = 2.11193.
    eps = F(1151, 545)
    got = distribute(SHAPES, 0.9, "er")
    _close(got, {"conv": 0, "d1": 1 - eps * F(11, 288), "d2": 1 - eps * F(21, 160)})
    assert got["d1"] == pytest.approx(0.9193361365953109, abs=1e-12)
    assert got["d2"] == pytest.approx(0.722809633027523, abs=1e-12)
    assert got != distribute(SHAPES, 0.9, "erk")


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99])
def test_er_and_erk_agree_for_dense_kernels(sparsity):
    shapes = {"a": (784, 300), "b": (300, 100), "c": (100, 10)}
    assert distribute(shapes, sparsity, "er") == pytest.approx(
        distribute(shapes, sparsity, "erk"), abs=1e-12)


def test_lenet_erk_by_hand():
    # 784-300-100-10: sums 1084, 400, 110 -> sum 1594; N = 235200 + 30000 + 1000 = 266200
    # S = 0.9: eps = 26620 / 1594 = 16.70; c: 16.70 * 110/1000 = 1.84 > 1 -> dense.
    # eps = (26620 - 1000) / (1084 + 400) = 25620 / 1484 = 17.2642
    # a: 1 - 17.2642 * 1084/235200 = 0.920432, b: 1 - 17.2642 * 400/30000 = 0.769811
    shapes = {"a": (784, 300), "b": (300, 100), "c": (100, 10)}
    eps = F(25620, 1484)
    got = distribute(shapes, 0.9, "erk")
    _close(got, {"a": 1 - eps * F(1084, 235200), "b": 1 - eps * F(400, 30000), "c": 0})
    assert got["a"] == pytest.approx(0.9204322, abs=1e-7)
    assert got["b"] == pytest.approx(0.7698113, abs=1e-7)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_uniform(sparsity):
    got = distribute(SHAPES, sparsity, "uniform")
    assert got == {"conv": sparsity, "d1": sparsity, "d2": sparsity}


def test_uniform_with_pins():
    got = distribute(SHAPES, 0.7, "uniform", custom={"conv": 0.0, "d2": 0.25})
    assert got == {"conv": 0.0, "d1": 0.7, "d2": 0.25}


@pytest.mark.parametrize("custom,expected_d2", [({"d2": 0.0}, 0.0), ({"d2": 0.5}, 0.5)])
def test_pinned_layers_are_excluded_from_the_budget(custom, expected_d2):
    # d2 pinned: the budget covers conv + d1 only: 0.1 * (36 + 4608) = 464.4;
    # eps = 464.4 / (11 + 176) = 2322/935 = 2.48342 (independent of d2's pinned value);
    # conv 2.48342 * 11/36 = 0.75882, d1 2.48342 * 11/288 = 0.094853
    eps = F(2322, 935)
    got = distribute(SHAPES, 0.9, "erk", custom=custom)
    _close(got, {"conv": 1 - eps * F(11, 36), "d1": 1 - eps * F(11, 288),
                 "d2": expected_d2})
    assert got["conv"] == pytest.approx(0.2411764705882353, abs=1e-12)
    assert got["d1"] == pytest.approx(0.9051470588235294, abs=1e-12)
    # the free layers alone hold 90% zeros
    assert 36 * got["conv"] + 4608 * got["d1"] == pytest.approx(0.9 * 4644, abs=1e-9)


def test_erk_power_scale():
    # power 0.5 on two dense kernels: raw_a = sqrt(20/100) = sqrt(0.2), raw_b = sqrt(15/50)
    # S = 0.8 over 150 params: budget 30; eps = 30 / (100 sqrt(.2) + 50 sqrt(.3)) = 0.41605
    # a: 1 - 0.41605 * 0.44721 = 0.81394, b: 1 - 0.41605 * 0.54772 = 0.77212
    shapes = {"a": (10, 10), "b": (10, 5)}
    eps = 30.0 / (100 * np.sqrt(0.2) + 50 * np.sqrt(0.3))
    got = distribute(shapes, 0.8, "erk", erk_power_scale=0.5)
    assert got["a"] == pytest.approx(1 - eps * np.sqrt(0.2), abs=1e-12)
    assert got["b"] == pytest.approx(1 - eps * np.sqrt(0.3), abs=1e-12)
    assert got["a"] == pytest.approx(0.8139388, abs=1e-7)
    assert got["b"] == pytest.approx(0.7721225, abs=1e-7)
    # power 0 makes every raw density 1: ERK becomes uniform
    assert distribute(SHAPES, 0.9, "erk", erk_power_scale=0.0) == pytest.approx(
        {"conv": 0.9, "d1": 0.9, "d2": 0.9}, abs=1e-12)
    # power 1 is the default
    assert distribute(shapes, 0.8, "erk", erk_power_scale=1.0) == distribute(shapes, 0.8)


@pytest.mark.parametrize("method", ["uniform", "er", "erk"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("shapes", [
    SHAPES,
    {"a": (784, 300), "b": (300, 100), "c": (100, 10)},
    {"c1": (3, 3, 3, 16), "c2": (3, 3, 16, 32), "c3": (3, 3, 32, 64), "fc": (64, 10)},
    {"emb": (1000, 16), "k": (5, 3, 7), "v": (16, 2, 8)},
])
def test_total_zeros_match_the_target(method, sparsity, shapes):
    got = distribute(shapes, sparsity, method)
    assert list(got) == list(shapes)
    assert all(0.0 <= s < 1.0 for s in got.values())
    sizes = {k: int(np.prod(v)) for k, v in shapes.items()}
    total = sum(sizes.values())
    # fractional zeros are exact; integer counts within half a zero per layer
    assert sum(sizes[k] * got[k] for k in shapes) == pytest.approx(sparsity * total, abs=1e-6)
    zeros = sum(count_zeros(sizes[k], got[k]) for k in shapes)
    assert abs(zeros - round(sparsity * total)) <= len(shapes)


def test_zero_sparsity_is_all_dense():
    for method in ("uniform", "er", "erk"):
        assert distribute(SHAPES, 0.0, method) == {"conv": 0.0, "d1": 0.0, "d2": 0.0}


def test_parameter_weighted():
    shapes = {"a/k": (10, 10), "a/r": (10, 30), "b/k": (4, 5)}
    values = {"a/k": 0.5, "a/r": 0.9, "b/k": 0.2}
    got = parameter_weighted(values, shapes, {"a": ["a/k", "a/r"], "b": ["b/k"]})
    # (100 * 0.5 + 300 * 0.9) / 400 = 320 / 400
    assert got == pytest.approx({"a": 0.8, "b": 0.2}, abs=1e-12)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan")])
def test_bad_sparsity_value(bad):
    with pytest.raises(ValueError, match=r"in \[0, 1\).*e\.g\. 0\.9"):
        distribute(SHAPES, bad)


@pytest.mark.parametrize("bad", ["lots", None, [0.5]])
def test_bad_sparsity_type(bad):
    with pytest.raises(TypeError, match=r"must be a number in \[0, 1\)"):
        check_sparsity(bad)


def test_check_sparsity_names_what():
    assert check_sparsity("0.25") == 0.25
    with pytest.raises(ValueError, match="custom sparsity of 'x'"):
        check_sparsity(2, "custom sparsity of 'x'")


def test_unknown_method():
    with pytest.raises(ValueError, match=r"unknown sparsity distribution 'erdos'.*'uniform', "
                                         r"'er', 'erk'"):
        distribute(SHAPES, 0.5, "erdos")
    assert distributions.METHODS == ("uniform", "er", "erk")


def test_unknown_custom_key_and_bad_custom_value():
    with pytest.raises(ValueError, match=r"unknown weights \['nope'\].*known: \['conv', 'd1', "
                                         r"'d2'\]"):
        distribute(SHAPES, 0.5, custom={"nope": 0.0})
    with pytest.raises(ValueError, match=r"custom sparsity of 'd1' must be in \[0, 1\)"):
        distribute(SHAPES, 0.5, custom={"d1": 1.0})
