"""masking/plan.py and state_plan.py work on plain objects (no Keras), as both paths need."""
import types

import numpy as np
import pytest

from tf_lottery.masking import plan, state_plan


class _Layer:
    def __init__(self, name, masks=None):
        self.name, self._masks = name, masks

    def get_masks(self):
        return self._masks


def _unit(layer, weight, shape, mask=None):
    return types.SimpleNamespace(key=f"{layer.name}/{weight}", inner=layer, layer=layer,
                                 shape=shape, size=int(np.prod(shape)), mask=mask)


def test_pins_report_and_updates_on_plain_units():
    a, b = _Layer("a", [np.ones((2, 3))]), _Layer("b", [np.ones(4), np.ones(2)])
    units = [_unit(a, "kernel", (2, 3), 1), _unit(b, "kernel", (4,), 1), _unit(b, "bias", (2,), 1)]
    assert plan.pins(units, ["a"], {"b/bias": 0.5}) == {"a/kernel": 0.0, "b/bias": 0.5}
    with pytest.raises(ValueError, match=r"name \['c'\], which are not prunable.*\['a', 'b'\]"):
        plan.pins(units, ["c"], None)
    sparsities = plan.weight_sparsities(units, 0.5, "uniform", ["a"], None, 1.0)
    assert sparsities == {"a/kernel": 0.0, "b/kernel": 0.5, "b/bias": 0.5}
    assert plan.per_layer(units, sparsities) == {"a": 0.0, "b": 0.5}

    new = np.array([0.0, 1, 0, 1])
    updates = plan.mask_updates(units, [a, b], {"b/kernel": new})
    assert [layer.name for layer, _ in updates] == ["b"]
    np.testing.assert_array_equal(updates[0][1][0], new)
    np.testing.assert_array_equal(updates[0][1][1], np.ones(2))
    with pytest.raises(ValueError, match=r"unknown weights \['b/gamma'\]"):
        plan.mask_updates(units, [a, b], {"b/gamma": new})

    values = {"a/kernel": np.arange(6.0).reshape(2, 3), "b/kernel": np.ones(4),
              "b/bias": np.zeros(2)}
    report = plan.sparsity_report(units, values, {"b/kernel": new})
    assert [(r["layer"], r["params"], r["nonzeros"], r["active"]) for r in report] == [
        ("a", 6, 5, 5), ("b", 4, 4, 2), ("b", 2, 0, 0), ("total", 12, 9, 7)]
    assert report[-1]["sparsity"] == pytest.approx(5 / 12)
    assert "total" in str(report)


def test_check_masks_names_the_bad_mask():
    targets = [("d/kernel", (2, 2))]
    np.testing.assert_array_equal(plan.check_masks("d", targets, [[[1, 0], [0, 1]]]),
                                  [np.eye(2, dtype=np.float32)])
    with pytest.raises(ValueError, match=r"d: expected 1 masks, got 2"):
        plan.check_masks("d", targets, [np.eye(2), np.eye(2)])
    with pytest.raises(ValueError, match=r"d: mask for d/kernel has shape \(3,\), expected \(2, 2\)"):
        plan.check_masks("d", targets, [np.ones(3)])
    with pytest.raises(ValueError, match="only 0s and 1s"):
        plan.check_masks("d", targets, [np.full((2, 2), 0.5)])


def test_resolve_dense_layers_expands_class_names_and_blocks_unlisted():
    class Dense(_Layer):
        pass

    class Odd(_Layer):
        pass

    d1, d2, odd = Dense("d1"), Dense("d2"), Odd("odd")
    units = [_unit(d1, "kernel", (2,)), _unit(d2, "kernel", (2,))]
    got = plan.resolve_dense_layers([d1, d2, odd], units, [odd], ["Dense", "odd"], "tfmot", "fix")
    assert got == ["d1", "d2"]
    with pytest.raises(ValueError, match=r"^these layers .* but tfmot cannot prune them: "
                                         r"odd \(Odd\)\. fix$"):
        plan.resolve_dense_layers([d1, d2, odd], units, [odd], ["d1"], "tfmot", "fix")


def test_live_optimizers_and_initial_values():
    inner = types.SimpleNamespace(initial_accumulator_value=0.25)
    outer = types.SimpleNamespace(inner=inner)
    model = types.SimpleNamespace(optimizer=outer)
    unwrap = lambda o: getattr(o, "inner", o)  # noqa: E731
    assert state_plan.live_optimizers(model, [outer, inner], unwrap, lambda o: None) == [inner]
    assert state_plan.live_optimizers(None, None, unwrap, lambda o: None) == []
    with pytest.raises(TypeError, match="foreign"):
        state_plan.live_optimizers(model, None, unwrap, lambda o: (_ for _ in ()).throw(
            TypeError("foreign")))
    assert state_plan.initial_value(inner, "_accumulators") == 0.25
    assert state_plan.initial_value(inner, "_momentums") == 0.0
    assert state_plan.initial_value(types.SimpleNamespace(), "_accumulators") == 0.0
