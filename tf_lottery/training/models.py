"""Functional models from the lottery-ticket and RigL papers, for tf_keras or Keras 3.

Each architecture is defined once and built with the Keras that
``tf_lottery.training.flavour`` selects (``_k()``): tf_keras by default, Keras 3 under
``flavour.use(3)`` (``tf-lottery train --keras=3``); return annotations name tf_keras.

Every builder is ``builder(input_shape=(H, W, C), num_classes=K, **options)`` and
returns a ``keras.Model`` mapping images ``(batch, H, W, C)`` float32 to logits
``(batch, K)`` (no softmax: train with ``from_logits=True``). Builders are
gin-configurable; ``get_model(name, ...)`` looks them up in ``MODELS``.

Only built-in layer classes are used (Dense, Conv2D, DepthwiseConv2D,
BatchNormalization, ...): tfmot's prune registry matches exact classes. Layer names
are fixed, so weight keys such as ``"conv1/kernel"`` are the same in every build;
the first weight layer is ``conv1`` (``fc1`` in LeNet) and the classifier is
``logits`` in every model, so configs can single them out (e.g. keep them dense).

Options shared by the builders:
  weight_decay: L2 penalty on Conv2D and Dense kernels in the SGD weight-decay
    convention: the loss gains ``weight_decay / 2 * sum(w ** 2)``, so the gradient
    gains ``weight_decay * w`` (a paper's "weight decay 1e-4" is ``1e-4`` here).
    Biases, BatchNorm and depthwise kernels are not decayed.
  seed: int; every kernel initializer (and dropout) gets its own seed derived from
    it, so theta_0 is the same in every build. None draws fresh values.
  kernel_initializer: Keras initializer identifier for Conv2D/Dense/Depthwise kernels.
  bn_momentum: BatchNormalization moving-average momentum (0.9, as PyTorch's 0.1).
  bn_init: initial BatchNormalization scale (ResNet-20, VGG): ``"ones"``, or
    ``"uniform"``, drawn from U(0, 1) as open_lth's ``batchnorm_init='uniform'``
    (``models/bn_initializers.py``) for the networks of Frankle et al. 2020.
"""
from typing import Callable, Dict, Optional, Sequence

import gin

from tf_lottery._keras import keras
from tf_lottery.training.flavour import keras_module as _k

_SEED_STRIDE = 1_000_003


class _Layers:
    """Applies the layers of one model, handing each its own seeded initializer.

    Methods take a tensor and return the layer's output tensor.
    """

    def __init__(self, kernel_initializer="he_normal", weight_decay: float = 0.0,
                 seed: Optional[int] = None, bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, bn_init: str = "ones"):
        self._initializer = kernel_initializer
        self._regularizer = _k().regularizers.L2(weight_decay / 2.0) if weight_decay else None
        self._seed = seed
        self._count = 0
        self._bn = dict(momentum=bn_momentum, epsilon=bn_epsilon)
        if bn_init not in ("ones", "uniform"):
            raise ValueError(f"bn_init must be 'ones' or 'uniform', got {bn_init!r}")
        self._bn_init = bn_init

    def _next_seed(self) -> Optional[int]:
        if self._seed is None:
            return None
        self._count += 1
        return (int(self._seed) * _SEED_STRIDE + self._count) % (2 ** 31 - 1)

    def initializer(self):
        """A fresh kernel initializer instance, seeded when the model is."""
        init = _k().initializers.get(self._initializer)
        config = init.get_config()
        seed = self._next_seed()
        if seed is not None and "seed" in config:
            config["seed"] = seed
        return type(init).from_config(config)

    def conv(self, x, filters: int, kernel_size: int, name: str, strides: int = 1,
             use_bias: bool = False, activation=None):
        """Conv2D with "same" output size; strided convs pad symmetrically first."""
        padding = "same"
        if strides > 1 and kernel_size > 1:
            x = _k().layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
            padding = "valid"
        return _k().layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
            activation=activation, kernel_initializer=self.initializer(),
            kernel_regularizer=self._regularizer, name=name)(x)

    def depthwise(self, x, name: str, strides: int = 1):
        """3x3 DepthwiseConv2D (multiplier 1, no bias), padded like ``conv``."""
        padding = "same"
        if strides > 1:
            x = _k().layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
            padding = "valid"
        return _k().layers.DepthwiseConv2D(
            3, strides=strides, padding=padding, use_bias=False,
            depthwise_initializer=self.initializer(), name=name)(x)

    def dense(self, x, units: int, name: str, activation=None):
        return _k().layers.Dense(
            units, activation=activation, kernel_initializer=self.initializer(),
            kernel_regularizer=self._regularizer, name=name)(x)

    def bn(self, x, name: str, zero_gamma: bool = False):
        """BatchNormalization; ``zero_gamma`` starts its scale at 0 (residual branch ends)."""
        gamma = "zeros" if zero_gamma else "ones"
        if not zero_gamma and self._bn_init == "uniform":
            gamma = _k().initializers.RandomUniform(0.0, 1.0, seed=self._next_seed())
        return _k().layers.BatchNormalization(
            gamma_initializer=gamma, name=name, **self._bn)(x)

    def dropout(self, x, rate: float, name: str):
        if not rate:
            return x
        return _k().layers.Dropout(rate, seed=self._next_seed(), name=name)(x)


