"""The Keras 3 models the Keras 3 benchmarks time (import after Keras is loaded with its
backend): LeNet-300-100 on MNIST-shaped inputs and a CIFAR-shaped ResNet-20."""
import keras

L = keras.layers

#: name -> (builder, input shape)
SHAPES = {}


def lenet():
    """784-300-100-10, ReLU."""
    inputs = keras.Input((784,))
    x = L.Dense(300, activation="relu", name="fc1")(inputs)
    x = L.Dense(100, activation="relu", name="fc2")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


def resnet20():
    """ResNet-20 (He et al. 2016) for 32x32x3 inputs, 10 classes, batch normalisation."""
    def conv_bn(x, filters, kernel, strides, name):
        x = L.Conv2D(filters, kernel, strides, padding="same", use_bias=False,
                     name=f"{name}_conv")(x)
        return L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)

    inputs = keras.Input((32, 32, 3))
    x = L.ReLU()(conv_bn(inputs, 16, 3, 1, "stem"))
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, 4):
            strides = 2 if stage > 1 and block == 1 else 1
            name = f"s{stage}b{block}"
            y = L.ReLU()(conv_bn(x, filters, 3, strides, f"{name}_1"))
            y = conv_bn(y, filters, 3, 1, f"{name}_2")
            if strides != 1 or x.shape[-1] != filters:
                x = conv_bn(x, filters, 1, strides, f"{name}_short")
            x = L.ReLU()(L.Add()([x, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


SHAPES.update(lenet=(lenet, (784,)), resnet20=(resnet20, (32, 32, 3)))
