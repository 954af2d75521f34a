"""Meta-train small_fc_lopt with PES on rotated ill-conditioned 10-d quadratics (condition 1..1e4)."""

from meta_train.config import quadratic_experiment


def get_config():
    config = quadratic_experiment("small_fc_lopt", hidden_sizes=(32, 32), step_mult=1e-2)
    return config
