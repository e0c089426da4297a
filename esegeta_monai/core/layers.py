"""The layers of a network with their output shapes, to pick one for a CAM or layer method.

Example:
    >>> import torch
    >>> from esegeta_monai.core.layers import layer_table
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
    >>> [(row["name"], row["type"], row["output_shape"]) for row in layer_table(net, torch.zeros(1, 1, 8, 8))]
    [('0', 'Conv2d', (1, 4, 8, 8)), ('1', 'ReLU', (1, 4, 8, 8))]
"""

from __future__ import annotations

import torch

__all__ = ["layer_table"]


def layer_table(network: torch.nn.Module, example: torch.Tensor) -> list[dict]:
    """One row per named sub-module that runs on ``example``: name, type, output shape."""
    rows: dict[str, dict] = {}
    handles = []
    for name, module in network.named_modules():
        if not name:
            continue

        def hook(_module, _inputs, output, name=name, module=module):
            tensor = output[0] if isinstance(output, (tuple, list)) and output else output
            if torch.is_tensor(tensor) and name not in rows:
                rows[name] = {"name": name, "type": type(module).__name__, "output_shape": tuple(tensor.shape)}

        handles.append(module.register_forward_hook(hook))
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network(example)
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    order = [name for name, _ in network.named_modules() if name in rows]
    return [rows[name] for name in order]
