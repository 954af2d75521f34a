"""lopt.torch: learned optimizers trained with lopt, as PyTorch `torch.optim.Optimizer`s matching the JAX update.

    import lopt.torch
    optimizer = lopt.torch.load("small_fc_lopt_fmnist8", model.parameters())
    optimizer = lopt.torch.load("runs/generalist/optimizer.lopt", model.named_parameters(),
                                adam_regex=r"bias$", lr=1e-3)

`load` reads an export file (or a shipped optimizer's name) without pickle and without JAX.
Supported architectures: small_fc_lopt ("small_fc_lopt", formerly "mlp"; with `mup`) and Celo2 ("celo2"). Each parameter
is updated as the JAX rule would update the corresponding JAX array; see lopt.torch.layout for
how PyTorch's `[out, in, *kernel]` weights map to JAX's `[*kernel, in, out]`. Needs the
`torch` extra: `pip install -e ".[torch]"`.
"""

from lopt.torch.base import LearnedRuleOptimizer
from lopt.torch.celo2 import Celo2
from lopt.torch.layout import LAYOUTS, from_jax_layout, jax_shape, to_jax_layout
from lopt.torch.loading import ARCHITECTURES, UnsupportedArchitectureError, group_settings, load, resolve
from lopt.torch.small_fc_lopt import SmallFCLOpt

__all__ = ["ARCHITECTURES", "Celo2", "LAYOUTS", "LearnedRuleOptimizer", "SmallFCLOpt", "UnsupportedArchitectureError",
           "from_jax_layout", "group_settings", "jax_shape", "load", "resolve", "to_jax_layout"]
