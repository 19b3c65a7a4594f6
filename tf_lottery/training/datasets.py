"""Input pipelines: batched ``(image float32 (B, H, W, C), label int32 (B,))`` datasets.

``mnist``, ``cifar10``, ``cifar100`` and ``imagenet2012`` come from
tensorflow_datasets and are never downloaded implicitly: when the prepared data is
missing, ``get_dataset`` raises ``DatasetNotPreparedError`` saying how to prepare
it. Two datasets need no download: ``digits`` (scikit-learn's 1,797 real 8x8
handwritten digits, a fixed stratified 70/30 split) and ``synthetic`` (seeded
random tensors of any shape, for benchmarks only).

Preprocessing follows the papers:
  mnist, digits: pixels scaled to [0, 1].
  cifar10/100: train: pad 4, random 32x32 crop, random horizontal flip. Two recipes
    (``get_dataset.cifar_padding`` / ``cifar_standardise``):
    - ``'zero'`` / ``'dataset'`` (default; open_lth, ``datasets/cifar10.py``): zero-pad
      the uint8 image, then scale to [0, 1] and standardise each channel with the
      training set's mean/std (all splits);
    - ``'reflect'`` / ``'per_image'`` (the RigL reference, ``rigl/cifar_resnet/
      data_helper.py``): ``tf.image.per_image_standardization`` of every image (all
      splits), then pad by mirroring the 4 border rows and columns (its ``pad_input``,
      ``tf.pad`` mode ``SYMMETRIC``).
  imagenet2012: train: Inception-style random-resized crop (area 8-100%, aspect
    3/4-4/3) to 224 and random flip; eval: resize the shorter side to 256, center
    crop 224; both standardised with the ImageNet mean/std.

All randomness (file order, shuffle buffer, augmentation) comes from ``seed``:
the same seed gives the same stream of batches; each pass over a dataset gets a
new (but equally reproducible) order and augmentation.
"""
import functools
import re
from typing import NamedTuple, Optional, Tuple

import gin
import numpy as np

from tf_lottery._keras import tf

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_TRAIN_SIZE = 224
IMAGENET_RESIZE = 256

CIFAR_PADDINGS = ("zero", "reflect")
CIFAR_STANDARDISATIONS = ("dataset", "per_image")

SYNTHETIC_DEFAULTS = dict(input_shape=(32, 32, 3), num_classes=10, num_examples=1024)


class DatasetInfo(NamedTuple):
    """What a model needs to know about a dataset: classes, image shape (H, W, C) after
    preprocessing, and the sizes of the training and test splits."""
    num_classes: int
    input_shape: Tuple[int, int, int]
    num_train: int
    num_test: int


_INFO = {
    "mnist": DatasetInfo(10, (28, 28, 1), 60_000, 10_000),
    "cifar10": DatasetInfo(10, (32, 32, 3), 50_000, 10_000),
    "cifar100": DatasetInfo(100, (32, 32, 3), 50_000, 10_000),
    "imagenet2012": DatasetInfo(1000, (IMAGENET_TRAIN_SIZE, IMAGENET_TRAIN_SIZE, 3),
                                1_281_167, 50_000),
    "digits": DatasetInfo(10, (8, 8, 1), 1_257, 540),
}
TFDS_DATASETS = ("mnist", "cifar10", "cifar100", "imagenet2012")
DATASETS = tuple(_INFO) + ("synthetic",)


class DatasetNotPreparedError(ValueError):
    """A tensorflow_datasets dataset has not been downloaded and prepared in data_dir."""


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return name


def dataset_info(name: str, **synthetic_options) -> DatasetInfo:
    """DatasetInfo of ``name``; for ``synthetic``, of the given input_shape/num_classes/
    num_examples (both splits hold num_examples)."""
    if _check_name(name) == "synthetic":
        opts = _synthetic_options(synthetic_options)
        return DatasetInfo(opts["num_classes"], opts["input_shape"], opts["num_examples"],
                           opts["num_examples"])
    if synthetic_options:
        raise TypeError(f"dataset {name!r} takes no options, got {sorted(synthetic_options)}")
    return _INFO[name]


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    return tuple(train_test_split(x, y, test_size=0.3, stratify=y, random_state=0))


