"""ULD: Universal Logit Distillation (Boizard et al. 2024, arXiv 2402.12030).

At each paired answer position both probability vectors (temperature ``temperature``) are sorted in
descending order, the shorter one zero-padded to the longer vocabulary, and compared in L1::

    uld = mean_pairs sum_i | sort(t)_i - sort(s)_i |

Positions are paired j-th with j-th, each example cut to its shorter answer (``pairing="position"``, as in
ULD), or one pair per byte-aligned group, taking the first token of each group on both sides
(``pairing="span"``; needs the ``alignment=`` input).

Exact, but frugal: pairs are processed in chunks; the zero padding is never materialised (the longer side's
tail beyond the shorter vocabulary contributes its mass); the backward keeps only the sign of each sorted
difference, scattered back to vocabulary order, as one int8 per student entry, and recomputes the softmax.

The teacher side may be given three ways:

- (B, Tt, Vt) logits;
- a :class:`ctkd.losses._vocab.HeadLogits` (answer hidden states and the output head): exact, each chunk of
  teacher rows is computed on demand, so a (B, Lt, Vt) tensor never exists;
- a :class:`ctkd.losses._vocab.TopKLogProbs` (a teacher cache): **approximate**. Only the K largest teacher
  probabilities are known, plus the mass ``R`` outside them. The sorted teacher vector is taken as those K values
  followed by a tail of mass ``R`` shaped like the student's own sorted tail: ``t_i = R * s_i / S`` for ranks
  ``i >= K`` (``s`` the student's sorted probabilities, zero-padded to ``Vt``; ``S`` their sum over those ranks;
  an even spread when ``S = 0``). The first K terms are exact; the tail term becomes ``|R - S|``, the lower end
  of ``[|R - S|, R + S]`` where the exact tail term lies, so the error per position is at most ``2 min(R, S)``.
  The backward (signs of the sorted differences) is the exact gradient of this approximation. Sorted tails of
  language models have similar shapes, which makes the lower end close: on QED with Gemma-3-270m -> SmolLM2 the
  mean relative loss error was 0.10% at K = 256 (``docs/teacher_cache.md``, ``benchmarks/bench_teacher.py
  uld-error``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ctkd.align import answer_index, positional_pairs, span_pairs
from ctkd.losses._vocab import CHUNK_ELEMENTS, HeadLogits, TeacherRequest, TopKLogProbs, chunk_rows
from ctkd.losses.base import DistillationLoss, check_choice, check_finite, check_positive, zero_loss
from ctkd.types import LossOutput, SpanAlignment


def _sorted_descending(values: Tensor) -> Tensor:
    """Row-wise descending sort of values only (no indices needed: the teacher gets no gradient).

    NumPy's vectorised sort (x86-simd-sort) is several times faster than ``torch.sort`` for 262k-wide rows on
    the CPU, and it skips the int64 index tensor; other devices use torch.
    """
    if values.device.type == "cpu" and values.dtype == torch.float32:
        ascending = np.sort(values.numpy(), axis=-1)
        return torch.from_numpy(np.ascontiguousarray(ascending[:, ::-1]))
    return values.sort(dim=-1, descending=True).values


class _TeacherRows:
    """Descending teacher probabilities of consecutive chunks of pairs ``(tb, tp)``.

    From logits: exact. From :class:`HeadLogits`: exact; a block of ``chunk_rows`` pairs is computed at once (a
    tall matrix product) and then read chunk by chunk. From :class:`TopKLogProbs`: approximate, the K known
    values, then the remaining mass shaped like the student's sorted tail (module docstring).
    """

    def __init__(self, teacher: Tensor | HeadLogits | TopKLogProbs, tb: Tensor, tp: Tensor, tau: float) -> None:
        self.teacher, self.tb, self.tp, self.tau = teacher, tb, tp, tau
        self.block: Tensor | None = None
        self.block_start = self.block_stop = 0

    def sorted(self, start: int, stop: int, student_sorted: Tensor) -> Tensor:
        """(stop - start, Vt) float32, descending (the top-k approximation's tail follows ``student_sorted``,
        the (stop - start, Vs) descending student probabilities of the same pairs)."""
        teacher, tb, tp = self.teacher, self.tb[start:stop], self.tp[start:stop]
        if isinstance(teacher, TopKLogProbs):
            top = teacher.logp[tb, tp].float().exp()  # (n, K), descending
            k, vt = top.shape[-1], teacher.vocab_size
            out = torch.zeros(top.shape[0], vt, dtype=torch.float32, device=top.device)
            out[:, :k] = top
            if vt > k:
                tail_mass = (1.0 - top.sum(-1, keepdim=True)).clamp_min(0.0)
                shape = out[:, k:]
                width = max(0, min(vt, student_sorted.shape[-1]) - k)
                shape[:, :width] = student_sorted[:, k:k + width]
                total = shape.sum(-1, keepdim=True)
                flat = total <= 0  # no student mass beyond rank k: spread evenly
                shape.copy_(torch.where(flat, tail_mass / (vt - k), shape * (tail_mass / total.clamp_min(1e-30))))
            return out
        if isinstance(teacher, HeadLogits):
            if not (self.block_start <= start and stop <= self.block_stop):
                self.block = None  # release the previous block first
                self.block_start = start
                self.block_stop = min(int(self.tb.numel()), start + max(teacher.chunk_rows, stop - start))
                self.block = teacher.rows(self.tb[self.block_start:self.block_stop],
                                          self.tp[self.block_start:self.block_stop])
            zt = self.block[start - self.block_start:stop - self.block_start]
        else:
            zt = teacher[tb, tp].float()
        return _sorted_descending(torch.softmax(zt / self.tau, dim=-1))


def _teacher_vocab(teacher: Tensor | HeadLogits | TopKLogProbs) -> int:
    return teacher.vocab_size if isinstance(teacher, TopKLogProbs) else int(teacher.shape[-1])


class _SortedL1(torch.autograd.Function):
    """Per-pair ``sum_i |sort(softmax(zt/T))_i - sort(softmax(zs/T))_i|`` with zero padding; grad to zs only."""

    @staticmethod
    def forward(ctx, student, teacher, sb, sp, tb, tp, tau, chunk_elements):  # noqa: D401
        n = int(sb.numel())
        vs, vt = student.shape[-1], _teacher_vocab(teacher)
        common = min(vs, vt)
        out = torch.empty(n, dtype=torch.float32, device=student.device)
        lse = torch.empty(n, dtype=torch.float32, device=student.device)
        sign = torch.empty(n, vs, dtype=torch.int8, device=student.device)
        step = chunk_rows(max(vs, vt), chunk_elements)
        if isinstance(teacher, HeadLogits):  # never more teacher rows at once than one of its chunks
            step = min(step, teacher.chunk_rows)
        teacher_rows = _TeacherRows(teacher, tb, tp, tau)
        for start in range(0, n, step):
            stop = min(n, start + step)
            zs = student[sb[start:stop], sp[start:stop]].float() / tau
            lse_s = torch.logsumexp(zs, dim=-1, keepdim=True)
            ps_sorted, order = (zs - lse_s).exp_().sort(dim=-1, descending=True)
            pt_sorted = teacher_rows.sorted(start, stop, ps_sorted)
            diff = ps_sorted[:, :common] - pt_sorted[:, :common]
            total = diff.abs().sum(-1)
            if vt > vs:
                total += pt_sorted[:, vs:].sum(-1)
            elif vs > vt:
                total += ps_sorted[:, vt:].sum(-1)
            out[start:stop] = total
            lse[start:stop] = lse_s.squeeze(-1)
            sorted_sign = torch.ones(stop - start, vs, dtype=torch.int8, device=student.device)
            sorted_sign[:, :common] = torch.sign(diff).to(torch.int8)
            sign[start:stop].scatter_(1, order, sorted_sign)
        ctx.save_for_backward(student, sb, sp, lse, sign)
        ctx.tau = tau
        ctx.chunk_elements = chunk_elements
        return out

    @staticmethod
    def backward(ctx, grad_out):
        student, sb, sp, lse, sign = ctx.saved_tensors
        tau = ctx.tau
        grad = torch.zeros_like(student)
        n = int(sb.numel())
        step = chunk_rows(student.shape[-1], ctx.chunk_elements)
        for start in range(0, n, step):
            stop = min(n, start + step)
            bb, pp = sb[start:stop], sp[start:stop]
            ps = (student[bb, pp].float() / tau - lse[start:stop].unsqueeze(1)).exp_()
            g = sign[start:stop].float() * grad_out[start:stop].float().unsqueeze(1)
            # softmax Jacobian: dz = p * (g - <p, g>) / tau
            rows = ps * (g - (ps * g).sum(-1, keepdim=True)) / tau
            grad.index_put_((bb, pp), rows.to(grad.dtype), accumulate=True)
        return grad, None, None, None, None, None, None, None


class ULD(DistillationLoss):
    """Universal Logit Distillation loss.

    Args:
        temperature: softmax temperature of both sides (ULD uses 1).
        pairing: ``"position"`` (j-th with j-th) or ``"span"`` (first token of each aligned group).
    """

    name = "uld"
    accepts_head_logits = True
    """The teacher side may be a :class:`ctkd.losses._vocab.HeadLogits` (chunked from hidden states)."""

    def __init__(self, temperature: float = 1.0, pairing: str = "position") -> None:
        check_positive("temperature", temperature)
        check_choice("pairing", pairing, ("position", "span"))
        self.temperature = float(temperature)
        self.pairing = pairing

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"alignment"}) if self.pairing == "span" else frozenset()

    def teacher_request(self) -> TeacherRequest:
        """What this loss can work from instead of the teacher's logits: each position's top-k log-probabilities at
        its temperature, any k (an approximation that improves with k; module docstring)."""
        return TeacherRequest(kind="topk", top_k=0, temperatures=(self.temperature,))

    def compute(self, student_logits: Tensor, teacher_logits: Tensor | HeadLogits | TopKLogProbs,
                student_mask: Tensor, teacher_mask: Tensor | None, *, alignment: SpanAlignment | None = None,
                **_: Any) -> LossOutput:
        if isinstance(teacher_logits, TopKLogProbs):
            if abs(teacher_logits.temperature - self.temperature) > 1e-9:
                raise ValueError(f"the teacher's top-k log-probabilities are at temperature {teacher_logits.temperature}"
                                 f" but uld uses temperature={self.temperature}; cache them at {self.temperature}")
            teacher_logits = teacher_logits.to(student_logits.device)
            teacher_mask = teacher_logits.valid
            t_len = teacher_mask.shape[1]
        else:
            t_len = teacher_logits.shape[1]
        if teacher_mask.shape[0] != student_logits.shape[0]:
            raise ValueError(f"batch sizes differ: the student has B={student_logits.shape[0]}, the teacher "
                             f"B={teacher_mask.shape[0]}; both must hold the same examples in the same order")
        s_idx, t_idx = answer_index(student_mask), answer_index(teacher_mask)
        s_pos = s_idx.pack(s_idx.flat - s_idx.seq * student_logits.shape[1])
        t_pos = t_idx.pack(t_idx.flat - t_idx.seq * t_len)
        if self.pairing == "span":
            s_pos, t_pos, valid = span_pairs(s_pos, t_pos, alignment, "first",
                                             student_lengths=s_idx.lengths, teacher_lengths=t_idx.lengths)
        else:
            s_pos, t_pos, valid = positional_pairs(s_pos, t_pos, s_idx.valid, t_idx.valid)
        b = torch.arange(valid.shape[0], device=valid.device).unsqueeze(1).expand_as(valid)[valid]
        num = int(b.numel())
        if num == 0:
            zero = zero_loss(student_logits)
            return LossOutput(loss=zero, components={"uld": zero.detach()}, num_tokens=0)
        teacher = teacher_logits.detach() if isinstance(teacher_logits, Tensor) else teacher_logits
        per_pair = _SortedL1.apply(student_logits, teacher, b, s_pos[valid], b, t_pos[valid],
                                   self.temperature, CHUNK_ELEMENTS)
        check_finite("logits", per_pair.detach())
        loss = per_pair.sum() / num
        return LossOutput(loss=loss, components={"uld": loss.detach()}, num_tokens=num)
