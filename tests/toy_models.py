"""Toy networks with known answers, shared by tests."""

from __future__ import annotations

import torch


class WeightedSum(torch.nn.Module):
    """A classifier whose logit 1 is Σ w ⊙ x and logit 0 its negative: the contributions are known
    (w ⊙ (x − 0)), and with ``w`` non-zero in a box it scores the image inside that box."""

    def __init__(self, weight):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x):
        score = (x * self.weight).flatten(1).sum(1)
        return torch.stack([-score, score], 1)
