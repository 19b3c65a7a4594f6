"""Model builders: parameter counts against the papers, registry, seeding, prunability."""
import numpy as np
import pytest

from tf_lottery._keras import keras
from tf_lottery.training import models
from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (
    PruneRegistry)

MNIST, CIFAR, IMAGENET = (28, 28, 1), (32, 32, 3), (224, 224, 3)

# name -> (input shape, classes, expected count_params(), relative tolerance, source).
# count_params() includes BatchNorm moving statistics (non-trainable).
EXPECTED = {
    # 784*300+300 + 300*100+100 + 100*10+10; Frankle & Carbin 2019, Figure 2.
    "lenet_300_100": (MNIST, 10, 266_610, 0.0, "Frankle & Carbin 2019 Fig. 2"),
    # Frankle & Carbin 2019 Fig. 2: 4.3M / 2.4M weights.
    "conv2": (CIFAR, 10, 4_300_000, 0.01, "Frankle & Carbin 2019 Fig. 2: 4.3M"),
    "conv4": (CIFAR, 10, 2_400_000, 0.015, "Frankle & Carbin 2019 Fig. 2: 2.4M"),
    # Fig. 2 of Frankle & Carbin prints 1.7M for Conv-6, but its own layer list
    # (64,64,P,128,128,P,256,256,P, FC 256,256,10; 4x4x256 into FC1) gives 2.26M, as
    # Ramanujan et al. 2020 (Table 1: 2.3M) and their released code also count.
    "conv6": (CIFAR, 10, 2_262_602, 0.01, "Conv-6 layer list; Ramanujan et al. 2020: 2.3M"),
    # 272,474 trainable parameters, as open_lth's cifar_resnet_20 (1x1 projection
    # shortcuts); Frankle & Carbin 2019's Fig. 2 table rounds its "Resnet-18" to 271K.
    "resnet20": (CIFAR, 10, 272_474 + 1_568, 0.0, "open_lth cifar_resnet_20: 272,474"),
    # open_lth cifar_vgg_16 (conv bias, BatchNorm): 14.7M (Frankle et al. 2020, Table 1).
    "vgg16": (CIFAR, 10, 14_728_266 + 8_448, 0.0, "open_lth cifar_vgg_16: 14.7M"),
    # Liu et al. 2019 (Rethinking the value of network pruning), Table: 20.04M.
    "vgg19": (CIFAR, 10, 20_040_000, 0.01, "Liu et al. 2019: 20.04M"),
    # Zagoruyko & Komodakis 2016 WRN-22-2 / Evci et al. 2020 (RigL): ~1.1M.
    "wrn_22_2": (CIFAR, 10, 1_100_000, 0.02, "WRN-22-2 ~1.1M"),
    # He et al. 2016, torchvision/TF ResNet-50: 25.6M (25,557,032 trainable).
    "resnet50": (IMAGENET, 1000, 25_600_000, 0.01, "ResNet-50: 25.6M"),
    # Howard et al. 2017, Table 8: 4.2M (Keras applications: 4,253,864 total).
    "mobilenet_v1": (IMAGENET, 1000, 4_230_000, 0.01, "MobileNet v1 1.0: 4.2M"),
}


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def built():
    return {name: models.get_model(name, shape, classes)
            for name, (shape, classes, *_ ) in EXPECTED.items()}


