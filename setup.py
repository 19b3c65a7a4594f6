"""tf-lottery: lottery tickets and RigL on TensorFlow Model Optimization pruning."""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

setup(
    name="tf-lottery",
    version="0.1.0",
    description=("Lottery tickets (IMP with rewinding) and RigL dynamic sparse training "
                 "for tf_keras models, on tfmot pruning"),
    long_description=(HERE / "README.md").read_text(encoding="utf-8")
    if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["tf_lottery", "tf_lottery.*"]),
    install_requires=[
        "tensorflow>=2.16",
        "tf_keras",
        "keras>=3.0",
        "tensorflow-model-optimization>=0.8.1",
        "gin-config",
        "tensorflow-datasets",
        "scikit-learn",
        "matplotlib",
        "absl-py",
        "tensorboard",
        "ai-edge-litert>=2.3.0",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "jax"],  # jax: the Keras 3 suite also runs on KERAS_BACKEND=jax
        "jax": ["jax"],
        "torch": ["torch"],  # KERAS_BACKEND=torch (the README's Keras 3 section: what works)
    },
    entry_points={"console_scripts": ["tf-lottery=tf_lottery.cli:main"]},
    license="Apache-2.0",
)
