"""feature_lopt reading the finance family's domain vector (asset class one-hot and log volatility,
tasks.finance.DOMAIN_FEATURES) beside its gradient features, meta-trained with PES on volatility forecasting.

The default market is `synthetic` (GARCH series, no files); on real data set
`--config.task.kwargs.market=sp500` (or fx, indices, all) and the data folder. In a plain optax
loop, which passes no `domain_features`, the domain inputs read zeros.
"""

from meta_train.config import base_config
from tasks.finance import DOMAIN_FEATURES


def get_config():
    config = base_config()
    config.task.family = "finance"
    config.task.kwargs.market = "synthetic"
    config.task.kwargs.target = "volatility"
    config.task.kwargs.hidden = (32,)
    config.task.kwargs.batch_size = 64
    config.optimizer.name = "feature_lopt"
    config.optimizer.kwargs.features = ("gradient", "parameter", "momenta", "time", "domain")
    config.optimizer.kwargs.domain_width = len(DOMAIN_FEATURES)
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
