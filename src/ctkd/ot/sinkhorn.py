"""Batched entropic optimal transport with Sinkhorn iterations, in log space.

Knows nothing about language models: it takes a batch of cost matrices and returns plans.

Problem solved for each batch element ``b`` (valid rows ``i``, valid columns ``j``)::

    P* = argmin_P  <P, C>  -  epsilon * H(P)    s.t.  P 1 = a,  P^T 1 = b
    a_i = 1 / n_valid,  b_j = 1 / m_valid        (uniform marginals, each summing to 1)

Iterations follow the paper's order (Cui et al. 2025, Sec. "Sequence level"): start from
``K = exp(-C / epsilon)``, then each iteration rescales the rows to their marginal, then the columns to
theirs. In log space with potentials ``f`` (rows) and ``g`` (columns), ``log P = -C / epsilon + f + g``::

    g = 0
    repeat n_iters:
        f = log a - logsumexp_j(-C / epsilon + g)      # rows now sum to a
        g = log b - logsumexp_i(-C / epsilon + f)      # columns now sum to b (exactly)

so after ``n_iters`` the column sums are exact and the row sums approach ``a``.

The paper normalises rows and columns to sum 1 (a doubly stochastic matrix); for a square n x n problem its
plan is ``n`` times the plan returned here (whose entries sum to 1), and its ``sum(P * C)`` is ``n`` times
``.value``. Uniform marginals summing to 1 are what make rectangular problems (n != m, a teacher and a
student answer of different lengths) well posed.

Padding: ``row_mask`` / ``col_mask`` mark the valid rows and columns of each problem, so problems of different
sizes share one batch. Masked rows and columns neither send nor receive mass: their plan entries are exactly
0 and they do not enter the marginals. Masked entries of the log-kernel hold a large finite negative number
(:data:`MASKED_LOG`) rather than ``-inf``, so a fully masked problem has finite intermediate values and a
NaN-free gradient; its plan and value are 0.

Gradient modes (``grad=``), as in POT's ``ot.solve``:

- ``"autodiff"``: differentiate through every iteration (the paper's and the authors' behaviour). Memory
  and backward time grow with ``n_iters``.
- ``"last_step"``: run ``n_iters - 1`` iterations without a graph, then one differentiable iteration from the
  detached potentials. Cheaper; the gradient is that of the last step only.
- ``"envelope"``: no graph through the iterations at all; ``value = sum(P.detach() * C)``, so
  ``d value / d C = P`` (the envelope-theorem gradient of the transport cost at a fixed plan).

Source: Cuturi 2013 (Sinkhorn distances); log-domain stabilisation as in Peyre & Cuturi 2019,
"Computational Optimal Transport", Sec. 4.4; POT ``ot/bregman/_sinkhorn.py::sinkhorn_log`` (which updates the
columns first, so it agrees with this solver at convergence, not iteration by iteration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

GradMode = Literal["autodiff", "last_step", "envelope"]
GRAD_MODES: tuple[str, ...] = ("autodiff", "last_step", "envelope")

MASKED_LOG = -1.0e30
"""Log-kernel value of masked entries: exp() of it is 0 in float32/64, yet it is finite (no NaN)."""


@dataclass
class SinkhornOutput:
    """Result of :func:`sinkhorn`; its type never depends on a flag.

    Attributes:
        plan: (B, n, m) transport plan; entries of masked rows/columns are 0; sums to 1 per valid problem.
        value: (B,) transport cost ``sum(plan * cost)`` (0 for a problem with no valid row or column).
        f: (B, n) row log-potentials (0 on masked rows).
        g: (B, m) column log-potentials (0 on masked columns).
        row_error: (B,) L1 distance between the plan's row sums and the row marginal (a convergence gauge;
            column sums are exact by construction).
        n_iters: number of iterations run.
    """

    plan: Tensor
    value: Tensor
    f: Tensor
    g: Tensor
    row_error: Tensor
    n_iters: int


def _check(cost: Tensor, epsilon: float, n_iters: int, row_mask: Tensor | None, col_mask: Tensor | None,
           grad: str) -> None:
    if cost.dim() != 3:
        raise ValueError(f"cost must be (B, n, m), got shape {tuple(cost.shape)}; add a batch dimension with cost[None]")
    if not (isinstance(epsilon, (int, float)) and epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if not (isinstance(n_iters, int) and n_iters >= 1):
        raise ValueError(f"n_iters must be an int >= 1, got {n_iters!r}")
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    b, n, m = cost.shape
    for name, mask, shape in (("row_mask", row_mask, (b, n)), ("col_mask", col_mask, (b, m))):
        if mask is not None and tuple(mask.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match cost {tuple(cost.shape)}, got {tuple(mask.shape)}")


def _log_marginal(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """log of the uniform marginal over the True entries of ``mask`` (B, n); 0 where masked (unused)."""
    count = mask.sum(dim=-1, keepdim=True).clamp_min(1).to(dtype)
    return torch.where(mask, -torch.log(count), torch.zeros((), dtype=dtype, device=mask.device))


def sinkhorn(
    cost: Tensor,
    *,
    epsilon: float = 0.1,
    n_iters: int = 20,
    row_mask: Tensor | None = None,
    col_mask: Tensor | None = None,
    grad: GradMode = "autodiff",
) -> SinkhornOutput:
    """Solve a batch of entropic OT problems with uniform marginals (log-domain Sinkhorn).

    Args:
        cost: (B, n, m) cost matrices, any float dtype; computed in float32 (float64 stays float64).
        epsilon: entropic regularisation (the paper's lambda); smaller is closer to exact OT, > 0.
        n_iters: number of row-then-column iterations (the paper's N), >= 1.
        row_mask: (B, n) bool, True on valid rows; None means all valid.
        col_mask: (B, m) bool, True on valid columns; None means all valid.
        grad: gradient mode, one of ``"autodiff"``, ``"last_step"``, ``"envelope"`` (module docstring).

    Returns:
        A :class:`SinkhornOutput` in the compute dtype (float32, or float64 for float64 input).
    """
    _check(cost, epsilon, n_iters, row_mask, col_mask, grad)
    bsz, n, m = cost.shape
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    c = cost.to(dtype)
    device = c.device
    row_mask = torch.ones(bsz, n, dtype=torch.bool, device=device) if row_mask is None else row_mask.bool()
    col_mask = torch.ones(bsz, m, dtype=torch.bool, device=device) if col_mask is None else col_mask.bool()
    valid = row_mask.unsqueeze(2) & col_mask.unsqueeze(1)
    log_a = _log_marginal(row_mask, dtype)
    log_b = _log_marginal(col_mask, dtype)

    def kernel(cc: Tensor) -> Tensor:
        return torch.where(valid, -cc / epsilon, torch.full((), MASKED_LOG, dtype=dtype, device=device))

    def row_step(log_k: Tensor, g: Tensor) -> Tensor:
        f = log_a - torch.logsumexp(log_k + g.unsqueeze(1), dim=2)
        return torch.where(row_mask, f, 0.0)

    def col_step(log_k: Tensor, f: Tensor) -> Tensor:
        g = log_b - torch.logsumexp(log_k + f.unsqueeze(2), dim=1)
        return torch.where(col_mask, g, 0.0)

    g = torch.zeros(bsz, m, dtype=dtype, device=device)
    differentiable_iters = {"autodiff": n_iters, "last_step": 1, "envelope": 0}[grad]
    with torch.no_grad():
        log_k = kernel(c)
        f = torch.zeros(bsz, n, dtype=dtype, device=device)
        for _ in range(n_iters - differentiable_iters):
            f = row_step(log_k, g)
            g = col_step(log_k, f)
    if differentiable_iters:
        log_k = kernel(c)
        for _ in range(differentiable_iters):
            f = row_step(log_k, g)
            g = col_step(log_k, f)
    log_plan = log_k + f.unsqueeze(2) + g.unsqueeze(1)
    plan = torch.where(valid, torch.exp(log_plan), 0.0)
    weight = plan.detach() if grad == "envelope" else plan
    value = (weight * torch.where(valid, c, 0.0)).sum(dim=(1, 2))
    with torch.no_grad():
        row_error = (plan.sum(dim=2) - torch.where(row_mask, log_a.exp(), 0.0)).abs().sum(dim=1)
    return SinkhornOutput(plan=plan, value=value, f=f, g=g, row_error=row_error, n_iters=n_iters)


def sinkhorn_plain(cost: Tensor, *, epsilon: float = 0.1, n_iters: int = 10) -> Tensor:
    """The authors' Sinkhorn: plain (not log) space, rows then columns normalised to sum 1.

    Reproduces the reference code described in ``docs/method.md`` ("SD ... uses 10 iterations in plain (not
    log) space, differentiates through all iterations"): ``P = exp(-C / epsilon)``; repeat: ``P /= P.sum(rows)``,
    ``P /= P.sum(cols)``. Every row and column of every problem takes part (no masks: padded rows are part of
    the reference behaviour). It underflows to 0/0 = NaN when ``C / epsilon`` exceeds about 87 in float32
    on a whole row; :func:`sinkhorn` is the stable solver for everything else.

    Args:
        cost: (B, n, m) cost matrices.
        epsilon: regularisation.
        n_iters: iterations.

    Returns:
        (B, n, m) plan whose columns sum to 1 (so it sums to m per problem).
    """
    if cost.dim() != 3:
        raise ValueError(f"cost must be (B, n, m), got shape {tuple(cost.shape)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
    plan = torch.exp(-cost / epsilon)
    for _ in range(n_iters):
        plan = plan / plan.sum(dim=2, keepdim=True)
        plan = plan / plan.sum(dim=1, keepdim=True)
    return plan
