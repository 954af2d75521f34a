"""feature_lopt (a per-parameter MLP over a chosen list of named input features) meta-trained with PES on small
CNNs classifying 8x8 digits (scikit-learn's bundled data, no files needed).

Choose the inputs with `config.optimizer.kwargs.features`, e.g. on the command line
`--config.optimizer.kwargs.features="('gradient','parameter','momenta','time','log_abs','secant')"`.
Feature names (lopt/feature_sets.py has each one's definition, width and state):
per parameter `gradient`, `parameter`, `momenta`, `direction`, `log_abs`, `variance`,
`hessian_diag` (Hutchinson, computed by the unroll with one Hessian-vector product), `secant`;
global `time`, `fraction`, `loss_progress`, `domain` (the task's domain vector, needs
`domain_width`; configs/feature_lopt_finance.py). Settings some features read, in
`config.optimizer.kwargs`: `momentum_decays`, `time_scales`, `variance_window`, `curvature_decay`,
`secant_delta`, `domain_width`. scripts/bench_features.py compares feature sets on this config.
"""

from meta_train.config import base_config


def get_config():
    config = base_config()
    config.task.family = "cnn_image"
    config.task.kwargs.dataset = "digits"
    config.task.kwargs.image_size = 8
    config.task.kwargs.channels = (8, 16)
    config.task.kwargs.kernel_size = 3
    config.task.kwargs.pooling = "avg"
    config.task.kwargs.batch_size = 32
    config.optimizer.name = "feature_lopt"
    config.optimizer.kwargs.features = ("gradient", "parameter", "momenta", "time")
    config.optimizer.kwargs.hidden_sizes = (32, 32)
    config.optimizer.kwargs.step_mult = 1e-2
    config.optimizer.kwargs.exp_mult = 1e-3
    config.meta_train.num_tasks = 8
    config.meta_train.estimator.kwargs.trunc_length = 20
    config.meta_train.estimator.kwargs.std = 0.01
    config.meta_train.horizon.kwargs.length = 200
    config.meta_train.meta_learning_rate = 3e-3
    config.meta_train.meta_lr_schedule.name = "cosine"
    config.meta_train.num_steps = 1000
    config.meta_train.meta_lr_schedule.kwargs.decay_steps = config.meta_train.num_steps
    config.meta_train.parallel = "shard_map"
    config.meta_train.host_devices = -1
    config.meta_train.task_map = "map"
    config.xla_cpu_loop_unrolling = False
    config.checkpoint.every = 100
    config.eval.num_tasks, config.eval.num_steps = 8, 200
    return config
