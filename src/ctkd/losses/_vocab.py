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


class RowReader:
    """Reads chunks of answer rows of a (B, T, V) logits tensor without copying when it can.

    Rows are addressed by their flat index ``b * T + p`` in a (B * T, V) view of the logits (a view exists for
    contiguous logits and for logits sliced along the vocabulary, see :func:`ctkd.models.vocab_logits`). A chunk
    of consecutive flat indices (answer rows are consecutive within an example) is a zero-copy slice; any other
    chunk is gathered by advanced indexing (much faster than ``index_select`` for long rows on the CPU).
    """

    def __init__(self, logits: Tensor, b: Tensor, p: Tensor) -> None:
        self.vocab = logits.shape[-1]
        try:
            self.flat = logits.view(-1, self.vocab)
        except RuntimeError:  # strides that cannot merge (B, T): one copy, still correct
            self.flat = logits.reshape(-1, self.vocab)
        self.index = b * logits.shape[1] + p
        self.n = int(self.index.numel())
        self.chunk = chunk_rows(self.vocab)

    def spans(self):
        """Yield ``(start, stop)`` chunk bounds over the N answer rows."""
        for start in range(0, self.n, self.chunk):
            yield start, min(self.n, start + self.chunk)

    def contiguous(self, start: int, stop: int) -> int | None:
        """First flat row of the chunk if its rows are consecutive, else None."""
        first, last = int(self.index[start]), int(self.index[stop - 1])
        return first if last - first == stop - start - 1 else None

    def read(self, start: int, stop: int) -> Tensor:
        """(stop - start, V) float32 rows; a view of the logits when possible (never modify it in place)."""
        first = self.contiguous(start, stop)
        rows = self.flat[first:first + stop - start] if first is not None else self.flat[self.index[start:stop]]
        return rows.float()


