"""muLO recipe on digits: small_fc_lopt with its maximal-update option, meta-trained on three MLP widths at once.

Each width is one entry of `task.mixture` (each gets its own batch of `num_tasks` tasks), and
every entry is the muP task (`mup=True`: readout initialised with variance 1/fan_in^2) that the
optimizer's 1/fan_in step scaling expects. scikit-learn's bundled 8x8 digits: no data files.
Held-out evaluation runs on the first entry (width 32); try the result on wider MLPs with
`lopt-evaluate --family mlp_image --family-kwargs '{"dataset": "digits", "hidden": [512, 512], "mup": true}'`.
"""

import ml_collections

from meta_train.config import digits_mlp_experiment

WIDTHS = (32, 64, 128)


def get_config():
    # step_mult 1e-2 as in the released muLO weights
    config = digits_mlp_experiment("small_fc_lopt", hidden_sizes=(32, 32), step_mult=1e-2, exp_mult=1e-3, mup=True)
    config.task.kwargs = ml_collections.ConfigDict()
    config.task.mixture = ml_collections.ConfigDict({
        f"width_{width}": {
            "family": "mlp_image",
            "kwargs": {"dataset": "digits", "hidden": (width, width), "image_size": 8, "batch_size": 128, "mup": True},
        }
        for width in WIDTHS
    })
    config.meta_train.num_tasks = 4
    config.meta_train.parallel = "shard_map"
    config.meta_train.host_devices = -1
    config.meta_train.task_map = "map"
    config.meta_train.meta_lr_schedule.name = "cosine"
    config.meta_train.meta_lr_schedule.kwargs.decay_steps = config.meta_train.num_steps
    return config
