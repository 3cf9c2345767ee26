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

Both also read a teacher's logits that were never built: :class:`HeadLogits` stands for the (B, L, V) logits
``softcap(hidden @ W.T + bias)`` of packed answer hidden states (B, L, H) and computes each chunk of rows on
demand (the teacher gets no gradient, so nothing is kept). With it, ranking, log-partition functions and
top-k columns of a 262k vocabulary cost one chunk of (rows, V) memory instead of a (B, L, V) tensor.

Two teacher-side signals that a cache can store instead of logits live here too (they are statistics over the
vocabulary): :class:`TopKLogProbs` (each position's top-k log-probabilities) and, for MultiLevelOT,
:class:`ctkd.types.RankedTopK`. A loss says which one it can work from with a :class:`TeacherRequest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ctkd.align import answer_index

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


HEAD_CHUNK_ELEMENTS = 1 << 26
"""Default logits elements per chunk of :class:`HeadLogits` (64M floats = 256 MB in float32: 256 rows of a
262,144 vocabulary, 1,365 of 49,152). Each chunk is one matrix product ``hidden[rows] @ W.T`` that reads the
whole (V, H) head, so chunks must be tall for the product to be compute-bound rather than limited by reading
the head: for Gemma-3's head on a 2-core CPU, products of 64, 128 and 256 rows took 1.85, 1.35 and 1.0 times
as long as one product over 2,044 rows. Smaller chunks (``teacher.chunk_size``) save memory at that cost."""

MIN_HEAD_CHUNK_ROWS = 16
"""Fewest rows per :class:`HeadLogits` chunk chosen automatically, whatever the vocabulary."""

GATHER_CHUNK_ELEMENTS = 1 << 22
"""Elements of gathered head rows (rows x K x H) held at once by :meth:`HeadLogits.at`."""


def head_chunk_rows(vocab_size: int, chunk_elements: int = HEAD_CHUNK_ELEMENTS) -> int:
    """Default rows per :class:`HeadLogits` chunk: ``chunk_elements / V``, at least :data:`MIN_HEAD_CHUNK_ROWS`."""
    return max(MIN_HEAD_CHUNK_ROWS, chunk_elements // max(1, vocab_size))


class HeadLogits:
    """(B, L, V) logits that are never built: ``softcap(hidden @ W.T + bias)``, computed a chunk of rows at a time.

    Stands in for a teacher's answer logits wherever :func:`vocab_stats`, :func:`log_softmax_at` or a loss that
    says so (``accepts_head_logits``) reads them. No gradient flows (teacher side only).

    Args:
        hidden: (B, L, H) final hidden states (after the final norm) at the packed answer positions.
        weight: (V, H) output-head rows of the real vocabulary (the vocabulary policy of :mod:`ctkd.models`).
        bias: (V,) output-head bias, or None.
        softcap: Gemma-2-style final soft-capping ``c * tanh(z / c)``, or None.
        chunk_rows: rows per chunk (0: :func:`head_chunk_rows`). Peak memory is about one (chunk_rows, V)
            float32 tensor, reused from chunk to chunk; time is one (N, H) x (H, V) product however it is
            chunked.
        std_eps: when set, rows are divided by ``std(z) + std_eps`` (MultiLevelOT's ``normalize="std"``).

    Math: row ``r = (b, p)`` is ``z_r = cap(W h_{b,p} + bias)`` with ``cap(z) = c tanh(z / c)``, exactly what
    the model's head computes (:func:`ctkd.forward.head_logits`), in the head's dtype, then read as float32.
    """

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None = None, softcap: float | None = None,
                 chunk_rows: int = 0, std_eps: float | None = None) -> None:
        if hidden.dim() != 3:
            raise ValueError(f"hidden must be (B, L, H), got shape {tuple(hidden.shape)}")
        if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
            raise ValueError(f"weight must be (V, H) with H = {hidden.shape[2]} (the hidden size), got shape "
                             f"{tuple(weight.shape)}")
        if chunk_rows < 0:
            raise ValueError(f"chunk_rows must be >= 0 (0: automatic), got {chunk_rows}")
        self.hidden = hidden.detach()
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.softcap = float(softcap) if softcap else None
        self.chunk_rows = int(chunk_rows) or head_chunk_rows(weight.shape[0])
        self.std_eps = std_eps
        self._buffer: Tensor | None = None  # (chunk_rows, V): written by every chunk (no page faults per chunk)

    # --- the tensor-like surface the readers use ----------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:2], self.weight.shape[0]))

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    requires_grad = False

    def dim(self) -> int:
        return 3

    def detach(self) -> "HeadLogits":
        return self

    def normalized(self, std_eps: float) -> "HeadLogits":
        """The same logits, each row divided by its standard deviation plus ``std_eps``."""
        return HeadLogits(self.hidden, self.weight, self.bias, self.softcap, self.chunk_rows, std_eps)

    # --- computing rows ---------------------------------------------------------------------------------------
    def _cap(self, z: Tensor) -> Tensor:
        return torch.tanh(z / self.softcap) * self.softcap if self.softcap else z

    @torch.no_grad()
    def rows(self, b: Tensor, p: Tensor) -> Tensor:
        """(n, V) float32 logits of the rows ``(b[i], p[i])``.

        Up to ``chunk_rows`` rows are written into one buffer that the next call overwrites: use the result
        before asking for more rows (more rows at once get a new tensor).
        """
        h = self.hidden[b, p]
        n = h.shape[0]
        if n > self.chunk_rows:
            z = torch.nn.functional.linear(h, self.weight, self.bias)
        else:
            if self._buffer is None:
                self._buffer = torch.empty(self.chunk_rows, self.weight.shape[0], dtype=self.weight.dtype,
                                           device=self.device)
            z = self._buffer[:n]
            # the product torch.nn.functional.linear computes (addmm / mm), into the buffer
            if self.bias is not None:
                torch.addmm(self.bias, h, self.weight.t(), out=z)
            else:
                torch.mm(h, self.weight.t(), out=z)
        if self.softcap:
            z.div_(self.softcap).tanh_().mul_(self.softcap)
        z = z.float()
        if self.std_eps is not None:
            z = z / (z.std(dim=-1, keepdim=True) + self.std_eps)
        return z

    @torch.no_grad()
    def at(self, b: Tensor, p: Tensor, ids: Tensor) -> Tensor:
        """(n, K) float32 logits ``z[(b[i], p[i]), ids[i, k]]``, from gathered head rows (no (n, V) product).

        With ``std_eps`` the row's standard deviation needs the whole row: full rows are computed then.
        """
        n, k = ids.shape
        out = torch.empty(n, k, dtype=torch.float32, device=self.device)
        if self.std_eps is not None:
            for start in range(0, n, self.chunk_rows):
                stop = min(n, start + self.chunk_rows)
                out[start:stop] = self.rows(b[start:stop], p[start:stop]).gather(1, ids[start:stop])
            return out
        step = max(1, GATHER_CHUNK_ELEMENTS // max(1, k * self.hidden.shape[-1]))
        for start in range(0, n, step):
            stop = min(n, start + step)
            h = self.hidden[b[start:stop], p[start:stop]]  # (c, H)
            cols = ids[start:stop]
            z = torch.einsum("ch,ckh->ck", h, self.weight[cols])
            if self.bias is not None:
                z = z + self.bias[cols]
            out[start:stop] = self._cap(z).float()
        return out

    def dense(self) -> Tensor:
        """The full (B, L, V) float32 logits (tests and small vocabularies only: this is what the class avoids)."""
        b, length = self.hidden.shape[:2]
        bb = torch.arange(b, device=self.device).repeat_interleave(length)
        pp = torch.arange(length, device=self.device).repeat(b)
        return self.rows(bb, pp).view(b, length, -1)


class RowReader:
    """Reads chunks of answer rows of (B, T, V) logits without copying when it can.

    Rows are addressed by their flat index ``b * T + p`` in a (B * T, V) view of the logits (a view exists for
    contiguous logits and for logits sliced along the vocabulary, see :func:`ctkd.models.vocab_logits`). A chunk
    of consecutive flat indices (answer rows are consecutive within an example) is a zero-copy slice; any other
    chunk is gathered by advanced indexing (much faster than ``index_select`` for long rows on the CPU).

    The logits may also be a :class:`HeadLogits`: each chunk (of its ``chunk_rows``) is then computed.
    """

    def __init__(self, logits: Tensor | HeadLogits, b: Tensor, p: Tensor) -> None:
        self.vocab = logits.shape[-1]
        self.index = b * logits.shape[1] + p
        self.n = int(self.index.numel())
        self.head = logits if isinstance(logits, HeadLogits) else None
        if self.head is not None:
            self.b, self.p = b, p
            self.flat = None
            self.chunk = self.head.chunk_rows
            return
        try:
            self.flat = logits.view(-1, self.vocab)
        except RuntimeError:  # strides that cannot merge (B, T): one copy, still correct
            self.flat = logits.reshape(-1, self.vocab)
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
        if self.head is not None:
            return self.head.rows(self.b[start:stop], self.p[start:stop])
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
    logits: Tensor | HeadLogits,
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
        logits: (B, T, V) logits (any float dtype; statistics in float32), or a :class:`HeadLogits`.
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
    piece = chunk_rows(vocab)  # rows whose statistics are taken together: a cache-sized (rows, V) block
    for first, last in reader.spans():
        # a computed chunk (HeadLogits) is taller: walk it in the same pieces, with the same arithmetic, so that
        # chunked and unchunked statistics agree bit for bit when the rows do
        block = None  # release the previous chunk before computing the next
        block = reader.read(first, last)
        for offset in range(0, last - first, piece):
            start, stop = first + offset, min(last, first + offset + piece)
            z = block[offset:offset + stop - start]
            if topk is not None:
                topk[start:stop] = z.topk(row_topk, dim=-1, sorted=True).indices
            for tau, out in lse.items():
                if tau not in (1.0, 2.0):
                    out[start:stop] = torch.logsumexp(z / tau, dim=-1)
            probs = torch.softmax(z, dim=-1)
            lse1 = _lse_from_softmax(z, probs)
            if colsum is not None:
                g = group[start:stop]
                if bool((g == g[0]).all()):  # the usual case: the chunk lies inside one example (BLAS gemv)
                    colsum[int(g[0])].addmv_(probs.t(), torch.ones(stop - start, dtype=probs.dtype,
                                                                   device=probs.device))
                else:
                    onehot = torch.nn.functional.one_hot(g, colsum.shape[0]).to(probs.dtype)
                    colsum.addmm_(onehot.t(), probs)
            for tau, out in lse.items():
                if tau == 1.0:
                    out[start:stop] = lse1
                elif tau == 2.0:
                    out[start:stop] = lse1 / 2 + probs.sqrt_().sum(dim=-1).log()  # probs no longer needed
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
    logits: Tensor | HeadLogits,
    b: Tensor,
    p: Tensor,
    ids: Tensor,
    lses: dict[float, Tensor],
    taus: tuple[float, ...],
) -> tuple[Tensor, ...]:
    """Log-probabilities at temperature ``tau`` of selected columns of the answer rows.

    Args:
        logits: (B, T, V) logits; gradient flows to it when it requires grad. Or a :class:`HeadLogits` (no
            gradient; the K columns come from gathered head rows, without computing whole rows).
        b, p: (N,) long, example and position of each answer row.
        ids: (N, K) long, columns wanted in each row.
        lses: from :func:`vocab_stats`, temperature -> (N,) log-partition function.
        taus: temperatures wanted, each a key of ``lses``.

    Returns:
        One (N, K) float32 tensor per temperature: ``z[r, ids[r, k]] / tau - logsumexp(z[r] / tau)``.
    """
    lse_list = tuple(lses[float(t)] for t in taus)
    taus = tuple(float(t) for t in taus)
    if isinstance(logits, HeadLogits):
        z = logits.at(b, p, ids)
        return tuple(z / tau - lse.unsqueeze(1) for tau, lse in zip(taus, lse_list))
    if logits.requires_grad and torch.is_grad_enabled():
        return _LogSoftmaxAt.apply(logits, b, p, ids, lse_list, taus)
    z = logits[b.unsqueeze(1), p.unsqueeze(1), ids].float()
    return tuple(z / tau - lse.unsqueeze(1) for tau, lse in zip(taus, lse_list))


# ------------------------------------------------------------------------------------------------------------
# Teacher-side signals that replace the logits (what a teacher cache stores)
# ------------------------------------------------------------------------------------------------------------
PAD_LOGP = -1.0e4
"""Log-probability stored on padded answer slots (``exp`` is exactly 0 in float32, and it is finite)."""

REQUEST_KINDS: tuple[str, ...] = ("ranked_topk", "topk")
"""``ranked_topk``: :class:`ctkd.types.RankedTopK` (MultiLevelOT); ``topk``: :class:`TopKLogProbs` (ULD)."""


@dataclass(frozen=True)
class TeacherRequest:
    """What a loss reads from the teacher when it can work without the teacher's full logits.

    A loss that can (``MultiLevelOT``, ``ULD``) returns one from ``teacher_request()``; a teacher cache stores the
    signal it describes, and serves a later request if :meth:`served_by` finds nothing missing.

    Attributes:
        kind: ``"ranked_topk"`` (per-sequence or per-position ranked columns and their log-probabilities at
            each temperature: :class:`ctkd.types.RankedTopK`) or ``"topk"`` (each position's top-k columns and
            log-probabilities at one temperature: :class:`TopKLogProbs`).
        top_k: columns read per position (0: any number, more is closer to exact, as for ULD).
        temperatures: temperatures of the log-probabilities (``ranked_topk``: token level first).
        ranking: ``ranked_topk`` only: ``"sequence"`` or ``"token"``.
        normalize: ``ranked_topk`` only: ``"none"`` or ``"std"`` (rows divided by their standard deviation).
    """

    kind: str
    top_k: int
    temperatures: tuple[float, ...]
    ranking: str = ""
    normalize: str = "none"

    def __post_init__(self) -> None:
        if self.kind not in REQUEST_KINDS:
            raise ValueError(f"kind must be one of {REQUEST_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "top_k": self.top_k, "temperatures": list(self.temperatures),
                "ranking": self.ranking, "normalize": self.normalize}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TeacherRequest":
        return cls(kind=data["kind"], top_k=int(data["top_k"]), temperatures=tuple(data["temperatures"]),
                   ranking=data.get("ranking", ""), normalize=data.get("normalize", "none"))

    def describe(self) -> str:
        parts = [self.kind, f"top_k={self.top_k or 'any'}", "tau=" + "/".join(f"{t:g}" for t in self.temperatures)]
        if self.kind == "ranked_topk":
            parts += [f"ranking={self.ranking}", f"normalize={self.normalize}"]
        return " ".join(parts)

    def served_by(self, stored: "TeacherRequest") -> str | None:
        """Why the ``stored`` signal cannot answer this request, or None when it can (exactly, by a prefix of
        its columns: ranked columns come in rank order, so the first k of a top-K are the top k)."""
        if stored.kind != self.kind:
            return f"it holds {stored.kind}, the loss reads {self.kind}"
        if self.kind == "ranked_topk" and (stored.ranking, stored.normalize) != (self.ranking, self.normalize):
            return (f"it was ranked with ranking={stored.ranking}, normalize={stored.normalize}; the loss uses "
                    f"ranking={self.ranking}, normalize={self.normalize}")
        missing = [t for t in self.temperatures if not any(math.isclose(t, s) for s in stored.temperatures)]
        if missing:
            return f"it holds log-probabilities at temperature(s) {list(stored.temperatures)}, the loss needs {missing}"
        if self.top_k > stored.top_k:
            return f"it keeps {stored.top_k} columns per position, the loss reads top_k={self.top_k}"
        return None


@dataclass
class TopKLogProbs:
    """Each answer position's top-k teacher columns and their log-probabilities, in descending order.

    What a teacher cache stores for ULD (and what MinED's top-k needs). The probability mass outside the top-k,
    :attr:`tail`, is known; how it spreads over the other ``vocab_size - K`` columns is not.

    Attributes:
        ids: (B, L, K) long, column ids, most probable first.
        logp: (B, L, K) float32, ``log softmax(z / temperature)`` at those columns.
        valid: (B, L) bool, True on real answer positions.
        vocab_size: V, the teacher's real vocabulary size.
        temperature: the softmax temperature of ``logp``.
    """

    ids: Tensor
    logp: Tensor
    valid: Tensor
    vocab_size: int
    temperature: float = 1.0

    @property
    def top_k(self) -> int:
        return int(self.ids.shape[-1])

    @property
    def tail(self) -> Tensor:
        """(B, L) float32 probability outside the top-k: ``1 - sum_k exp(logp)``, clamped at 0."""
        return (1.0 - self.logp.exp().sum(dim=-1)).clamp_min(0.0)

    def truncate(self, k: int) -> "TopKLogProbs":
        return TopKLogProbs(self.ids[..., :k], self.logp[..., :k], self.valid, self.vocab_size, self.temperature)

    def to(self, device: torch.device | str) -> "TopKLogProbs":
        return TopKLogProbs(self.ids.to(device), self.logp.to(device), self.valid.to(device), self.vocab_size,
                            self.temperature)


@torch.no_grad()
def topk_log_probs(logits: Tensor | HeadLogits, mask: Tensor, top_k: int, temperature: float = 1.0) -> TopKLogProbs:
    """:class:`TopKLogProbs` of the answer rows of ``logits`` (dense or :class:`HeadLogits`), packed (B, L, K).

    Args:
        logits: (B, T, V) logits or a :class:`HeadLogits`.
        mask: (B, T) bool answer mask.
        top_k: columns kept per position (at most V).
        temperature: softmax temperature of the log-probabilities (the ranking does not depend on it).
    """
    vocab = logits.shape[-1]
    if not (isinstance(top_k, int) and 1 <= top_k <= vocab):
        raise ValueError(f"top_k must be an int in [1, {vocab}] (the vocabulary), got {top_k!r}")
    index = answer_index(mask)
    b, p = index.seq, index.flat - index.seq * logits.shape[1]
    tau = float(temperature)
    stats = vocab_stats(logits, b, p, temperatures=(tau,), row_topk=top_k)
    (logp,) = log_softmax_at(logits, b, p, stats.row_topk, stats.lse, (tau,))
    return TopKLogProbs(ids=index.pack(stats.row_topk), logp=index.pack(logp, fill=PAD_LOGP), valid=index.valid,
                        vocab_size=vocab, temperature=tau)