def _relu(x, name: str):
    return _k().layers.ReLU(name=name)(x)


def _head(layers: _Layers, x, num_classes: int):
    x = _k().layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return layers.dense(x, num_classes, "logits")


@gin.configurable
def lenet_300_100(input_shape=(28, 28, 1), num_classes=10, weight_decay=0.0, seed=None,
                  kernel_initializer="glorot_normal") -> keras.Model:
    """LeNet-300-100 (Frankle & Carbin 2019): flatten, Dense 300, Dense 100 (ReLU), logits.

    266,610 parameters on MNIST (28x28x1, 10 classes).
    """
    layers = _Layers(kernel_initializer, weight_decay, seed)
    inputs = _k().Input(input_shape, name="image")
    x = _k().layers.Flatten(name="flatten")(inputs)
    x = layers.dense(x, 300, "fc1", "relu")
    x = layers.dense(x, 100, "fc2", "relu")
    return _k().Model(inputs, layers.dense(x, num_classes, "logits"), name="lenet_300_100")


def _conv_n(name: str, widths: Sequence[int], input_shape, num_classes, weight_decay, seed,
            kernel_initializer, dropout) -> keras.Model:
    """Frankle & Carbin's Conv-N: per width two 3x3 convs (bias, ReLU) and a 2x2 max pool,
    then Dense 256, Dense 256 (ReLU, optional dropout after each) and logits."""
    layers = _Layers(kernel_initializer, weight_decay, seed)
    inputs = _k().Input(input_shape, name="image")
    x = inputs
    for i, width in enumerate(widths):
        for j in (1, 2):
            x = layers.conv(x, width, 3, f"conv{2 * i + j}", use_bias=True, activation="relu")
        x = _k().layers.MaxPool2D(2, name=f"pool{i + 1}")(x)
    x = _k().layers.Flatten(name="flatten")(x)
    for j in (1, 2):
        x = layers.dense(x, 256, f"fc{j}", "relu")
        x = layers.dropout(x, dropout, f"dropout{j}")
    return _k().Model(inputs, layers.dense(x, num_classes, "logits"), name=name)


@gin.configurable
def conv2(input_shape=(32, 32, 3), num_classes=10, weight_decay=0.0, seed=None,
          kernel_initializer="glorot_normal", dropout=0.0) -> keras.Model:
    """Conv-2 (Frankle & Carbin 2019): conv 64, 64, pool; FC 256, 256; ~4.3M on CIFAR-10."""
    return _conv_n("conv2", (64,), input_shape, num_classes, weight_decay, seed,
                   kernel_initializer, dropout)


@gin.configurable
def conv4(input_shape=(32, 32, 3), num_classes=10, weight_decay=0.0, seed=None,
          kernel_initializer="glorot_normal", dropout=0.0) -> keras.Model:
    """Conv-4 (Frankle & Carbin 2019): 64, 64, pool, 128, 128, pool; FC 256, 256; ~2.4M."""
    return _conv_n("conv4", (64, 128), input_shape, num_classes, weight_decay, seed,
                   kernel_initializer, dropout)