def _lse_from_softmax(z: Tensor, probs: Tensor) -> Tensor:
    """``logsumexp(z)`` per row from ``probs = softmax(z)``: ``max(z) - log(max(probs))``.

    The largest probability is ``exp(0) / sum(exp(z - max z))``, so this costs two max passes instead of
    another exponential pass.
    """
    return z.amax(dim=-1) - probs.amax(dim=-1).log()


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

    Returns:
        :class:`VocabStats`.

    Math: one fused softmax per chunk gives the probabilities ``P``; ``lse_1 = max z - log max P``; the column
    sums are a matrix product ``onehot(group)^T P``; and for ``tau = 2``,
    ``logsumexp(z / 2) = lse_1 / 2 + log sum sqrt(P)`` reuses the same exponentials. Other temperatures cost one
    ``logsumexp(z / tau)`` each.
    """
    reader = RowReader(logits, b, p)
    n, vocab = reader.n, reader.vocab
    temps = tuple(float(t) for t in temperatures)
    lse = {t: torch.empty(n, dtype=torch.float32, device=logits.device) for t in temps}
    colsum = None
    if group is not None:
        colsum = torch.zeros(max(1, num_groups), vocab, dtype=torch.float32, device=logits.device)
    topk = torch.empty(n, row_topk, dtype=torch.long, device=logits.device) if row_topk > 0 else None
    for start, stop in reader.spans():
        z = reader.read(start, stop)
        if topk is not None:
            topk[start:stop] = z.topk(row_topk, dim=-1, sorted=True).indices
        probs = torch.softmax(z, dim=-1)
        lse1 = _lse_from_softmax(z, probs)
        if colsum is not None:
            g = group[start:stop]
            if bool((g == g[0]).all()):  # the usual case: the chunk lies inside one example (BLAS gemv)
                colsum[int(g[0])].addmv_(probs.t(), torch.ones(stop - start, dtype=probs.dtype, device=probs.device))
            else:
                onehot = torch.nn.functional.one_hot(g, colsum.shape[0]).to(probs.dtype)
                colsum.addmm_(onehot.t(), probs)
        for tau, out in lse.items():
            if tau == 1.0:
                out[start:stop] = lse1
            elif tau == 2.0:
                out[start:stop] = lse1 / 2 + probs.sqrt_().sum(dim=-1).log()  # probs no longer needed
            else:
                out[start:stop] = torch.logsumexp(z / tau, dim=-1)
    return VocabStats(lse=lse, colsum=colsum, row_topk=topk)


class _LogSoftmaxAt(torch.autograd.Function):
    """``z[r, ids[r, k]] / tau - lse_tau[r]`` for each temperature, with a fused chunked backward.

    Backward, for each row ``r`` and temperature ``tau`` with upstream gradient ``g[r, k]``::

        dL/dz[r, :] += (1 / tau) * ( scatter(g[r, :] at ids[r, :]) - (sum_k g[r, k]) * softmax(z[r] / tau) )

    with ``softmax(z / 2) = sqrt(softmax(z)) * exp(lse_1 / 2 - lse_2)`` so that temperatures 1 and 2 share one
    exponential pass.
    """

    @staticmethod
    def forward(ctx, logits, b, p, ids, lses, taus):  # noqa: D401
        z = logits[b.unsqueeze(1), p.unsqueeze(1), ids].float()
        outs = tuple(z / tau - lse.unsqueeze(1) for tau, lse in zip(taus, lses))
        ctx.save_for_backward(logits, b, p, ids, *lses)
        ctx.taus = taus
        return outs

    @staticmethod
    def backward(ctx, *grads):
        logits, b, p, ids, *lses = ctx.saved_tensors
        taus = ctx.taus
        reader = RowReader(logits, b, p)
        grad_logits = torch.zeros_like(logits)
        grad_flat = grad_logits.view(-1, reader.vocab)
        lse_of = dict(zip(taus, lses))
        for start, stop in reader.spans():
            z = reader.read(start, stop)
            sparse = torch.zeros(stop - start, ids.shape[1], dtype=torch.float32, device=z.device)
            weights = {}
            for tau, g in zip(taus, grads):
                if g is None:
                    continue
                gc = g[start:stop].float()
                sparse += gc / tau
                weights[tau] = gc.sum(dim=1, keepdim=True) / tau
            if not weights:
                continue
            probs = torch.softmax(z, dim=-1)
            lse1 = lse_of.get(1.0)
            lse1 = _lse_from_softmax(z, probs) if lse1 is None else lse1[start:stop]
            rows = probs * -weights[1.0] if 1.0 in weights else torch.zeros_like(probs)
            for tau, w in weights.items():
                if tau == 1.0:
                    continue
                lse_tau = lse_of[tau][start:stop].unsqueeze(1)
                if tau == 2.0:  # softmax(z / 2) = sqrt(softmax(z)) * exp(lse_1 / 2 - lse_2)
                    rows.addcmul_(probs.sqrt(), -w * torch.exp(lse1.unsqueeze(1) / 2 - lse_tau))
                else:
                    rows.addcmul_(torch.exp(z / tau - lse_tau), -w)
            rows.scatter_add_(1, ids[start:stop], sparse)
            first = reader.contiguous(start, stop)
            if first is not None:
                grad_flat[first:first + stop - start] = rows
            else:
                grad_flat[reader.index[start:stop]] = rows.to(grad_flat.dtype)
        return grad_logits, None, None, None, None, None


def log_softmax_at(
    logits: Tensor,
    b: Tensor,
    p: Tensor,
    ids: Tensor,
    lses: dict[float, Tensor],
    taus: tuple[float, ...],
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
        return _LogSoftmaxAt.apply(logits, b, p, ids, lse_list, taus)
    z = logits[b.unsqueeze(1), p.unsqueeze(1), ids].float()
    return tuple(z / tau - lse.unsqueeze(1) for tau, lse in zip(taus, lse_list))
