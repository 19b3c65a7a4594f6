"""The PyTorch array namespace of ``tf_lottery.dst.arrays`` (Keras 3 on the PyTorch backend)."""


class Torch:
    """PyTorch ops (Keras 3 on the PyTorch backend runs eagerly). No stateless RNG exists
    in torch: seeds are Python ints mixed with splitmix64, and each draw seeds its own
    CPU generator, so a draw depends on (seed, unit, step) only, as on TF and JAX. Sorts
    are stable sorts (``torch.topk`` does not promise its tie order)."""

    name = "torch"
    _MASK64 = (1 << 64) - 1

    def __init__(self):
        import keras
        import torch
        self.torch = torch
        self.float32, self.int32, self.int64, self.bool = (torch.float32, torch.int32,
                                                           torch.int64, torch.bool)
        self.lowest = float(torch.finfo(torch.float32).min)
        self.device = keras.ops.convert_to_tensor(0.0).device  # where Keras puts tensors

    def is_tensor(self, x) -> bool:
        return self.torch.is_tensor(x)

    def asarray(self, x, dtype=None):
        return self.torch.as_tensor(x, dtype=dtype, device=self.device)

    def cast(self, x, dtype):
        return self.asarray(x).to(dtype)

    def shape(self, x):
        return tuple(x.shape)

    def size(self, x):
        return int(x.numel())

    def static_size(self, x):
        return int(x.numel())

    def reshape(self, x, shape):
        return self.torch.reshape(x, [int(d) for d in shape])

    def transpose(self, x):
        return x.permute(*reversed(range(x.ndim)))

    def where(self, cond, a, b):
        return self.torch.where(cond, self.asarray(a), self.asarray(b))

    def isnan(self, x):
        return self.torch.isnan(x)

    def abs(self, x):
        return self.torch.abs(x)

    def floor(self, x):
        return self.torch.floor(self.asarray(x))

    def cos(self, x):
        return self.torch.cos(self.asarray(x))

    def clip(self, x, lo, hi):
        return self.torch.clamp(self.asarray(x), lo, hi)

    def maximum(self, a, b):
        return self.torch.maximum(self.asarray(a), self.asarray(b))

    def minimum(self, a, b):
        return self.torch.minimum(self.asarray(a), self.asarray(b))

    def power(self, a, b):
        return self.torch.pow(self.asarray(a), b)

    def sum(self, x, axis=None):
        return self.torch.sum(x) if axis is None else self.torch.sum(x, dim=axis)

    def equal(self, a, b):
        return self.torch.eq(self.asarray(a), self.asarray(b))

    def mod(self, a, b):
        return self.torch.remainder(self.asarray(a), b)

    def logical_and(self, a, b):
        return self.torch.logical_and(self.asarray(a), self.asarray(b))

    def arange(self, n):
        return self.torch.arange(int(n), device=self.device)

    def full(self, shape, value):
        return self.torch.full([int(d) for d in shape], float(value), dtype=self.float32,
                               device=self.device)

    def argsort_desc(self, x, axis=-1):
        return self.torch.argsort(x, dim=axis, descending=True, stable=True)

    def argsort(self, x, axis=-1):
        return self.torch.argsort(x, dim=axis, stable=True)

    def take(self, x, indices, axis=0):
        return self.torch.index_select(x, axis, indices)

    def top_k(self, x, k: int):
        order = self.argsort_desc(x)[:k]
        return x[order], order

    def kth_largest(self, x, k, k_max: int):
        """The ``k``-th largest value (eager: a ``top_k`` of ``k_max``; 0: the largest)."""
        values, _ = self.top_k(x, k_max)
        return values[max(int(k) - 1, 0)]

    def cond(self, pred, true_fn, false_fn):
        return true_fn() if bool(pred) else false_fn()

    def scatter(self, indices, values, n):
        out = self.torch.zeros(int(n), dtype=values.dtype, device=values.device)
        out[indices] = values
        return out

    def _mix(self, a: int, b: int) -> int:
        z = (a * 0x9E3779B97F4A7C15 + b + 0x632BE59BD9B4E019) & self._MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self._MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self._MASK64
        return z ^ (z >> 31)

    def unit_seed(self, seed: int, unit_index: int, step):
        """A Python int: the stateless seed of one unit at one step."""
        return self._mix(self._mix(self._mix(int(seed), 0x5EED), int(unit_index)), int(step))

    def fold_in(self, seed, salt: int):
        return self._mix(int(seed), int(salt))

    def uniform(self, shape, seed):
        generator = self.torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
        draw = self.torch.rand([int(d) for d in shape], generator=generator)
        return draw.to(self.device)

    def uniform_n(self, n, seed):
        return self.uniform([int(n)], seed)
