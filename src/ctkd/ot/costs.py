"""Cost matrices between two sets of vectors, batched.

Costs are plain tensor functions: ``(B, n, d)`` and ``(B, m, d)`` in, ``(B, n, m)`` out, differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor


def l1_cost(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise L1 distances ``C[b, i, j] = sum_k |x[b, i, k] - y[b, j, k]|``.

    This is the sequence-level cost of MultiLevelOT (Cui et al. 2025, eq. for ``C_ij``) between the
    ranked, truncated top-k probability vectors of teacher position i and student position j.

    Args:
        x: (B, n, d).
        y: (B, m, d).

    Returns:
        (B, n, m) in the dtype of the inputs.
    """
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"l1_cost takes (B, n, d) and (B, m, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] == 0 or y.shape[1] == 0:
        return x.new_zeros(x.shape[0], x.shape[1], y.shape[1]) + 0 * (x.sum() + y.sum())
    return torch.cdist(x, y, p=1.0)
