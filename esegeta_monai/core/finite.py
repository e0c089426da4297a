"""A cheap check that a tensor holds no NaN or Inf.

``torch.isfinite(t).all()`` makes a boolean temporary of ``t``'s size and reads it again; the sum
of a finite tensor is finite unless it overflows, so one reduction answers almost always, and the
exact check runs only when the sum is not finite (a NaN/Inf, or an overflow).

Example:
    >>> import torch
    >>> all_finite(torch.ones(4, 4)), all_finite(torch.tensor([1.0, float("nan")]))
    (True, False)
    >>> all_finite(torch.full((3,), 3e38))  # the sum overflows; the values do not
    True
"""

from __future__ import annotations

import torch

__all__ = ["all_finite"]


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of ``tensor`` is finite (integers always are)."""
    if not tensor.is_floating_point() and not tensor.is_complex():
        return True
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())
