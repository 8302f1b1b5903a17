"""The optimiser of the SCORE recipe: Adam with decoupled weight decay, s3prl's (transformers-style) update.

The authors train with s3prl's ``AdamW`` (``s3prl/optimizers.py``), which follows the BERT/transformers
formulation rather than ``torch.optim.AdamW``. Per parameter, at step ``t`` (1-based), with gradient g::

    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    p <- p - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    p <- p - lr * weight_decay * p              (decoupled, after the Adam step)

``eps`` is added to the *uncorrected* ``sqrt(v)``; torch adds it to ``sqrt(v / (1 - b2^t))``. The two
differ by a factor ``sqrt(1 - b2^t)`` in the effective eps: ~30x at step 1 for b2 = 0.999, ~1.3x at
step 1,000. Weight decay uses the parameter as updated by the Adam step (s3prl's order).

Example::

    opt = AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.999), eps=1e-7, weight_decay=0.0)
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay, eps before the bias correction (s3prl's / transformers' update).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (the scheduler scales it).
        betas: ``(b1, b2)`` moment decay rates, each in [0, 1).
        eps: added to ``sqrt(v)`` before the bias correction (s3prl default 1e-7).
        weight_decay: decoupled weight decay ``p <- p (1 - lr wd)``, applied after the Adam step.

    State per parameter: ``step`` (int), ``exp_avg`` and ``exp_avg_sq`` (tensors like the parameter), so
    ``state_dict()`` loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-7, weight_decay: float = 0.0):
        if not lr >= 0:
            raise ValueError(f"AdamW: lr must be >= 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW: betas must be two values in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"AdamW: eps must be >= 0, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW: sparse gradients are not supported; use dense parameters")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)
                step_size = lr * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
                if wd > 0:
                    p.mul_(1.0 - lr * wd)
        return loss
