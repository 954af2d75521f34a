"""Deprecated path: moved to meta_train.evaluation.cli (this one works for one release, with a warning)."""

from meta_train.deprecated import forwarding_getattr

__getattr__ = forwarding_getattr(__name__, ['meta_train.evaluation.cli'])
