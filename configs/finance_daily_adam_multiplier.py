"""Adam with learned per-tensor multipliers (adam_multiplier) meta-trained with PES on daily refits of a
volatility forecaster: configs/finance_daily.py's benchmark with another learned optimizer.

adam_multiplier keeps Adam's update and predicts, per tensor and step, multipliers of its learning
rate and beta logits from tensor statistics and the fraction of the refit done (lopt/learned_adam.py).
Its base learning rate (meta-learned too) starts at 0.1, the rate walk-forward tuning picks for Adam on
these refits from scratch; the multiplier network starts at zero, so before meta-training it is Adam at
that rate.
"""

import importlib.util
from pathlib import Path

import ml_collections

_spec = importlib.util.spec_from_file_location("finance_daily_config", Path(__file__).with_name("finance_daily.py"))
_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_benchmark)


def get_config():
    config = _benchmark.get_config()
    config.optimizer.name = "adam_multiplier"
    config.optimizer.kwargs = ml_collections.ConfigDict({"hidden_sizes": (16,), "learning_rate": 0.1})
    return config
