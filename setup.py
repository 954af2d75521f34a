"""Packaging for lopt: the `lopt`, `tasks` and `meta_train` packages and their console scripts.

The metadata stays here (pyproject.toml holds the build backend and the pytest settings) because
tests/test_pretrained.py builds the package from a copy of the three packages and this file alone.

Minimum versions follow the APIs the code calls: `jax.shard_map(..., check_vma=...)` (jax 0.7, whose
own floor is Python 3.11), `optax.tree.norm` (optax 0.2.5), orbax's `CheckpointManagerOptions` with
`multiprocessing_options` and `ocp.args.Standard*` (orbax-checkpoint 0.11). The rest use long-stable
APIs and are left unpinned. evosax (the `evosax` estimator), tensorflow-datasets (`tfds:NAME`
datasets) and tensorboardX (TensorBoard events) are imported only when used, so they are extras;
`test` pulls in every extra the tests use.
"""

from setuptools import find_packages, setup

EVOSAX = ["evosax>=0.3"]  # evosax.algorithms with std_schedule and PersistentES's T/K params (0.3 API)
TFDS = ["tensorflow-datasets>=4.9"]  # tfds.data_source over ArrayRecord, without tensorflow
TORCH = ["torch==2.13.0"]  # lopt.torch; pinned to the CPU build the parity tests were checked against
TENSORBOARD = ["tensorboardX>=2.6"]  # TensorBoard event files without TensorFlow (meta_train.tensorboard)

setup(
    name="lopt",
    version="0.1.0",
    description="Meta-train learned optimizers in JAX and use them as optax transformations.",
    python_requires=">=3.11",
    packages=find_packages(include=["lopt", "lopt.*", "tasks", "tasks.*", "meta_train", "meta_train.*"]),
    package_data={"lopt.pretrained": ["*.lopt"]},
    install_requires=[
        "jax>=0.7",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "chex",
        "flax",
        "ml-collections",
        "ml-dtypes",
        "numpy",
        "scikit-learn",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "evosax": EVOSAX,
        "tfds": TFDS,
        "torch": TORCH,
        "tensorboard": TENSORBOARD,
        "all": EVOSAX + TFDS + TORCH + TENSORBOARD,
        "test": ["pytest", "pytest-xdist", "hypothesis"] + EVOSAX + TFDS + TORCH + TENSORBOARD,
    },
    entry_points={
        "console_scripts": [
            "lopt-meta-train=meta_train.cli:meta_train_main",
            "lopt-export=meta_train.cli:export_main",
            "lopt-evaluate=meta_train.evaluation.cli:main",
            "lopt-import=lopt.published:main",
        ]
    },
)
