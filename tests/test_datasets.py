"""Input pipelines: digits, synthetic, tfds (mocked) and the not-prepared error."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_lottery._keras import tf
from tf_lottery.training import datasets


def _first(ds):
    return next(iter(ds))


def test_digits_arrays_split_and_range():
    x_train, y_train, x_test, y_test = datasets.load_digits_arrays()
    assert x_train.shape == (1257, 8, 8, 1) and x_test.shape == (540, 8, 8, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert x_train.min() == 0.0 and x_train.max() == 1.0 and x_test.max() <= 1.0
    totals = np.bincount(np.concatenate([y_train, y_test]), minlength=10)
    assert abs(np.bincount(y_test, minlength=10) - 0.3 * totals).max() <= 1.0
    info = datasets.dataset_info("digits")
    assert (info.num_train, info.num_test, info.input_shape, info.num_classes) == (
        1257, 540, (8, 8, 1), 10)


def test_digits_dataset_matches_arrays_and_is_seeded():
    _, _, x_test, y_test = datasets.load_digits_arrays()
    images, labels = zip(*datasets.get_dataset("digits", "test", 100, shuffle=False))
    np.testing.assert_array_equal(np.concatenate(images), x_test)
    np.testing.assert_array_equal(np.concatenate(labels), y_test)
    assert [i.shape[0] for i in images] == [100] * 5 + [40]

    def labels_of(seed):
        ds = datasets.get_dataset("digits", "train", 64, seed=seed)
        return np.concatenate([y for _, y in ds])

    first = labels_of(1)
    assert first.shape == (1257,)
    np.testing.assert_array_equal(first, labels_of(1))
    assert not np.array_equal(first, labels_of(2))


def test_digits_repeat_and_drop_remainder():
    ds = datasets.get_dataset("digits", "test", 128, repeat=True, drop_remainder=True)
    assert ds.element_spec[0].shape.as_list() == [128, 8, 8, 1]
    assert sum(1 for _ in ds.take(6)) == 6  # more than one pass (540 examples)


def test_synthetic():
    kw = dict(input_shape=(6, 5, 2), num_classes=3, num_examples=10)
    ds = datasets.get_dataset("synthetic", "train", 4, seed=7, **kw)
    images, labels = zip(*ds)
    assert [i.shape for i in images] == [(4, 6, 5, 2), (4, 6, 5, 2), (2, 6, 5, 2)]
    labels = np.concatenate(labels)
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 3
    again = np.concatenate([x for x, _ in datasets.get_dataset("synthetic", "train", 4, seed=7,
                                                              **kw)])
    np.testing.assert_array_equal(np.concatenate(images), again)
    test = _first(datasets.get_dataset("synthetic", "test", 4, seed=7, **kw))[0]
    assert not np.array_equal(test, images[0])
    assert datasets.dataset_info("synthetic", **kw) == (3, (6, 5, 2), 10, 10)
    with pytest.raises(TypeError, match="unknown synthetic"):
        datasets.get_dataset("synthetic", "train", 4, image_size=3)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'.*cifar10"):
        datasets.get_dataset("svhn", "train", 8)
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.dataset_info("svhn")


def test_mnist_mocked(tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        ds = datasets.get_dataset("mnist", "train", 4, data_dir=str(tmp_path))
        images, labels = _first(ds)
    assert images.shape == (4, 28, 28, 1) and images.dtype == tf.float32
    assert labels.shape == (4,) and labels.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    assert datasets.dataset_info("mnist").input_shape == (28, 28, 1)


def test_cifar10_mocked_preprocessing(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        raw = np.stack([x for x, _ in tfds.load("cifar10", split="test", as_supervised=True,
                                                 data_dir=str(tmp_path))])
        test = np.concatenate([x for x, _ in datasets.get_dataset(
            "cifar10", "test", 3, data_dir=str(tmp_path), shuffle=False)])
        train, labels = _first(datasets.get_dataset("cifar10", "train", 6, data_dir=str(tmp_path)))
    assert test.shape == (6, 32, 32, 3) and test.dtype == np.float32
    expected = (raw / 255.0 - np.array(datasets.CIFAR10_MEAN)) / np.array(datasets.CIFAR10_STD)
    np.testing.assert_allclose(test, expected, atol=1e-5)
    assert train.shape == (6, 32, 32, 3) and train.dtype == tf.float32
    assert labels.dtype == tf.int32
    # Training crops/flips: same set of standardised values cannot all match the raw images.
    assert not np.allclose(np.sort(train.numpy(), axis=None), np.sort(expected, axis=None))


def test_imagenet_mocked_shapes(tmp_path):
    with tfds.testing.mock_data(num_examples=2):
        for split in ("train", "test"):
            images, labels = _first(datasets.get_dataset("imagenet2012", split, 2,
                                                         data_dir=str(tmp_path)))
            assert images.shape == (2, 224, 224, 3) and images.dtype == tf.float32
            assert labels.dtype == tf.int32


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012"])
def test_not_prepared_error(tmp_path, name):
    with pytest.raises(datasets.DatasetNotPreparedError) as error:
        datasets.get_dataset(name, "train", 8, data_dir=str(tmp_path))
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert (f"tfds.builder('{name}', data_dir='{tmp_path}').download_and_prepare()"
            in message)
    if name == "imagenet2012":
        assert "ILSVRC2012_img_train.tar" in message
        assert f"{tmp_path}/downloads/manual" in message
    assert not any(tmp_path.iterdir())  # nothing was downloaded or created


def _crop_of(padded, out):
    """The (top, left) of a 32x32 window of ``padded`` equal to ``out`` (or its mirror)."""
    for flip in (False, True):
        target = out[:, ::-1] if flip else out
        for top in range(9):
            for left in range(9):
                if np.allclose(padded[top:top + 32, left:left + 32], target, atol=1e-5):
                    return top, left, flip
    return None


@pytest.mark.parametrize("padding,standardise", [("zero", "dataset"), ("reflect", "per_image")])
def test_cifar_preprocessing_recipes(padding, standardise):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    mean, std = np.array(datasets.CIFAR10_MEAN), np.array(datasets.CIFAR10_STD)
    if standardise == "per_image":
        x = image.astype(np.float64)
        expected = (x - x.mean()) / max(x.std(), 1 / np.sqrt(x.size))
        # RigL's pad_input mirrors the 4 border rows, edge included: numpy's "symmetric".
        padded = np.pad(expected, ((4, 4), (4, 4), (0, 0)), mode="symmetric")
    else:
        expected = (image / 255.0 - mean) / std
        padded = (np.pad(image, ((4, 4), (4, 4), (0, 0))) / 255.0 - mean) / std
    test = datasets._cifar(tf.constant(image), tf.constant([1, 2], tf.int64), False,
                           datasets.CIFAR10_MEAN, datasets.CIFAR10_STD, padding, standardise)
    np.testing.assert_allclose(test.numpy(), expected, atol=1e-5)
    offsets = set()
    for seed in range(12):
        out = datasets._cifar(tf.constant(image), tf.constant([seed, 0], tf.int64), True,
                              datasets.CIFAR10_MEAN, datasets.CIFAR10_STD, padding,
                              standardise).numpy()
        found = _crop_of(padded, out)
        assert found is not None, seed
        offsets.add(found)
    assert len(offsets) > 3  # random crops and flips
    with pytest.raises(ValueError, match="cifar_padding must be one of"):
        datasets.get_dataset("digits", "train", 8, cifar_padding="mirror")
    with pytest.raises(ValueError, match="cifar_standardise must be one of"):
        datasets.get_dataset("digits", "train", 8, cifar_standardise="global")
