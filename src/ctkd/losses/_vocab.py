"""Statistics over the vocabulary dimension, computed in chunks of answer rows.

Every loss here reads (B, T, V) logits only at answer rows ``(b, p)``. These helpers never build a
(N, V) or (B, T, V) temporary: they walk the answer rows in chunks of about :data:`CHUNK_ELEMENTS`
elements, so the working set stays in cache and the memory overhead is one chunk.

- :func:`vocab_stats` (no gradient): per-row log-partition functions at one or two temperatures, and either
  per-group column sums of the probabilities (for sequence- or batch-level ranking) or per-row top-k ids
  (token-level ranking), from a single exponential pass per chunk.
- :func:`log_softmax_at`: ``z[r, ids[r, k]] / tau - logsumexp(z[r] / tau)`` at a few selected columns,
  differentiable with a fused backward that writes the gradient of the full rows chunk by chunk (one
  pass, no saved (N, V) activations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 21
"""Elements of logits processed at once (2M floats = 8 MB in float32): big enough for BLAS-sized work,
small enough to stay cache-friendly and memory-frugal."""


def chunk_rows(vocab_size: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk for a vocabulary of ``vocab_size`` columns (at least 1)."""
    return max(1, chunk_elements // max(1, vocab_size))


@dataclass
class VocabStats:
    """Per-row statistics of the answer rows of a logits tensor.

    Attributes:
        lse: dict temperature -> (N,) float32 ``logsumexp(z / tau)`` of each row.
        colsum: (S, V) float32 sum of the temperature-1 probabilities of the rows of each group, or None.
        row_topk: (N, K) long ids of each row's top-k columns in descending order, or None.
    """

    lse: dict[float, Tensor]
    colsum: Tensor | None
    row_topk: Tensor | None


def _rows(logits: Tensor, b: Tensor, p: Tensor) -> Tensor:
    return logits[b, p].float()


@torch.no_grad()
def vocab_stats(
    logits: Tensor,
    b: Tensor,
    p: Tensor,
    *,
    temperatures: tuple[float, ...] = (1.0,),
    group: Tensor | None = None,
    num_groups: int = 0,
    row_topk: int = 0,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> VocabStats:
    """Log-partition functions, column sums and row top-k of the rows ``logits[b, p]``.

    Args:
        logits: (B, T, V) logits (any float dtype; statistics in float32).
        b, p: (N,) long, example and position of each answer row.
        temperatures: temperatures at which ``logsumexp(z / tau)`` is wanted.
        group: (N,) long group id of each row (its example for sequence-level ranking, zeros for
            batch-level ranking); None skips the column sums.
        num_groups: number of groups S (``colsum`` is (S, V)).
        row_topk: if > 0, also return each row's top-``row_topk`` column ids (token-level ranking).
        chunk_elements: work size per chunk.

    Returns:
        :class:`VocabStats`.

    Math: with ``m = max(z)`` and ``E = exp(z - m)``, ``lse_1 = m + log sum E`` and the probabilities are
    ``E / sum E``; for ``tau = 2``, ``exp((z - m) / 2) = sqrt(E)`` reuses the same exponential. Entries
    with ``z - m < -87`` underflow in ``E`` and are dropped from the temperature-2 sum; their contribution is
    below ``V * exp(-43)`` relative to the row's largest term, far below float32 resolution.
    """
    n = int(b.numel())
    vocab = logits.shape[-1]
    lse = {float(t): torch.empty(n, dtype=torch.float32, device=logits.device) for t in temperatures}
    colsum = None
    if group is not None:
        colsum = torch.zeros(max(1, num_groups), vocab, dtype=torch.float32, device=logits.device)
    topk = None
    if row_topk > 0:
        topk = torch.empty(n, row_topk, dtype=torch.long, device=logits.device)
    step = chunk_rows(vocab, chunk_elements)
    for start in range(0, n, step):
        stop = min(n, start + step)
        z = _rows(logits, b[start:stop], p[start:stop])
        if topk is not None:
            topk[start:stop] = z.topk(row_topk, dim=-1, sorted=True).indices
        m = z.amax(dim=-1, keepdim=True)
        e = z.sub_(m).exp_()  # z is a fresh copy (float() or indexing), safe to overwrite
        total = e.sum(dim=-1, keepdim=True)
        for tau, out in lse.items():
            if tau == 1.0:
                s = total
            elif tau == 2.0:
                s = e.sqrt().sum(dim=-1, keepdim=True)
            else:
                s = e.pow(1.0 / tau).sum(dim=-1, keepdim=True)
            out[start:stop] = (m / tau + s.log()).squeeze(-1)
        if colsum is not None:
            colsum.index_add_(0, group[start:stop], e.div_(total))
    return VocabStats(lse=lse, colsum=colsum, row_topk=topk)


class _LogSoftmaxAt(torch.autograd.Function):
    """``z[r, ids[r, k]] / tau - lse_tau[r]`` for each temperature, with a fused chunked backward.

    Backward, for each row ``r`` and temperature ``tau`` with upstream gradient ``g[r, k]``::

        dL/dz[r, :] += (1 / tau) * ( scatter(g[r, :] at ids[r, :]) - (sum_k g[r, k]) * softmax(z[r] / tau) )
    """

    @staticmethod
    def forward(ctx, logits, b, p, ids, lses, taus, chunk_elements):  # noqa: D401
        z = logits[b.unsqueeze(1), p.unsqueeze(1), ids].float()
        outs = tuple(z / tau - lse.unsqueeze(1) for tau, lse in zip(taus, lses))
        ctx.save_for_backward(logits, b, p, ids, *lses)
        ctx.taus = taus
        ctx.chunk_elements = chunk_elements
        return outs

    @staticmethod
    def backward(ctx, *grads):
        logits, b, p, ids, *lses = ctx.saved_tensors
        taus = ctx.taus
        grad_logits = torch.zeros_like(logits)
        n = int(b.numel())
        step = chunk_rows(logits.shape[-1], ctx.chunk_elements)
        for start in range(0, n, step):
            stop = min(n, start + step)
            bb, pp = b[start:stop], p[start:stop]
            z = logits[bb, pp].float()
            rows = torch.zeros_like(z)
            sparse = torch.zeros(stop - start, ids.shape[1], dtype=torch.float32, device=z.device)
            for tau, lse, g in zip(taus, lses, grads):
                if g is None:
                    continue
                gc = g[start:stop].float()
                sparse += gc / tau
                weight = gc.sum(dim=1, keepdim=True) / tau
                rows -= weight * torch.exp(z / tau - lse[start:stop].unsqueeze(1))
            rows.scatter_add_(1, ids[start:stop], sparse)
            grad_logits[bb, pp] = rows.to(grad_logits.dtype)
        return grad_logits, None, None, None, None, None, None


def log_softmax_at(
    logits: Tensor,
    b: Tensor,
    p: Tensor,
    ids: Tensor,
    lses: dict[float, Tensor],
    taus: tuple[float, ...],
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[Tensor, ...]:
    """Log-probabilities at temperature ``tau`` of selected columns of the answer rows.

    Args:
        logits: (B, T, V) logits; gradient flows to it when it requires grad.
        b, p: (N,) long, example and position of each answer row.
        ids: (N, K) long, columns wanted in each row.
        lses: from :func:`vocab_stats`, temperature -> (N,) log-partition function.
        taus: temperatures wanted, each a key of ``lses``.

    Returns:
        One (N, K) float32 tensor per temperature: ``z[r, ids[r, k]] / tau - logsumexp(z[r] / tau)``.
    """
    lse_list = tuple(lses[float(t)] for t in taus)
    taus = tuple(float(t) for t in taus)
    if logits.requires_grad and torch.is_grad_enabled():
        return _LogSoftmaxAt.apply(logits, b, p, ids, lse_list, taus, chunk_elements)
    z = logits[b.unsqueeze(1), p.unsqueeze(1), ids].float()
    return tuple(z / tau - lse.unsqueeze(1) for tau, lse in zip(taus, lse_list))