def load_digits_arrays():
    """scikit-learn's digits as numpy arrays, split 70/30 stratified (random_state 0).

    Returns:
      ``(x_train, y_train, x_test, y_test)``: images float32 (N, 8, 8, 1) in [0, 1],
      labels int32 (N,) in 0..9; N = 1,257 for train and 540 for test.
    """
    x_train, x_test, y_train, y_test = _digits_arrays()
    return x_train.copy(), y_train.copy(), x_test.copy(), y_test.copy()


def _slice(split: str, n: int) -> slice:
    """``"train"``, ``"train[:90%]"``, ``"train[1131:]"``, ... -> a slice of n examples
    (percent boundaries rounded to the nearest example, as tfds does)."""
    match = re.fullmatch(r"\s*(train|test)\s*(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?\s*",
                         split)
    if not match:
        raise ValueError(f"dataset 'digits' takes splits 'train' and 'test', optionally sliced "
                         f"like 'train[:90%]' or 'train[1131:]', got {split!r}")

    def bound(text):
        if text is None:
            return None
        if text.endswith("%"):
            return int(round(n * int(text[:-1]) / 100))
        return int(text)

    return slice(bound(match.group(2)), bound(match.group(3)))


def digits_split(split: str):
    """The digits arrays of ``split`` (``"train"``, ``"test"`` or a slice of one of them,
    ``"train[:90%]"``, ``"train[90%:]"``): ``(images float32 (N, 8, 8, 1), labels int32)``.

    Slices index the fixed stratified split, whose order is already shuffled, so
    ``"train[90%:]"`` is a random tenth of the training images (126 of 1,257).
    """
    x_train, y_train, x_test, y_test = load_digits_arrays()
    name = split.strip().split("[", 1)[0].strip()
    x, y = (x_train, y_train) if name == "train" else (x_test, y_test)
    part = _slice(split, len(x))
    return x[part], y[part]


def _synthetic_options(options) -> dict:
    unknown = set(options) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown synthetic dataset options {sorted(unknown)}; "
                        f"known: {sorted(SYNTHETIC_DEFAULTS)}")
    opts = {**SYNTHETIC_DEFAULTS, **options}
    opts["input_shape"] = tuple(int(d) for d in opts["input_shape"])
    opts["num_classes"] = int(opts["num_classes"])
    opts["num_examples"] = int(opts["num_examples"])
    return opts


def _synthetic(split: str, seed: int, input_shape, num_classes: int, num_examples: int):
    """num_examples standard-normal images and uniform labels; the test split differs
    from train. Examples are generated on the fly from (seed, split, index)."""
    split_id = {"train": 0, "test": 1}[split]

    def example(index):
        key = tf.stack([tf.constant(2 * seed + split_id, tf.int64), index])
        image_key, label_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        image = tf.random.stateless_normal(input_shape, image_key)
        label = tf.random.stateless_uniform([], label_key, 0, num_classes, dtype=tf.int32)
        return image, label

    return tf.data.Dataset.range(num_examples).map(example)


def _not_prepared(name: str, builder) -> DatasetNotPreparedError:
    root = builder.data_dir_root
    prepare = (f"python -c \"import tensorflow_datasets as tfds; "
               f"tfds.builder('{name}', data_dir='{root}').download_and_prepare()\"")
    if name == "imagenet2012":
        manual = f"{root}/downloads/manual"
        how = ("ImageNet cannot be downloaded automatically. Download ILSVRC2012_img_train.tar "
               "and ILSVRC2012_img_val.tar from https://image-net.org/ (requires an account), "
               f"put both files in {manual}/ and run once:\n  {prepare}")
    else:
        how = f"Prepare it once (this downloads it) with:\n  {prepare}"
    return DatasetNotPreparedError(
        f"tensorflow_datasets dataset {name!r} is not prepared in data_dir {root!r} "
        f"(looked for {builder.data_path}); tf-lottery never downloads implicitly. {how}\n"
        "Or pass data_dir=... (gin: get_dataset.data_dir) pointing at a directory where it is "
        "prepared.")


