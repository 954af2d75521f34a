"""The few-shot worked example: a 2-layer, 20-unit LSTM reading each parameter's gradient and the loss
learns to train a 784-64-5 MLP in 5 inner steps on 5-way 1-shot MNIST episodes.

Meta-training episodes use digits 0-4 only (from MNIST's train split), so digits 5-9 stay held out
for meta-testing (scripts/bench_few_shot.py builds those episodes from the test split). The
estimator is truncated backprop with a truncation as long as the inner run (5 steps) and the
horizon not staggered, so every meta-gradient is the exact gradient of whole episodes' query loss
(the mean over the 5 inner steps of loss / log 5); meta-optimizer Adam at 1e-3, 4 episodes per
meta-step. Needs `<data_dir>/mnist/`; set task.kwargs.dataset="digits" and task.kwargs.image_size=8 to run
with no files.
"""

from meta_train.config import base_config

TRAIN_CLASSES = (0, 1, 2, 3, 4)
INNER_STEPS = 5


def get_config():
    config = base_config()
    config.task.family = "few_shot"
    config.task.kwargs.dataset = "mnist"
    config.task.kwargs.image_size = 28
    config.task.kwargs.ways = 5
    config.task.kwargs.shots = 1
    config.task.kwargs.queries = 15
    config.task.kwargs.classes = TRAIN_CLASSES
    config.task.kwargs.example_split = "train"
    config.task.kwargs.model = "mlp"
    config.task.kwargs.hidden = (64,)
    config.task.kwargs.activations = ("relu",)
    config.task.kwargs.min_init_scale = 1.0
    config.task.kwargs.max_init_scale = 1.0
    config.optimizer.name = "l2l_lstm"
    config.optimizer.kwargs.hidden_size = 20
    config.optimizer.kwargs.num_layers = 2
    config.optimizer.kwargs.loss_input = True
    config.meta_train.meta_loss = "valid"
    config.meta_train.num_tasks = 4
    config.meta_train.estimator.name = "tbptt"
    config.meta_train.estimator.kwargs.trunc_length = INNER_STEPS
    config.meta_train.horizon.name = "constant"
    config.meta_train.horizon.kwargs.length = INNER_STEPS
    config.meta_train.horizon.kwargs.stagger = False
    config.meta_train.meta_learning_rate = 1e-3
    config.meta_train.num_steps = 2000
    config.checkpoint.every = 100
    config.eval.enabled = False
    return config
