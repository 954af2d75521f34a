"""The generalist: a Celo2-style learned rule meta-trained on Celo2's task distribution, with this project's data.

Four 8x8 image-MLP families with one hidden layer of 32 and batch 64 (Celo2's meta-training
tasks): MNIST, Fashion-MNIST, CIFAR-10 grey, and scikit-learn's digits in place of SVHN grey.
Every task is reparameterised by one global scale (Celo's augmentation, the level Celo2 uses),
log-uniform in one of 1e-3..1e3, 1e-2..1e2, 1e-1..10. PES with truncations of 50 steps and
log-uniform inner horizons of 100..2,000 steps; the rule is Celo2 with Newton-Schulz
orthogonalised matrix updates and an Adam branch for biases, scaled by a constant learning rate
of 1e-3 during meta-training (the user's schedule replaces it in use).

Each family runs 2 tasks per meta-step, 8 in all as in Celo2, split over one XLA device per
core. Needs the data folder (`--config.data_dir` or LOPT_DATA_DIR) with mnist/,
fashion_mnist/ and cifar10/. Meant to run for hours:

    lopt-meta-train --config configs/generalist.py --workdir runs/generalist --max-minutes 100

progress on the bar, checkpoints every 250 meta-steps, `meta_loss.png` redrawn at each, and
the same command resumes bit for bit.
"""

import ml_collections

from meta_train.config import base_config

DATASETS = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10_grey": "cifar10_grey", "digits": "digits"}


def get_config():
    config = base_config()
    config.task.mixture = ml_collections.ConfigDict({
        name: {"family": "mlp_image",
               "kwargs": {"dataset": dataset, "hidden": (32,), "image_size": 8, "batch_size": 64}}
        for name, dataset in DATASETS.items()
    })
    config.task.reparameterize.levels = ("global",)
    config.optimizer.name = "celo2"
    config.optimizer.kwargs = ml_collections.ConfigDict({"learning_rate": 1e-3, "orthogonalize": True})
    mt = config.meta_train
    mt.num_tasks = 2
    mt.estimator.kwargs.trunc_length = 50
    mt.estimator.kwargs.std = 0.01
    mt.horizon.name = "log_uniform"
    mt.horizon.kwargs.low = 100
    mt.horizon.kwargs.high = 2000
    mt.meta_learning_rate = 3e-4
    mt.meta_lr_schedule.name = "cosine"
    mt.meta_lr_schedule.kwargs.decay_steps = 30_000
    mt.num_steps = 30_000
    mt.parallel = "shard_map"
    mt.host_devices = -1
    mt.task_map = "map"
    config.checkpoint.every = 250
    config.log_every = 25
    # judged on tasks outside its training distribution: `lopt-evaluate --suite heldout` and bench_dropin
    config.eval.enabled = False
    return config