def _tfds(name: str, split: str, data_dir, shuffle: bool, seed: int, input_context):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    read_config = tfds.ReadConfig(shuffle_seed=seed, input_context=input_context)
    decoders = {"image": tfds.decode.SkipDecoding()} if name == "imagenet2012" else None
    try:
        return builder.as_dataset(split=split, as_supervised=True, shuffle_files=shuffle,
                                  read_config=read_config, decoders=decoders)
    except AssertionError as error:
        if builder.is_prepared():
            raise
        raise _not_prepared(name, builder) from error


def _standardise(image, mean, std):
    """uint8 (H, W, C) -> float32 scaled to [0, 1], minus mean, over std (per channel)."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _cifar(image, seed, training: bool, mean, std, padding: str = "zero",
           standardise: str = "dataset"):
    """One CIFAR image, uint8 (32, 32, 3) -> float32: augmented when ``training``, then
    standardised (see the module doc for the two recipes)."""
    if standardise == "per_image":
        image = tf.image.per_image_standardization(tf.cast(image, tf.float32))
    if training:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        size = tf.shape(image)
        mode = "SYMMETRIC" if padding == "reflect" else "CONSTANT"
        image = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode=mode)
        image = tf.image.stateless_random_crop(image, size, crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if standardise == "per_image":
        return image
    return _standardise(image, mean, std)


def _imagenet_train(encoded, seed):
    """Random-resized crop (Szegedy et al. 2015) of a JPEG to 224x224, random flip."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(encoded), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=crop_seed, min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    image = tf.image.resize(image, [IMAGENET_TRAIN_SIZE, IMAGENET_TRAIN_SIZE])
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _imagenet_eval(encoded):
    """Resize the shorter side of a JPEG to 256, then center crop 224x224."""
    image = tf.io.decode_jpeg(encoded, channels=3)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.round(hw * IMAGENET_RESIZE / tf.reduce_min(hw)), tf.int32)
    image = tf.image.resize(image, new_hw)
    return tf.image.resize_with_crop_or_pad(image, IMAGENET_TRAIN_SIZE, IMAGENET_TRAIN_SIZE)


def _imagenet(encoded, seed, training: bool):
    image = _imagenet_train(encoded, seed) if training else _imagenet_eval(encoded)
    image = tf.clip_by_value(image, 0.0, 255.0) / 255.0
    return ((image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD))


