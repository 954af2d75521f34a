"""small_fc_lopt meta-trained with PES on character-level transformer LMs of tiny Shakespeare.

Reads `<data_dir>/tinyshakespeare/input.txt`. For the TFDS copy instead (prepared ArrayRecord
data; never downloads unless asked): --config.task.kwargs.dataset=tfds:tiny_shakespeare, or
tfds:lm1b with --config.task.kwargs.max_chars=2000000 (byte-level tokens).
"""

from meta_train.config import base_config


def get_config():
    config = base_config()
    config.task.family = "transformer_lm"
    config.task.kwargs.dataset = "tiny_shakespeare"
    config.task.kwargs.width = 64
    config.task.kwargs.depth = 2
    config.task.kwargs.heads = 4
    config.task.kwargs.seq_len = 64
    config.task.kwargs.batch_size = 32
    config.task.kwargs.max_dropout = 0.0  # dropout-free; > 0 samples a dropout rate per task
    config.task.kwargs.tfds_data_dir = None  # for dataset="tfds:NAME"; None: $TFDS_DATA_DIR
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
    config.meta_train.num_steps = 5000
    config.checkpoint.every = 250
    config.eval.num_tasks = 8
    config.eval.num_steps = 500
    return config