@gin.configurable
def conv6(input_shape=(32, 32, 3), num_classes=10, weight_decay=0.0, seed=None,
          kernel_initializer="glorot_normal", dropout=0.0) -> keras.Model:
    """Conv-6 (Frankle & Carbin 2019): Conv-4 plus 256, 256, pool; FC 256, 256; ~1.7M."""
    return _conv_n("conv6", (64, 128, 256), input_shape, num_classes, weight_decay, seed,
                   kernel_initializer, dropout)


def _basic_block(layers: _Layers, x, filters: int, strides: int, name: str, zero_gamma: bool):
    """Post-activation ResNet block: conv-BN-ReLU-conv-BN plus shortcut, then ReLU.
    The shortcut is a 1x1 conv + BN when the shape changes (option B)."""
    y = _relu(layers.bn(layers.conv(x, filters, 3, f"{name}_conv1", strides), f"{name}_bn1"),
              f"{name}_relu1")
    y = layers.bn(layers.conv(y, filters, 3, f"{name}_conv2"), f"{name}_bn2", zero_gamma)
    if strides != 1 or x.shape[-1] != filters:
        x = layers.bn(layers.conv(x, filters, 1, f"{name}_shortcut", strides),
                      f"{name}_shortcut_bn")
    return _relu(_k().layers.Add(name=f"{name}_add")([x, y]), f"{name}_out")


@gin.configurable
def resnet20(input_shape=(32, 32, 3), num_classes=10, weight_decay=0.0, seed=None,
             kernel_initializer="he_normal", bn_momentum=0.9,
             zero_init_residual=False, bn_init="ones") -> keras.Model:
    """CIFAR ResNet-20 (He et al. 2016; Frankle & Carbin's "Resnet-18", whose table says 271K).

    272,474 trainable parameters on CIFAR-10, as open_lth's ``cifar_resnet_20``
    (``models/cifar_resnet.py``; 1x1 projection shortcuts).

    3x3 conv 16, then 3 stages of 3 basic blocks with 16/32/64 filters (stride 2 at the
    start of stages 2 and 3, 1x1 projection shortcuts), global average pool, logits.
    ``zero_init_residual`` starts each block's last BN scale at 0.
    """
    layers = _Layers(kernel_initializer, weight_decay, seed, bn_momentum, bn_init=bn_init)
    inputs = _k().Input(input_shape, name="image")
    x = _relu(layers.bn(layers.conv(inputs, 16, 3, "conv1"), "bn1"), "relu1")
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, 4):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(layers, x, filters, strides, f"stage{stage}_block{block}",
                             zero_init_residual)
    return _k().Model(inputs, _head(layers, x, num_classes), name="resnet20")


_VGG = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512),
}


def _vgg(depth: int, input_shape, num_classes, weight_decay, seed, kernel_initializer,
         bn_momentum, use_bias: bool, bn_init: str) -> keras.Model:
    """CIFAR VGG: 3x3 convs (conv-BN-ReLU) in ``_VGG[depth]`` (M: 2x2 max pool), global
    average pool, one Dense(num_classes)."""
    layers = _Layers(kernel_initializer, weight_decay, seed, bn_momentum, bn_init=bn_init)
    inputs = _k().Input(input_shape, name="image")
    x, conv, pool = inputs, 0, 0
    for width in _VGG[depth]:
        if width == "M":
            pool += 1
            x = _k().layers.MaxPool2D(2, name=f"pool{pool}")(x)
        else:
            conv += 1
            x = layers.conv(x, width, 3, f"conv{conv}", use_bias=use_bias)
            x = _relu(layers.bn(x, f"bn{conv}"), f"relu{conv}")
    return _k().Model(inputs, _head(layers, x, num_classes), name=f"vgg{depth}")


@gin.configurable
def vgg16(input_shape=(32, 32, 3), num_classes=10, weight_decay=0.0, seed=None,
          kernel_initializer="he_normal", bn_momentum=0.9, use_bias=True,
          bn_init="ones") -> keras.Model:
    """VGG-16 for CIFAR as open_lth's ``cifar_vgg_16`` (``models/cifar_vgg.py``), the
    VGG-16 of Frankle et al. 2020: 13 convs 64,64,M,128,128,M,256x3,M,512x3,M,512x3
    (with bias, as open_lth's ``nn.Conv2d``), global average pool, one Dense.

    14,728,266 trainable parameters on CIFAR-10 (14.7M).
    """
    return _vgg(16, input_shape, num_classes, weight_decay, seed, kernel_initializer,
                bn_momentum, use_bias, bn_init)