def _preprocess_fn(name: str, training: bool, cifar_padding: str = "zero",
                   cifar_standardise: str = "dataset"):
    """(image, label, per-example seed (2,) int64) -> (image float32, label int32)."""
    if name in ("cifar10", "cifar100"):
        mean, std = ((CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10"
                     else (CIFAR100_MEAN, CIFAR100_STD))

        def image_fn(image, seed):
            return _cifar(image, seed, training, mean, std, cifar_padding, cifar_standardise)
    elif name == "imagenet2012":
        def image_fn(image, seed):
            return _imagenet(image, seed, training)
    elif name == "mnist":
        def image_fn(image, seed):
            return tf.cast(image, tf.float32) / 255.0
    else:
        def image_fn(image, seed):
            return tf.cast(image, tf.float32)

    def preprocess(image, label, seed):
        return image_fn(image, seed), tf.cast(label, tf.int32)

    return preprocess


def _is_training_split(split: str) -> bool:
    return split.strip().startswith("train")


@gin.configurable
def get_dataset(name: str, split: str, batch_size: int, data_dir: Optional[str] = None,
                shuffle: bool = True, seed: int = 0, repeat: bool = False,
                augment: Optional[bool] = None, drop_remainder: bool = False,
                shuffle_buffer: int = 10_000, cache: Optional[bool] = None,
                input_context: Optional[tf.distribute.InputContext] = None,
                cifar_padding: str = "zero", cifar_standardise: str = "dataset",
                **synthetic_options) -> tf.data.Dataset:
    """A batched, prefetched dataset of ``(image float32 (B, H, W, C), label int32 (B,))``.

    Args:
      name: one of ``DATASETS``.
      split: ``"train"`` or ``"test"``; tfds datasets also take any tfds split string
        (``"train[:90%]"``), digits takes slices ``"train[:90%]"``, ``"train[1131:]"``.
        For imagenet2012, ``"test"`` means the labelled ``"validation"`` split.
      batch_size: global batch size (per replica when ``input_context`` is given, it is
        divided by the number of replicas).
      data_dir: tensorflow_datasets data directory (None: tfds's default,
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      shuffle: shuffle files and examples (seeded, reshuffled every pass). Synthetic
        data is i.i.d. already and never shuffled.
      seed: int seeding shuffling and augmentation.
      repeat: repeat forever.
      augment: random training augmentation; None applies it to training splits only.
      drop_remainder: drop the last partial batch (needed for static shapes on TPU).
      shuffle_buffer: examples in the shuffle buffer.
      cache: keep decoded examples in memory; None caches all but imagenet2012 and
        synthetic.
      input_context: from ``strategy.distribute_datasets_from_function``: shard the data
        across input pipelines and batch per replica.
      cifar_padding: ``"zero"`` or ``"reflect"``: how cifar10/100 training images are
        padded before the random crop (see the module doc).
      cifar_standardise: ``"dataset"`` (per-channel mean/std of the training set) or
        ``"per_image"`` (``tf.image.per_image_standardization``), for cifar10/100.
      **synthetic_options: ``input_shape``, ``num_classes``, ``num_examples`` of the
        synthetic dataset (defaults in ``SYNTHETIC_DEFAULTS``).

    Raises:
      ValueError: unknown name or split; DatasetNotPreparedError (a ValueError) when a
        tfds dataset is not prepared in data_dir.
    """
    _check_name(name)
    seed = int(seed)
    if synthetic_options and name != "synthetic":
        raise TypeError(f"dataset {name!r} takes no options {sorted(synthetic_options)}")
    training = _is_training_split(split)
    if name == "synthetic" and split not in ("train", "test"):
        raise ValueError(f"dataset {name!r} has splits 'train' and 'test', got {split!r}")
    if cifar_padding not in CIFAR_PADDINGS:
        raise ValueError(f"cifar_padding must be one of {CIFAR_PADDINGS}, got {cifar_padding!r}")
    if cifar_standardise not in CIFAR_STANDARDISATIONS:
        raise ValueError(f"cifar_standardise must be one of {CIFAR_STANDARDISATIONS}, got "
                         f"{cifar_standardise!r}")

    if name in TFDS_DATASETS:
        tfds_split = "validation" if name == "imagenet2012" and split == "test" else split
        ds = _tfds(name, tfds_split, data_dir, shuffle, seed, input_context)
    else:
        if name == "digits":
            ds = tf.data.Dataset.from_tensor_slices(digits_split(split))
        else:
            ds = _synthetic(split, seed, **_synthetic_options(synthetic_options))
            shuffle = False
        if input_context is not None:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)

    if cache is None:
        cache = name not in ("imagenet2012", "synthetic")
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    preprocess = _preprocess_fn(name, training if augment is None else augment,
                                cifar_padding, cifar_standardise)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).map(
        lambda r: tf.stack([r, tf.constant(seed, tf.int64)]))
    ds = tf.data.Dataset.zip((ds, keys)).map(
        lambda example, key: preprocess(*example, key), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
