"""The Keras side of pruning-at-initialisation: gradients, Hessian-gradient products and
SynFlow's iterative rounds on a tf_keras model; the score math is in ``scores``.

``score_masks`` is what ``sparsify(..., mask_init="snip" | "grasp" | "synflow")`` calls.
Every function leaves the model's variables as it found them (BatchNormalization's
moving statistics included).
"""
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from tf_lottery._keras import keras, tf
from tf_lottery.masking import scores

NEEDS_DATA = ("snip", "grasp")
METHODS = NEEDS_DATA + ("synflow",)


def check_data(method: str, data) -> None:
    """Raises ValueError, naming the fix, if ``method`` needs a batch and ``data`` is None."""
    if method in NEEDS_DATA and data is None:
        raise ValueError(f"mask_init={method!r} scores weights by the loss gradient on a "
                         "batch: pass data=(x, y) (and loss=, default sparse categorical "
                         "cross-entropy on logits)")


def _default_loss(model):
    """The model's compiled loss, else sparse categorical cross-entropy on logits."""
    compiled = getattr(model, "loss", None)
    if compiled is not None and not isinstance(compiled, (dict, list, tuple)):
        return keras.losses.get(compiled)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class _Restored:
    """Puts every variable of ``model`` back to its value on entry."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.values = [v.numpy() for v in self.model.weights]
        return self

    def __exit__(self, *exc):
        for v, value in zip(self.model.weights, self.values):
            v.assign(value)


def loss_gradients(model, variables: Sequence, data, loss: Optional[Callable] = None
                   ) -> list:
    """dL/dw for each of ``variables`` on the batch ``data = (x, y)`` (training mode)."""
    x, y = data
    loss = loss or _default_loss(model)
    with _Restored(model), tf.GradientTape() as tape:
        value = loss(y, model(x, training=True))
    grads = tape.gradient(value, list(variables),
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [g.numpy() for g in grads]


def hessian_gradients(model, variables: Sequence, data, loss: Optional[Callable] = None,
                      temperature: float = 1.0) -> list:
    """H g for each of ``variables`` on the batch ``data = (x, y)``: the Hessian of the
    loss (over ``variables``) times its gradient g, by differentiating g . stop(g).

    ``temperature`` divides the model's outputs before the loss; GraSP's code (Wang et al.
    2020, and Tanaka et al.'s re-implementation) uses 200 on logits, ``sparsify`` uses 1
    (the formula as the paper writes it).
    """
    x, y = data
    loss = loss or _default_loss(model)
    variables = list(variables)
    zero = tf.UnconnectedGradients.ZERO
    with _Restored(model), tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            value = loss(y, model(x, training=True) / temperature)
        grads = inner.gradient(value, variables, unconnected_gradients=zero)
        dot = tf.add_n([tf.reduce_sum(tf.stop_gradient(g) * g) for g in grads])
    return [h.numpy() for h in outer.gradient(dot, variables, unconnected_gradients=zero)]


def synflow_gradients(model, variables: Sequence,
                      masks: Optional[Sequence[np.ndarray]] = None) -> list:
    """dR/dw for each of ``variables``, R the output sum of ``model`` with every variable
    replaced by its absolute value (masked entries of ``variables`` by 0) on an all-ones
    input, in inference mode (BatchNormalization uses its moving statistics, as in Tanaka
    et al.'s code). The model should end in logits (a softmax breaks the linearisation)."""
    if isinstance(model.input_shape, list):
        raise ValueError("SynFlow needs a model with one input")
    ones = tf.ones((1,) + tuple(model.input_shape[1:]), model.dtype or "float32")
    variables = list(variables)
    with _Restored(model):
        for v in model.weights:
            v.assign(tf.abs(v))
        for i, v in enumerate(variables):
            if masks is not None:
                v.assign(v * tf.cast(masks[i], v.dtype))
        with tf.GradientTape() as tape:
            r = tf.reduce_sum(model(ones, training=False))
        grads = tape.gradient(r, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [g.numpy() for g in grads]


def score_masks(model, weights: Mapping[str, object], method: str,
                sparsity: Optional[float] = None,
                sparsities: Optional[Mapping[str, float]] = None,
                pinned: Optional[Mapping[str, float]] = None, data=None,
                loss: Optional[Callable] = None,
                iterations: int = 100) -> Dict[str, np.ndarray]:
    """Masks of ``weights`` (key -> variable of ``model``) by ``method`` scores.

    Global at ``sparsity`` over the keys not ``pinned`` (key -> own sparsity), or per
    weight at ``sparsities``. ``data = (x, y)`` is the batch SNIP and GraSP score on
    (``loss`` default: the compiled loss, else sparse categorical cross-entropy on
    logits); SynFlow needs no data and prunes in ``iterations`` rounds on the
    exponential schedule ``scores.synflow_densities``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown score {method!r}; use one of {METHODS}")
    check_data(method, data)
    keys, variables = list(weights), list(weights.values())
    values = [v.numpy() for v in variables]
    if method == "snip":
        grads = loss_gradients(model, variables, data, loss)
        raw = {k: scores.snip(w, g) for k, w, g in zip(keys, values, grads)}
    elif method == "grasp":
        hgs = hessian_gradients(model, variables, data, loss)
        raw = {k: scores.importance("grasp", scores.grasp(w, h))
               for k, w, h in zip(keys, values, hgs)}
    if method != "synflow":
        return scores.masks_from_scores(raw, sparsity, sparsities, pinned)

    def density(k):
        if sparsities is not None:
            return 1.0 - sparsities[k]
        return 1.0 - (pinned or {}).get(k, sparsity)

    rounds = {k: scores.synflow_densities(density(k), iterations) for k in keys}
    overall = scores.synflow_densities(1.0 - (sparsity or 0.0), iterations)
    masks = None
    for r in range(iterations):
        grads = synflow_gradients(model, variables,
                                  None if masks is None else [masks[k] for k in keys])
        raw = {k: scores.synflow(w, g) for k, w, g in zip(keys, values, grads)}
        at = {k: 1.0 - rounds[k][r] for k in keys}
        masks = scores.masks_from_scores(
            raw, 1.0 - overall[r], at if sparsities is not None else None,
            {k: at[k] for k in (pinned or {})}, masks)
    return masks
