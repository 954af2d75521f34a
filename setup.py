"""Packaging for lopt: the `lopt`, `tasks` and `meta_train` packages and their console scripts."""

from setuptools import setup

setup(
    name="lopt",
    version="0.1.0",
    description="Meta-train learned optimizers in JAX and use them as optax transformations.",
    python_requires=">=3.10",
    packages=["lopt", "lopt.pretrained", "lopt.torch", "tasks", "tasks.examples", "meta_train"],
    package_data={"lopt.pretrained": ["*.lopt"]},
    install_requires=[
        "jax>=0.6",
        "flax",
        "optax>=0.2.4",
        "chex",
        "evosax>=0.2",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets",
        "importlib_resources",
        "ml-collections",
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "numpy",
    ],
    extras_require={"test": ["pytest", "hypothesis", "torch==2.13.0"], "torch": ["torch==2.13.0"]},
    entry_points={
        "console_scripts": [
            "lopt-meta-train=meta_train.cli:meta_train_main",
            "lopt-export=meta_train.cli:export_main",
            "lopt-evaluate=meta_train.evaluation_cli:main",
            "lopt-import=lopt.published:main",
        ]
    },
)
