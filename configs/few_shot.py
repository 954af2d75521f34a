"""small_fc_lopt meta-trained with PES on 5-way 5-shot Fashion-MNIST episodes.

Each task is one episode: the inner optimizer trains on the support set ("train" split of the
task) and the meta-loss is the loss on the query set ("valid" split), hence meta_loss="valid".
Needs `<data_dir>/fashion_mnist/`; set task.kwargs.dataset="digits" to run with no files.
"""

from meta_train.config import base_config


def get_config():
    config = base_config()
    config.task.family = "few_shot"
    config.task.kwargs.dataset = "fashion_mnist"
    config.task.kwargs.image_size = 8
    config.task.kwargs.ways = 5
    config.task.kwargs.shots = 5
    config.task.kwargs.queries = 15
    config.task.kwargs.model = "mlp"
    config.task.kwargs.hidden = (32,)
    config.task.kwargs.tfds_data_dir = None  # for dataset="tfds:NAME"; None: $TFDS_DATA_DIR
    config.optimizer.name = "small_fc_lopt"
    config.optimizer.kwargs.hidden_sizes = (32, 32)
    config.optimizer.kwargs.step_mult = 1e-2
    config.optimizer.kwargs.exp_mult = 1e-3
    config.meta_train.meta_loss = "valid"
    config.meta_train.num_tasks = 8
    config.meta_train.estimator.kwargs.trunc_length = 20
    config.meta_train.estimator.kwargs.std = 0.01
    config.meta_train.horizon.name = "constant"
    config.meta_train.horizon.kwargs.length = 100
    config.meta_train.meta_learning_rate = 1e-3
    config.meta_train.num_steps = 2000
    config.checkpoint.every = 250
    config.eval.num_tasks = 16
    config.eval.num_steps = 100
    return config
