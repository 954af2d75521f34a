"""small_fc_lopt meta-trained with PES on small CNNs classifying 8x8 CIFAR-10 (needs data)."""

from meta_train.config import base_config


def get_config():
    config = base_config()
    config.task.family = "cnn_image"
    config.task.kwargs.dataset = "cifar10"  # or "tfds:cifar10" (prepared TFDS data), "mnist", ...
    config.task.kwargs.image_size = 8
    config.task.kwargs.channels = (16, 32)
    config.task.kwargs.kernel_size = 3
    config.task.kwargs.pooling = "avg"
    config.task.kwargs.batch_size = 64
    config.task.kwargs.tfds_data_dir = None  # for dataset="tfds:NAME"; None: $TFDS_DATA_DIR
    config.optimizer.name = "small_fc_lopt"
    config.optimizer.kwargs.hidden_sizes = (32, 32)
    config.optimizer.kwargs.step_mult = 1e-2
    config.optimizer.kwargs.exp_mult = 1e-3
    config.meta_train.num_tasks = 8
    config.meta_train.estimator.kwargs.trunc_length = 20
    config.meta_train.estimator.kwargs.std = 0.01
    config.meta_train.horizon.name = "log_uniform"
    config.meta_train.horizon.kwargs.low = 100
    config.meta_train.horizon.kwargs.high = 1000
    config.meta_train.meta_learning_rate = 1e-3
    config.meta_train.num_steps = 5000
    config.checkpoint.every = 250
    config.eval.num_tasks = 8
    config.eval.num_steps = 500
    return config
