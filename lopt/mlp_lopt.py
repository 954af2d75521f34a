"""Deprecated module: small_fc_lopt lives in lopt.small_fc_lopt, as SmallFcLOpt."""

import warnings

from lopt.small_fc_lopt import *  # noqa: F401,F403
from lopt.small_fc_lopt import SmallFcLOpt as MLPLOpt  # noqa: F401
from lopt.small_fc_lopt import SmallFcLOptState as MLPLOptState  # noqa: F401
from lopt.small_fc_lopt import input_normalization_factors as second_moment_factors  # noqa: F401

warnings.warn("lopt.mlp_lopt is deprecated; use lopt.small_fc_lopt (MLPLOpt is now SmallFcLOpt)",
              DeprecationWarning, stacklevel=2)
