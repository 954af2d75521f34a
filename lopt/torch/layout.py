"""Which JAX array a PyTorch parameter corresponds to: the axis mapping between the two layouts.

The learned rules compute per-tensor statistics over particular axes (Celo2 factors its second
moment over a tensor's two largest axes and orthogonalises and normalises over its last two;
small_fc_lopt's maximal-update option divides by the product of all axes but the last), and
those axes are defined on the layout of the JAX model the rule was meta-trained on, where a
dense kernel is `[in, out]` and a convolution kernel `[*kernel, in, out]` (flax, haiku).

PyTorch stores `nn.Linear` and `nn.ConvNd` weights as `[out, in, *kernel]`. The PyTorch
optimizers therefore compute every update on the JAX view of a parameter and map it back, so
that a model whose weights equal a JAX model's (up to this transposition) gets the same update
the JAX optimizer gives that JAX model. The layout is a parameter-group setting:

- "torch" (the default): a tensor of rank >= 2 is `[out, in, *kernel]`, viewed as
  `[*kernel, in, out]`; rank-2 weights are transposed. Vectors and scalars are unchanged.
- "jax": the tensor is already in the JAX layout and is used as it is. Use it for weights that
  PyTorch and JAX store alike, such as `nn.Embedding` (`[num, features]`, as flax's `Embed`),
  for `nn.ConvTransposeNd` weights, and for plain tensors a model multiplies as `x @ w`.
"""

from __future__ import annotations

from typing import Tuple

import torch

LAYOUTS = ("torch", "jax")


def check_layout(layout: str) -> str:
    """Returns `layout` if it is one of LAYOUTS, else raises a one-line ValueError naming them."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return layout


def jax_axes(ndim: int, layout: str) -> Tuple[int, ...]:
    """Returns the permutation that takes a rank-`ndim` tensor in `layout` to its JAX view."""
    if check_layout(layout) == "jax" or ndim < 2:
        return tuple(range(ndim))
    return tuple(range(2, ndim)) + (1, 0)


def jax_shape(shape: Tuple[int, ...], layout: str) -> Tuple[int, ...]:
    """Returns the shape of the JAX array that a tensor of `shape` in `layout` corresponds to."""
    return tuple(shape[axis] for axis in jax_axes(len(shape), layout))


def to_jax_layout(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """Returns the JAX view of `tensor` (a permuted view, no copy): `[out, in, *kernel]` -> `[*kernel, in, out]`."""
    return tensor.permute(jax_axes(tensor.ndim, layout))


def from_jax_layout(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """Returns a JAX-view tensor permuted back to `layout` (a view, no copy); inverse of `to_jax_layout`."""
    axes = jax_axes(tensor.ndim, layout)
    inverse = sorted(range(len(axes)), key=axes.__getitem__)
    return tensor.permute(inverse)


__all__ = ["LAYOUTS", "check_layout", "from_jax_layout", "jax_axes", "jax_shape", "to_jax_layout"]