@gin.configurable
def vgg19(input_shape=(32, 32, 3), num_classes=10, weight_decay=0.0, seed=None,
          kernel_initializer="he_normal", bn_momentum=0.9, use_bias=False,
          bn_init="ones") -> keras.Model:
    """VGG-19 for CIFAR as in Liu et al. 2019 (~20.0M parameters on CIFAR-10).

    16 3x3 convs (conv-BN-ReLU, no bias) in the configuration
    64,64,M,128,128,M,256x4,M,512x4,M,512x4 (M: 2x2 max pool), global average pool,
    one Dense(num_classes).
    """
    return _vgg(19, input_shape, num_classes, weight_decay, seed, kernel_initializer,
                bn_momentum, use_bias, bn_init)


def _wide_block(layers: _Layers, x, filters: int, strides: int, name: str, dropout: float):
    """Pre-activation wide block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut
    (a 1x1 conv of the pre-activated input when the shape changes)."""
    pre = _relu(layers.bn(x, f"{name}_bn1"), f"{name}_relu1")
    if strides != 1 or x.shape[-1] != filters:
        x = layers.conv(pre, filters, 1, f"{name}_shortcut", strides)
    y = layers.conv(pre, filters, 3, f"{name}_conv1", strides)
    y = _relu(layers.bn(y, f"{name}_bn2"), f"{name}_relu2")
    y = layers.dropout(y, dropout, f"{name}_dropout")
    y = layers.conv(y, filters, 3, f"{name}_conv2")
    return _k().layers.Add(name=f"{name}_add")([x, y])


@gin.configurable
def wrn_22_2(input_shape=(32, 32, 3), num_classes=10, weight_decay=0.0, seed=None,
             kernel_initializer="he_normal", bn_momentum=0.9, dropout=0.3) -> keras.Model:
    """Wide ResNet 22-2 (Zagoruyko & Komodakis 2016), RigL's CIFAR-10 model (~1.1M).

    3x3 conv 16, then 3 groups of 3 pre-activation blocks with 32/64/128 filters
    (stride 2 at the start of groups 2 and 3), BN-ReLU, global average pool, logits.
    ``dropout`` (layers ``group*_block*_dropout``) sits between the two 3x3 convs of every
    block; 0.3 is the RigL reference's ``droprate`` (``rigl/cifar_resnet/resnet_model.py``).
    """
    depth, width = 22, 2
    blocks = (depth - 4) // 6
    layers = _Layers(kernel_initializer, weight_decay, seed, bn_momentum)
    inputs = _k().Input(input_shape, name="image")
    x = layers.conv(inputs, 16, 3, "conv1")
    for group, filters in enumerate((16 * width, 32 * width, 64 * width), start=1):
        for block in range(1, blocks + 1):
            strides = 2 if group > 1 and block == 1 else 1
            x = _wide_block(layers, x, filters, strides, f"group{group}_block{block}", dropout)
    x = _relu(layers.bn(x, "bn_final"), "relu_final")
    return _k().Model(inputs, _head(layers, x, num_classes), name="wrn_22_2")


def _bottleneck(layers: _Layers, x, filters: int, strides: int, name: str, zero_gamma: bool):
    """ResNet v1.5 bottleneck: 1x1 conv, 3x3 conv (carries the stride), 1x1 conv to
    4 * filters, each with BN; projection shortcut when the shape changes."""
    y = _relu(layers.bn(layers.conv(x, filters, 1, f"{name}_conv1"), f"{name}_bn1"),
              f"{name}_relu1")
    y = _relu(layers.bn(layers.conv(y, filters, 3, f"{name}_conv2", strides), f"{name}_bn2"),
              f"{name}_relu2")
    y = layers.bn(layers.conv(y, 4 * filters, 1, f"{name}_conv3"), f"{name}_bn3", zero_gamma)
    if strides != 1 or x.shape[-1] != 4 * filters:
        x = layers.bn(layers.conv(x, 4 * filters, 1, f"{name}_shortcut", strides),
                      f"{name}_shortcut_bn")
    return _relu(_k().layers.Add(name=f"{name}_add")([x, y]), f"{name}_out")


