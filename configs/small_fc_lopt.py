"""The real experiment: small_fc_lopt meta-trained with PES on the mlp_image family, log-uniform horizons."""

from meta_train.config import base_config


def get_config():
    config = base_config()
    config.task.family = "mlp_image"
    config.task.kwargs.dataset = "fashion_mnist"
    config.task.kwargs.hidden = (32, 32)
    config.task.kwargs.image_size = 8
    config.task.kwargs.batch_size = 128
    config.optimizer.name = "small_fc_lopt"
    config.optimizer.kwargs.hidden_sizes = (32, 32)
    config.optimizer.kwargs.step_mult = 1e-3
    config.optimizer.kwargs.exp_mult = 1e-3
    config.meta_train.num_tasks = 8
    config.meta_train.estimator.kwargs.trunc_length = 50
    config.meta_train.estimator.kwargs.std = 0.01
    config.meta_train.horizon.name = "log_uniform"
    config.meta_train.horizon.kwargs.low = 100
    config.meta_train.horizon.kwargs.high = 2000
    config.meta_train.meta_learning_rate = 1e-3
    config.meta_train.num_steps = 20_000
    config.checkpoint.every = 500
    config.eval.num_tasks = 16
    config.eval.num_steps = 1000
    return config
