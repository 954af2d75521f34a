"""Quickstart: meta-train small_fc_lopt with PES on 8x8 digits MLPs (scikit-learn's bundled data), then evaluate.

Runs in a few minutes on 2 CPU cores and needs no data files. The CPU is split into one XLA
device per core (`host_devices=-1`) and the tasks are spread over them with shard_map: on a
CPU this meta-trains about twice as fast as one device (BENCHMARKS.md, "host devices").
"""

from meta_train.config import digits_mlp_experiment


def get_config():
    # step_mult 1e-2 as in the released muLO weights; with 1e-3 meta-training was far slower here
    config = digits_mlp_experiment("small_fc_lopt", hidden_sizes=(32, 32), step_mult=1e-2, exp_mult=1e-3)
    config.meta_train.parallel = "shard_map"
    config.meta_train.host_devices = -1
    config.meta_train.task_map = "map"
    # the meta-learning rate cosine-decays to a tenth over the run; the last meta-params are what is
    # exported and evaluated, and over two seeds each the decayed runs ended ahead (BENCHMARKS.md)
    config.meta_train.meta_lr_schedule.name = "cosine"
    config.meta_train.meta_lr_schedule.kwargs.decay_steps = config.meta_train.num_steps
    # small tasks: the meta-step compiles 0.3-0.8 s faster without LLVM's loop unrolling and runs as fast
    config.xla_cpu_loop_unrolling = False
    return config
