"""small_fc_lopt meta-trained with PES on S&P 500 volatility forecasting (walk-forward splits).

Reads `<data_dir>/finance/sp500_all_stocks_5yr.csv.gz`. Other markets:
--config.task.kwargs.market=fx, indices, all, or synthetic (GARCH, no files); next-day
returns instead of volatility: --config.task.kwargs.target=return.
"""

from meta_train.config import base_config


def get_config():
    config = base_config()
    config.task.family = "finance"
    config.task.kwargs.market = "sp500"
    config.task.kwargs.target = "volatility"
    config.task.kwargs.horizon = 5
    config.task.kwargs.min_window = 5
    config.task.kwargs.max_window = 20
    config.task.kwargs.hidden = (32,)
    config.task.kwargs.batch_size = 64
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
    config.meta_train.num_steps = 2000
    config.checkpoint.every = 250
    config.eval.num_tasks = 16
    config.eval.num_steps = 300
    return config