@gin.configurable
def resnet50(input_shape=(224, 224, 3), num_classes=1000, weight_decay=0.0, seed=None,
             kernel_initializer="he_normal", bn_momentum=0.9,
             zero_init_residual=True) -> keras.Model:
    """ImageNet ResNet-50 v1.5 (25.6M parameters with 1000 classes).

    7x7/2 conv 64, 3x3/2 max pool, bottleneck stages of 3, 4, 6, 3 blocks (64, 128, 256,
    512 filters, x4 out; the 3x3 conv carries the stride), global average pool, logits.
    ``zero_init_residual`` (the RigL/TPU reference's default) starts each block's last
    BN scale at 0.
    """
    layers = _Layers(kernel_initializer, weight_decay, seed, bn_momentum)
    inputs = _k().Input(input_shape, name="image")
    x = _relu(layers.bn(layers.conv(inputs, 64, 7, "conv1", strides=2), "bn1"), "relu1")
    x = _k().layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = _k().layers.MaxPool2D(3, strides=2, name="pool1")(x)
    for stage, (filters, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)),
                                              start=1):
        for block in range(1, blocks + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _bottleneck(layers, x, filters, strides, f"stage{stage}_block{block}",
                            zero_init_residual)
    return _k().Model(inputs, _head(layers, x, num_classes), name="resnet50")


_MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                 (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


@gin.configurable
def mobilenet_v1(input_shape=(224, 224, 3), num_classes=1000, weight_decay=0.0, seed=None,
                 kernel_initializer="he_normal", bn_momentum=0.9, width_multiplier=1.0,
                 dropout=0.0) -> keras.Model:
    """MobileNet v1 (Howard et al. 2017; 4.2M parameters at width 1.0, 1000 classes).

    3x3/2 conv 32, then 13 depthwise-separable blocks (3x3 DepthwiseConv2D-BN-ReLU,
    1x1 Conv2D-BN-ReLU), global average pool, optional dropout, logits. ReLU (not the
    ReLU6 of Howard et al.) as the RigL reference (``rigl/imagenet_resnet/
    mobilenetv1_model.py``, ``batch_norm_relu``). Filter counts
    are scaled by ``width_multiplier``. tfmot cannot prune DepthwiseConv2D: the layers
    ``block{1..13}_depthwise`` stay dense (as in RigL), list them as dense layers.
    """
    layers = _Layers(kernel_initializer, weight_decay, seed, bn_momentum)
    inputs = _k().Input(input_shape, name="image")
    x = layers.conv(inputs, int(32 * width_multiplier), 3, "conv1", strides=2)
    x = _relu(layers.bn(x, "bn1"), "relu1")
    for i, (filters, strides) in enumerate(_MOBILENET_V1, start=1):
        name = f"block{i}"
        x = layers.depthwise(x, f"{name}_depthwise", strides)
        x = _relu(layers.bn(x, f"{name}_depthwise_bn"), f"{name}_depthwise_relu")
        x = layers.conv(x, int(filters * width_multiplier), 1, f"{name}_pointwise")
        x = _relu(layers.bn(x, f"{name}_pointwise_bn"), f"{name}_pointwise_relu")
    x = _k().layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.dropout(x, dropout, "dropout")
    return _k().Model(inputs, layers.dense(x, num_classes, "logits"), name="mobilenet_v1")


MODELS: Dict[str, Callable[..., keras.Model]] = {
    "lenet_300_100": lenet_300_100,
    "conv2": conv2,
    "conv4": conv4,
    "conv6": conv6,
    "resnet20": resnet20,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "wrn_22_2": wrn_22_2,
    "resnet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
}


def get_model(name: str, input_shape: Sequence[int], num_classes: int, **kw) -> keras.Model:
    """Builds model ``name`` (case-insensitive, "-" taken as "_") with builder options ``kw``.

    Raises:
      ValueError: ``name`` is not in ``MODELS``; the message lists the known names.
    """
    key = str(name).lower().replace("-", "_")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[key](input_shape=tuple(input_shape), num_classes=int(num_classes), **kw)
