"""The learned-optimizer contract and the registry that maps names to optimizer classes."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Optional, Type, Union

import jax
import optax

MetaParams = Any
Array = jax.Array
NumSteps = Optional[Union[int, Array]]


class LearnedOptimizer:
    """A parametric optimizer: meta-parameters in, a plain optax transformation out.

    Subclasses implement `init` and `optimizer`. The constructor arguments of every subclass
    are recorded automatically (`self.config`), so an optimizer can be rebuilt from its
    registry name and config, which is what the export format stores.
    """

    name: str = "learned_optimizer"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original_init = cls.__init__
        signature = inspect.signature(original_init)

        @functools.wraps(original_init)
        def recording_init(self, *args: Any, **init_kwargs: Any) -> None:
            if "_config" not in self.__dict__:
                bound = signature.bind(self, *args, **init_kwargs)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                arguments.pop(next(iter(signature.parameters)))
                object.__setattr__(self, "_config", arguments)
            original_init(self, *args, **init_kwargs)

        cls.__init__ = recording_init

    @property
    def config(self) -> Dict[str, Any]:
        """The constructor arguments this optimizer was built with."""
        return dict(self.__dict__.get("_config", {}))

    def init(self, key: Array) -> MetaParams:
        """Returns initial meta-parameters: a pytree (nested dicts) of float32 arrays."""
        raise NotImplementedError

    def optimizer(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation defined by `meta_params`.

        `meta_params` may be a tracer (under jit, vmap, or an ES perturbation). `num_steps` is
        the length of the inner run when known (an int or a scalar array); optimizers that
        use a training fraction need it.
        """
        raise NotImplementedError

    def trainable_mask(self, meta_params: MetaParams, phase: str = "all") -> Any:
        """Returns a pytree of bools shaped like `meta_params`: which meta-params a meta-training phase changes.

        Every optimizer has the phase "all"; optimizers trained in stages (e.g. Celo) add their own.
        """
        if phase != "all":
            raise LearnedOptimizerError(f"optimizer {self.name!r} has no meta-training phase {phase!r}; it has: all")
        return jax.tree.map(lambda _: True, meta_params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


class LearnedOptimizerError(ValueError):
    """A learned optimizer was asked for by an unknown name or with invalid arguments."""


_REGISTRY: Dict[str, Type[LearnedOptimizer]] = {}


def register(name: str) -> Callable[[Type[LearnedOptimizer]], Type[LearnedOptimizer]]:
    """Class decorator that makes a LearnedOptimizer subclass available as `lopt.get(name)`."""

    def decorator(cls: Type[LearnedOptimizer]) -> Type[LearnedOptimizer]:
        if not (isinstance(cls, type) and issubclass(cls, LearnedOptimizer)):
            raise TypeError(f"@register({name!r}) expects a LearnedOptimizer subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise LearnedOptimizerError(f"a learned optimizer named {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorator


def registered_names() -> list:
    """Returns the sorted names of all registered learned and hand-designed optimizers."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs: Any) -> LearnedOptimizer:
    """Returns the registered optimizer `name` constructed with `kwargs`.

    Raises LearnedOptimizerError naming the valid choices for an unknown name or argument.
    """
    if name not in _REGISTRY:
        raise LearnedOptimizerError(
            f"unknown optimizer {name!r}; registered: {', '.join(registered_names())}"
        )
    cls = _REGISTRY[name]
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not accepts_any:
        valid = [p for p in params if p != "self"]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise LearnedOptimizerError(
                f"optimizer {name!r} got unknown argument(s) {', '.join(unknown)}; "
                f"valid: {', '.join(valid) or '(none)'}"
            )
    return cls(**kwargs)
