"""Adam with learned per-tensor multipliers (adam_multiplier) meta-trained with PES on daily refits of a
volatility forecaster: configs/finance_daily.py's benchmark with another learned optimizer.

adam_multiplier keeps Adam's update and predicts, per tensor and step, multipliers of its learning
rate and beta logits from tensor statistics and the fraction of the refit done (lopt/learned_adam.py).
Its base learning rate (meta-learned too) starts at 0.1, the rate walk-forward tuning picks for Adam on
these refits from scratch; the multiplier network starts at zero, so before meta-training it is Adam at
that rate.
"""

from pathlib import Path

import ml_collections

from meta_train.config import load_config


def get_config():
    config = load_config(Path(__file__).with_name("finance_daily.py"))
    config.optimizer.name = "adam_multiplier"
    config.optimizer.kwargs = ml_collections.ConfigDict({"hidden_sizes": (16,), "learning_rate": 0.1})
    return config
