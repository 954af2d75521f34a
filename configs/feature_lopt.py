"""feature_lopt (a per-parameter MLP over a chosen list of named input features) meta-trained with PES on 8x8
digits MLPs (scikit-learn's bundled data, no files needed).

Choose the inputs with `config.optimizer.kwargs.features`, e.g. on the command line
`--config.optimizer.kwargs.features="('gradient','parameter','momenta','time','log_abs','secant')"`.
Feature names (lopt/feature_sets.py has each one's definition, width and state):
per parameter `gradient`, `parameter`, `momenta`, `direction`, `log_abs`, `variance`,
`hessian_diag` (Hutchinson, computed by the unroll with one Hessian-vector product), `secant`;
global `time`, `fraction`, `loss_progress`, `domain` (the task's domain vector, needs
`domain_width`; configs/feature_lopt_finance.py). The settings some features read:
`momentum_decays`, `time_scales`, `variance_window`, `curvature_decay`, `secant_delta`, `domain_width`.
"""

from meta_train.config import digits_mlp_experiment


def get_config():
    config = digits_mlp_experiment(
        "feature_lopt",
        features=("gradient", "parameter", "momenta", "time", "log_abs", "variance"),
        hidden_sizes=(32, 32), step_mult=1e-2, exp_mult=1e-3,
        variance_window=10, curvature_decay=0.9, secant_delta=0.1)
    config.meta_train.meta_lr_schedule.name = "cosine"
    config.meta_train.meta_lr_schedule.kwargs.decay_steps = config.meta_train.num_steps
    return config
