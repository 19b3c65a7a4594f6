"""Compaction: remove the units sparsity disconnected, for a smaller model with equal outputs.

A Dense unit or convolution channel is *dead* when its kernel has no non-zero weight
into it (it outputs the constant ``activation(bias)``, shifted by any batch norm after
it) or no non-zero weight out of it in every layer that reads it. ``compact(model)``
rebuilds a functional or Sequential tf_keras model without those units:

- a unit with no outgoing weights is dropped with its kernel column, bias and batch
  norm entries;
- a unit with no incoming weights still feeds a constant to the next layers: that
  constant (read from the model itself, so activation and batch norm are exact) times
  the reader's weights is added to the reader's bias (turned on if it had none), then
  the unit is dropped. A convolution reader with ``"same"`` padding and a kernel wider
  than 1 sees zeros at the border instead of the constant, so there the unit stays;
- channels are followed through bias, BatchNormalization (last axis), element-wise
  activations, dropout, pooling, Flatten, Add / Subtract / Average (a channel goes only
  if it goes in every branch) and Concatenate (last axis). A channel that reaches a
  model output or any other layer stays, as do units whose removal would leave a layer
  empty.

It repeats until nothing more goes (removing a unit can disconnect units before or
after it). Pure graph bookkeeping on numpy arrays plus one forward pass for the
constants; the rebuilt model uses the original layer classes and configs.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np

from tf_lottery._keras import keras, tf
from tf_lottery.export.rebuild import rebuild

ELEMENTWISE = {"linear", "relu", "relu6", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid",
               "tanh", "swish", "silu", "softplus", "softsign", "exponential", "leaky_relu",
               "mish", "hard_swish"}


def _network_nodes(model):
    """[(layer, input KerasTensors, output KerasTensors)] of every layer call of ``model``
    in topological order; raises ValueError for shared layers and subclassed models."""
    if not getattr(model, "_is_graph_network", False):
        raise ValueError(f"compact needs a functional or Sequential model built with an "
                         f"input shape; {model.name!r} is not one")
    keys = model._network_nodes  # private: which nodes of a layer belong to this model
    out = []
    for layer in model.layers:
        nodes = [n for i, n in enumerate(layer._inbound_nodes)
                 if f"{layer.name}_ib-{i}" in keys]
        if len(nodes) != 1:
            raise ValueError(f"layer {layer.name!r} is called {len(nodes)} times in the "
                             "model; compact supports each layer called once")
        node = nodes[0]
        inputs = [] if node.is_input else list(node.keras_inputs)
        out.append((layer, inputs, list(node.outputs) if isinstance(node.outputs, (list, tuple))
                    else [node.outputs]))
    return out


def _activation_name(layer) -> Optional[str]:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", None)


def _is_producer(layer) -> bool:
    L = keras.layers
    if type(layer) is L.Dense:
        return _activation_name(layer) in ELEMENTWISE
    if type(layer) in (L.Conv1D, L.Conv2D, L.Conv3D):
        return (layer.groups == 1 and layer.data_format == "channels_last"
                and _activation_name(layer) in ELEMENTWISE)
    return False


_PASS_THROUGH = tuple(getattr(keras.layers, n) for n in (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ReLU", "ELU", "LeakyReLU", "MaxPooling1D",
    "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D"))


def _is_channelwise(layer, rank: int) -> bool:
    """Maps each channel (last axis) on its own and keeps a constant channel constant."""
    L = keras.layers
    if isinstance(layer, L.BatchNormalization):
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        return list(axis) in ([-1], [rank - 1])
    if type(layer) is L.Activation:
        return _activation_name(layer) in ELEMENTWISE
    if isinstance(layer, _PASS_THROUGH):
        return getattr(layer, "data_format", "channels_last") == "channels_last"
    return False


class _Channels:
    """Union-find over channel ids; a locked id can never be removed."""

    def __init__(self):
        self.parent: List[int] = []
        self.locked: List[bool] = []

    def new(self, n: int, locked: bool = False) -> np.ndarray:
        start = len(self.parent)
        self.parent += list(range(start, start + n))
        self.locked += [locked] * n
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            self.locked[a] = self.locked[a] or self.locked[b]

    def lock(self, ids) -> None:
        for i in np.ravel(ids):
            self.locked[self.find(int(i))] = True

    def roots(self, ids) -> np.ndarray:
        return np.array([self.find(int(i)) for i in np.ravel(ids)], dtype=np.int64)


def _channels(t) -> int:
    return int(t.shape[-1])


def _analyse(model):
    """Per tensor: channel ids; per producer: its output ids; per reader: (layer, input
    tensor, ids of its fan-in positions)."""
    ch = _Channels()
    ids: Dict[int, np.ndarray] = {}
    producers, readers = [], []
    for t in model.inputs:  # Sequential models do not list their InputLayer
        ids[id(t)] = ch.new(_channels(t) if t.shape.rank and t.shape[-1] else 1, locked=True)
    for layer, inputs, outputs in _network_nodes(model):
        rank = len(outputs[0].shape) if outputs else 0
        if isinstance(layer, keras.layers.InputLayer):
            continue
        ins = [ids[id(t)] for t in inputs]
        L = keras.layers
        known = all(t.shape.rank and t.shape[-1] is not None for t in outputs)
        if known and _is_producer(layer) and len(inputs) == 1:
            readers.append((layer, inputs[0], ins[0]))
            out = ch.new(_channels(outputs[0]))
            producers.append((layer, out))
            ids[id(outputs[0])] = out
        elif known and len(inputs) == 1 and len(outputs) == 1 and _is_channelwise(layer, rank):
            ids[id(outputs[0])] = ins[0]
        elif (known and type(layer) is L.Flatten and len(inputs) == 1
              and layer.data_format == "channels_last"
              and all(d is not None for d in inputs[0].shape[1:])):
            positions = int(np.prod(inputs[0].shape[1:-1], dtype=np.int64))
            ids[id(outputs[0])] = np.tile(ins[0], positions)
        elif known and type(layer) in (L.Add, L.Subtract, L.Average) and len(
                {tuple(t.shape[1:]) for t in inputs + outputs}) == 1:
            for other in ins[1:]:
                for a, b in zip(ins[0], other):
                    ch.union(int(a), int(b))
            ids[id(outputs[0])] = ins[0]
        elif (known and type(layer) is L.Concatenate
              and layer.axis in (-1, len(outputs[0].shape) - 1)):
            ids[id(outputs[0])] = np.concatenate(ins)
        else:
            for i in ins:
                ch.lock(i)
            for t in outputs:
                ids[id(t)] = ch.new(_channels(t) if t.shape.rank and t.shape[-1] else 1,
                                    locked=True)
    for t in tf.nest.flatten(model.outputs):
        ch.lock(ids[id(t)])
    return ch, ids, producers, readers


def _fan_in_rows(layer) -> np.ndarray:
    """The kernel as [fan-in position (input channel), taps, outputs]."""
    k = layer.kernel.numpy()
    return np.moveaxis(k.reshape(-1, k.shape[-2], k.shape[-1]), 1, 0)


def _foldable(layer) -> bool:
    if type(layer) is keras.layers.Dense:
        return True
    return layer.padding == "valid" or all(int(s) == 1 for s in layer.kernel_size)


def _plan(model):
    """Which channel roots go, and the constants needed to fold them."""
    ch, ids, producers, readers = _analyse(model)
    in_dead: Dict[int, bool] = {}
    for layer, out in producers:
        k = layer.kernel.numpy()
        dead = ~np.any(k.reshape(-1, k.shape[-1]) != 0, axis=0)
        for i, d in zip(out, dead):
            r = ch.find(int(i))
            in_dead[r] = in_dead.get(r, True) and bool(d)
    removable = {r: not ch.locked[r] for r in in_dead}
    folds = []  # (reader, input tensor, positions) that need a constant folded in
    for layer, tensor, pos_ids in readers:
        rows = _fan_in_rows(layer)
        roots = ch.roots(pos_ids)
        used = np.any(rows.reshape(rows.shape[0], -1) != 0, axis=1)
        for r in set(roots[used].tolist()):
            if r not in removable or not removable[r]:
                continue
            if not (in_dead.get(r, False) and _foldable(layer)):
                removable[r] = False
        folds.append((layer, tensor, roots, used))
    for t_ids in ids.values():  # never empty a tensor
        roots = ch.roots(t_ids)
        if roots.size and all(removable.get(int(r), False) for r in roots):
            removable[int(roots[0])] = False
    gone = {r for r, ok in removable.items() if ok}
    return ch, ids, producers, folds, gone, in_dead


def _constants(model, tensors) -> List[np.ndarray]:
    """The value of every channel of each tensor for an all-zero input (the dead channels
    are constant, so any input gives the same), as [channels] vectors."""
    probe = keras.Model(model.inputs, tensors)
    feed = [np.zeros([1] + [int(d) for d in t.shape[1:]], t.dtype.as_numpy_dtype)
            for t in model.inputs]
    values = probe(feed if len(feed) > 1 else feed[0], training=False)
    values = values if isinstance(values, (list, tuple)) else [values]
    return [np.asarray(v).reshape(-1, v.shape[-1])[0].astype(np.float64) for v in values]


def _compact_once(model) -> Tuple[object, List[Dict]]:
    ch, ids, producers, folds, gone, in_dead = _plan(model)
    if not gone:
        return model, []
    keep_of = {}  # id(tensor) -> boolean keep vector over its channels

    def keep(t):
        if id(t) not in keep_of:
            keep_of[id(t)] = np.array([r not in gone for r in ch.roots(ids[id(t)])])
        return keep_of[id(t)]

    fold_tensors = [t for layer, t, roots, used in folds
                    if np.any(used & np.isin(roots, list(gone)))]
    values = dict(zip(map(id, fold_tensors), _constants(model, fold_tensors))) \
        if fold_tensors else {}

    new_weights: Dict[str, List[np.ndarray]] = {}
    config_changes: Dict[str, Dict] = {}
    report, out_kept = [], {}
    for layer, out in producers:
        kept = np.array([ch.find(int(i)) not in gone for i in out])
        out_kept[layer.name] = kept
        weights = layer.get_weights()
        weights[0] = weights[0][..., kept]
        if layer.use_bias:
            weights[1] = weights[1][kept]
        new_weights[layer.name] = weights
        key = "units" if type(layer) is keras.layers.Dense else "filters"
        config_changes[layer.name] = {key: int(kept.sum())}
        dead_in = np.array([in_dead.get(ch.find(int(i)), False) for i in out])
        if (~kept).any():
            report.append({"layer": layer.name, "before": int(kept.size),
                           "after": int(kept.sum()), "removed": int((~kept).sum()),
                           "no_inputs": int((~kept & dead_in).sum()),
                           "no_outputs": int((~kept & ~dead_in).sum())})
    for layer, tensor, roots, used in folds:
        kept = keep(tensor)
        weights = new_weights.get(layer.name) or layer.get_weights()
        kernel = layer.kernel.numpy()
        folded = ~kept & used
        if folded.any():
            v = values[id(tensor)][folded]
            taps = kernel[..., folded, :].reshape(-1, int(folded.sum()), kernel.shape[-1])
            shift = np.einsum("i,tio->o", v, taps.astype(np.float64))
            shift = shift[out_kept.get(layer.name, slice(None))]
            bias = weights[1] if layer.use_bias else np.zeros_like(shift)
            bias = (bias.astype(np.float64) + shift).astype(np.float32)
            if layer.use_bias:
                weights[1] = bias
            else:
                weights.append(bias)
                config_changes.setdefault(layer.name, {})["use_bias"] = True
        weights[0] = weights[0][..., kept, :]
        new_weights[layer.name] = weights
    for layer, inputs, outputs in _network_nodes(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            kept = keep(inputs[0])
            new_weights[layer.name] = [w[kept] for w in layer.get_weights()]

    def clone(layer):
        config = layer.get_config()
        config.update(config_changes.get(layer.name, {}))
        return type(layer).from_config(config)

    return rebuild(model, clone, new_weights), report


class CompactReport(list):
    """Rows per layer that lost units: layer, before, after, removed, no_inputs,
    no_outputs; plus ``params_before`` / ``params_after``."""

    params_before = params_after = 0

    def table(self) -> str:
        lines = [f"{'layer':24s} {'before':>7s} {'after':>7s} {'removed':>8s} "
                 f"{'no in':>6s} {'no out':>6s}"]
        for r in self:
            lines.append(f"{r['layer']:24s} {r['before']:7d} {r['after']:7d} {r['removed']:8d} "
                         f"{r['no_inputs']:6d} {r['no_outputs']:6d}")
        lines.append(f"parameters {self.params_before:,} -> {self.params_after:,}")
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def compact(model, return_report: bool = False, max_rounds: int = 10):
    """A smaller plain tf_keras model with the disconnected units removed (see module doc).

    Args:
      model: a functional or Sequential tf_keras model, plain or sparsified (its masks
        are applied and the wrappers stripped first).
      return_report: also return a ``CompactReport`` (units removed per layer, summed
        over the rounds).
      max_rounds: removal repeats until nothing changes, at most this many times.

    Returns:
      The compacted model (new layers; ``model`` is untouched), or ``(model, report)``.
    """
    from tf_lottery.masking.api import masked_layers, strip
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a tf_keras Model, got {type(model).__name__}")
    current = model = strip(model) if masked_layers(model) else model
    totals: Dict[str, Dict] = {}
    for _ in range(max_rounds):
        current, rows = _compact_once(current)
        if not rows:
            break
        for r in rows:
            t = totals.setdefault(r["layer"], {"layer": r["layer"], "before": r["before"],
                                               "removed": 0, "no_inputs": 0, "no_outputs": 0})
            t["after"] = r["after"]
            for k in ("removed", "no_inputs", "no_outputs"):
                t[k] += r[k]
    if current is model:
        current = keras.models.clone_model(model)
        current.set_weights(model.get_weights())
    report = CompactReport(totals.values())
    report.params_before = int(model.count_params())
    report.params_after = int(current.count_params())
    return (current, report) if return_report else current