def test_registry_covers_expected():
    assert set(models.MODELS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_count(built, name):
    shape, classes, expected, tolerance, source = EXPECTED[name]
    model = built[name]
    assert model.output_shape == (None, classes)
    count = model.count_params()
    assert abs(count - expected) <= tolerance * expected, (name, count, expected, source)


def test_exact_trainable_counts(built):
    # Exact architecture checks (trainable parameters) against reference implementations.
    assert _trainable(built["resnet20"]) == 272_474      # open_lth cifar_resnet_20
    assert _trainable(built["vgg16"]) == 14_728_266      # open_lth cifar_vgg_16
    assert _trainable(built["vgg19"]) == 20_035_018      # Liu et al. 2019 VGG-19 (CIFAR)
    assert _trainable(built["resnet50"]) == 25_557_032   # torchvision resnet50
    assert _trainable(built["mobilenet_v1"]) == 4_231_976  # Keras applications MobileNet
    assert built["vgg19"].get_layer("conv1").kernel.shape.num_elements() == 1_728
    assert built["vgg19"].get_layer("conv16").kernel.shape.num_elements() == 2_359_296


def test_layers_are_exact_builtin_classes_and_prunable(built):
    builtin = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
               keras.layers.BatchNormalization)
    for name, model in built.items():
        for layer in model.layers:
            if layer.weights:
                assert type(layer) in builtin, (name, layer.name, type(layer))
            if type(layer) in (keras.layers.Dense, keras.layers.Conv2D):
                assert PruneRegistry.supports(layer), (name, layer.name)
        assert model.get_layer("logits").units == EXPECTED[name][1]


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unknown model 'resnet1000'.*lenet_300_100.*wrn_22_2"):
        models.get_model("resnet1000", CIFAR, 10)


def test_name_is_normalised():
    assert models.get_model("LeNet-300-100", MNIST, 10).name == "lenet_300_100"


def test_seed_gives_reproducible_distinct_initial_weights():
    a = models.resnet20(seed=3)
    b = models.resnet20(seed=3)
    c = models.resnet20(seed=4)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    k1 = a.get_layer("stage1_block1_conv2").kernel.numpy()
    k2 = a.get_layer("stage1_block2_conv2").kernel.numpy()
    assert not np.array_equal(k1, k2)  # same shape, own seed per layer
    assert not np.array_equal(k1, c.get_layer("stage1_block1_conv2").kernel.numpy())


def test_weight_decay_adds_l2_losses_in_sgd_convention():
    model = models.lenet_300_100(weight_decay=1e-4, seed=0)
    assert len(model.losses) == 3  # fc1, fc2, logits kernels
    kernel = model.get_layer("fc1").kernel.numpy()
    expected = 0.5 * 1e-4 * np.sum(kernel ** 2)
    np.testing.assert_allclose(model.get_layer("fc1").losses[0].numpy(), expected, rtol=1e-5)
    assert not models.lenet_300_100().losses


def test_activations_and_dropout_follow_the_references(built):
    # RigL's MobileNet-v1 (rigl/imagenet_resnet/mobilenetv1_model.py) uses ReLU, not ReLU6.
    relus = [l for l in built["mobilenet_v1"].layers if isinstance(l, keras.layers.ReLU)]
    assert len(relus) == 27 and all(l.max_value is None for l in relus)
    # RigL's WRN (rigl/cifar_resnet/resnet_model.py, droprate=0.3): one Dropout between
    # the two 3x3 convs of each of the 9 blocks.
    model = built["wrn_22_2"]
    drops = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert [(l.name, l.rate) for l in drops] == [
        (f"group{g}_block{b}_dropout", 0.3) for g in (1, 2, 3) for b in (1, 2, 3)]
    for layer in drops:
        block = layer.name[:-len("_dropout")]
        assert layer.input.node.layer.name == f"{block}_relu2"
        assert model.get_layer(f"{block}_conv2").input.node.layer is layer
    assert not [l for l in models.wrn_22_2(dropout=0.0).layers
                if isinstance(l, keras.layers.Dropout)]


def test_forward_pass_small_models():
    x = np.zeros((2,) + CIFAR, np.float32)
    for name in ("conv2", "resnet20", "wrn_22_2"):
        y = models.get_model(name, CIFAR, 10, seed=0)(x, training=False)
        assert y.shape == (2, 10)


def test_gin_binds_builder_options():
    import gin
    try:
        gin.parse_config(["lenet_300_100.weight_decay = 1e-3"])
        assert len(models.get_model("lenet_300_100", MNIST, 10).losses) == 3
    finally:
        gin.clear_config()
