"""MultiLevelOT: multi-level optimal transport distillation across tokenizers (Cui et al., AAAI 2025).

Source: arXiv 2412.14528; specification in ``docs/method.md``. With teacher probabilities ``t`` and student
probabilities ``s`` on answer positions:

1. **Ranking.** Vocabulary columns are ordered once per sequence by their summed probability over the
   answer positions (``ranking="sequence"``); the student by its own summed probability
   (``student_columns="own"``, the authors' default) or by a greedy L1 matching of its columns to the
   teacher's ranked columns (``"greedy"``, the paper's ``Q*``). ``"token"`` ranks each position on its own
   (ULD), ``"batch"`` once for the whole batch (the authors' code).
2. **Top-k.** Keep the first ``top_k`` ranked columns on both sides, without renormalising.
3. **Token level** on paired answer positions (j-th with j-th, or aligned spans with ``pairing="span"``), at
   temperature ``tau_token``::

       had = mean_pairs sum_i |t_i - s_i|                 (holistic absolute difference)
       sl  = mean_pairs -sum_i t_i log s_i                (sequential logarithmic)

4. **Sequence level.** Cost between teacher position a and student position b,
   ``C_ab = sum_i |t_i(a) - s_i(b)|`` on the top-k vectors at temperature ``tau_sd`` (same column order as
   the temperature-1 ranking), over *all* answer positions of both sides; ``sd`` = mean over sequences of the
   entropic OT value ``<P, C>`` (:func:`ctkd.ot.sinkhorn`, uniform marginals, ``epsilon``, ``n_iters``,
   gradient mode ``grad``).
5. ``loss = had_weight * had + sl_weight * sl + sd_weight * sd``; the paper's alpha (0.15) is the training
   step's KD weight, not applied here.

Presets: ``"paper"`` (default) is exactly the above with k = 50, tau 1 / 2, epsilon 0.1, 20 iterations,
autodiff, weights 1 / 0.1 / 0.1. ``"reference"`` reproduces the authors' code (commit 712cfb4) as described in
``docs/method.md``; each of its quirks is a switch below, marked *[reference]*.

Cost: the teacher and student logits are read at answer rows only, in chunks
(:mod:`ctkd.losses._vocab`): one exponential pass per side gives the log-partition functions at both
temperatures and the column sums; the top-k columns are gathered; the student's gradient is written by one
fused pass. Nothing of size (N, V) is kept, except with ``normalize="std"`` (the normalised rows need
autograd) and ``top_k=None`` (the ablation that keeps every column).

Teacher side without logits: ``teacher_logits`` may also be a :class:`ctkd.losses._vocab.HeadLogits` (answer
hidden states and the output head; each chunk of rows is computed on demand, so a (B, L, Vt) tensor never
exists) or the :class:`ctkd.types.RankedTopK` that :meth:`MultiLevelOT.teacher_signal` returns (from a teacher
cache). :meth:`MultiLevelOT.teacher_request` says which signal that is; batch-level ranking depends on the
whole batch and cannot be cached per example.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ctkd.align import answer_index, positional_pairs, span_pairs
from ctkd.align.positional import AnswerIndex
from ctkd.losses._vocab import HeadLogits, TeacherRequest, log_softmax_at, vocab_stats
from ctkd.losses.base import DistillationLoss, check_choice, check_finite, check_positive, zero_loss
from ctkd.ot import GRAD_MODES, l1_cost, sinkhorn, sinkhorn_plain
from ctkd.types import LossOutput, RankedTopK, SpanAlignment

PAD_LOGP = -1.0e4
"""Log-probability stored on padded answer slots: exp() of it is exactly 0 in float32, and it is finite,
so products with zero weights never produce NaN."""

STD_EPS = 1e-4
"""*[reference]* added to the logits' standard deviation before dividing by it (the authors' constant)."""

PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        top_k=50, ranking="sequence", student_columns="own", greedy_candidates=256, normalize="none",
        tau_token=1.0, tau_sd=2.0, sd_probs="temperature", sl_form="paper", solver="log", epsilon=0.1,
        n_iters=20, grad="autodiff", sd_reduction="mean", sd_scale=1.0, padding="exclude",
        pairing="position", span="first", had_weight=1.0, sl_weight=0.1, sd_weight=0.1,
    ),
    "reference": dict(
        top_k=50, ranking="batch", student_columns="own", greedy_candidates=256, normalize="std",
        tau_token=1.0, tau_sd=2.0, sd_probs="softmax_topk", sl_form="reference", solver="plain", epsilon=0.1,
        n_iters=10, grad="autodiff", sd_reduction="sum", sd_scale=0.001, padding="zero",
        pairing="position", span="first", had_weight=1.0, sl_weight=0.1, sd_weight=0.1,
    ),
}

REFERENCE_KD_WEIGHT = 1.5
"""*[reference]* the authors' distil factor: the training step's KD weight for the reference preset."""

PAPER_KD_WEIGHT = 0.15
"""The paper's alpha: the training step's KD weight for the paper preset."""

_CHOICES = {
    "ranking": ("sequence", "token", "batch"),
    "student_columns": ("own", "greedy"),
    "normalize": ("none", "std"),
    "sd_probs": ("temperature", "softmax_topk"),
    "sl_form": ("paper", "reference"),
    "solver": ("log", "plain"),
    "grad": GRAD_MODES,
    "sd_reduction": ("mean", "sum"),
    "padding": ("exclude", "zero"),
    "pairing": ("position", "span"),
    "span": ("first", "mean"),
}


class MultiLevelOT(DistillationLoss):
    """MultiLevelOT loss; every switch of the method is a constructor argument.

    Args:
        preset: ``"paper"`` or ``"reference"``; the other arguments override the preset's values.
        top_k: ranked columns kept on each side (the paper's k); None keeps every column (ablation rows of the
            paper's Table 3 without truncation; the shorter vocabulary is zero-padded).
        ranking: ``"sequence"`` (paper), ``"token"`` (ULD), ``"batch"`` *[reference]*.
        student_columns: ``"own"`` (student ranked by its own mass) or ``"greedy"`` (greedy L1 matching of
            student columns to the teacher's ranked columns, among the student's ``greedy_candidates`` most
            probable columns; sequence or batch ranking only).
        greedy_candidates: size of the student candidate pool for ``"greedy"``.
        normalize: ``"none"`` or ``"std"`` *[reference]*: logits divided by their standard deviation over the
            vocabulary (+1e-4) before every softmax.
        tau_token: temperature of the token-level terms (``had``, ``sl``).
        tau_sd: temperature of the Sinkhorn cost vectors.
        sd_probs: ``"temperature"`` (softmax of the logits at ``tau_sd``, gathered at the ranked columns) or
            ``"softmax_topk"`` *[reference]* (a second softmax, at ``tau_sd``, over the k kept probabilities).
        sl_form: ``"paper"`` (``-sum t log s``) or ``"reference"`` *[reference]*
            (``-sum softmax(s^k) log_softmax(t^k)``: second softmax, teacher and student roles swapped).
        solver: ``"log"`` (:func:`ctkd.ot.sinkhorn`, uniform marginals) or ``"plain"`` *[reference]*
            (:func:`ctkd.ot.sinkhorn_plain`, plain space, rows then columns summing to 1).
        epsilon: entropic regularisation (the paper's lambda).
        n_iters: Sinkhorn iterations (paper 20, *[reference]* 10).
        grad: Sinkhorn gradient mode: ``"autodiff"``, ``"last_step"`` or ``"envelope"`` (log solver only).
        sd_reduction: ``"mean"`` over sequences, or ``"sum"`` *[reference]* over the batch.
        sd_scale: factor on each sequence's Sinkhorn value (*[reference]* 0.001).
        padding: ``"exclude"`` (only real answer positions take part) or ``"zero"`` *[reference]* (answers
            zero-padded to the batch's longest; token terms over every slot up to the shorter padded length,
            padded rows and columns take part in the Sinkhorn problem).
        pairing: ``"position"`` (j-th with j-th) or ``"span"`` (one pair per byte-aligned group; needs the
            ``alignment=`` input, see :mod:`ctkd.align.pairs`). Only the token-level terms use pairs.
        span: for ``pairing="span"``, ``"first"`` token of each group or ``"mean"`` of its distributions.
        had_weight, sl_weight, sd_weight: weights of the three terms (0 skips a term's computation).
    """

    name = "multilevel_ot"
    accepts_head_logits = True
    """The teacher side may be a :class:`ctkd.losses._vocab.HeadLogits` (chunked from hidden states)."""

    def __init__(self, preset: str = "paper", **overrides: Any) -> None:
        check_choice("preset", preset, tuple(PRESETS))
        unknown = sorted(set(overrides) - set(PRESETS[preset]))
        if unknown:
            raise ValueError(f"unknown multilevel_ot option(s) {unknown}; valid options: {sorted(PRESETS[preset])}")
        params = {**PRESETS[preset], **overrides}
        self.preset = preset
        for key, value in params.items():
            setattr(self, key, value)
        for key, choices in _CHOICES.items():
            check_choice(key, params[key], choices)
        if self.top_k is not None and not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"top_k must be an int >= 1 or None (all columns), got {self.top_k!r}")
        for key in ("tau_token", "tau_sd", "epsilon", "sd_scale"):
            check_positive(key, getattr(self, key))
        if not (isinstance(self.n_iters, int) and self.n_iters >= 1):
            raise ValueError(f"n_iters must be an int >= 1, got {self.n_iters!r}")
        if not (isinstance(self.greedy_candidates, int) and self.greedy_candidates >= 1):
            raise ValueError(f"greedy_candidates must be an int >= 1, got {self.greedy_candidates!r}")
        for key in ("had_weight", "sl_weight", "sd_weight"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{key} must be a number >= 0, got {value!r}")
        if self.student_columns == "greedy" and self.ranking == "token":
            raise ValueError("student_columns='greedy' matches columns ranked per sequence or batch; "
                             "it cannot be combined with ranking='token'")
        if self.pairing == "span" and self.padding == "zero":
            raise ValueError("pairing='span' pairs real answer tokens only; use padding='exclude' with it")
        if self.solver == "plain" and self.grad != "autodiff":
            raise ValueError("solver='plain' always differentiates through every iteration; use grad='autodiff'")

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"alignment"}) if self.pairing == "span" else frozenset()

    @property
    def default_kd_weight(self) -> float:
        """KD weight of the training step that matches this preset (paper alpha, or the authors' factor)."""
        return REFERENCE_KD_WEIGHT if self.preset == "reference" else PAPER_KD_WEIGHT

    # ----------------------------------------------------------------------------------------------
    # One side: answer rows -> ranked top-k log-probabilities (B, L, K)
    # ----------------------------------------------------------------------------------------------
    def _temperatures(self) -> tuple[float, ...]:
        taus = [float(self.tau_token)]
        if self.sd_probs == "temperature" and self.sd_weight > 0 and float(self.tau_sd) not in taus:
            taus.append(float(self.tau_sd))
        return tuple(taus)

    def _rows_source(self, logits: Tensor | HeadLogits, index: AnswerIndex) -> tuple[Tensor, Tensor, Tensor]:
        """(logits3d, b, p) from which answer rows are read; normalised rows for ``normalize="std"``."""
        seq_len = logits.shape[1]
        b, p = index.seq, index.flat - index.seq * seq_len
        if self.normalize == "none":
            return logits, b, p
        if isinstance(logits, HeadLogits):  # normalised chunk by chunk, never all rows at once
            return logits.normalized(STD_EPS), b, p
        rows = logits[b, p].float()
        rows = rows / (rows.std(dim=-1, keepdim=True) + STD_EPS)
        return rows.unsqueeze(0), torch.zeros_like(b), torch.arange(b.numel(), device=b.device)

    def ranked_topk(self, logits: Tensor | HeadLogits, mask: Tensor, *, match_to: RankedTopK | None = None,
                    top_k: int | None | str = "config") -> RankedTopK:
        """Ranked, truncated log-probabilities of one side's answer positions.

        Args:
            logits: (B, T, V) logits of one model; differentiable if it requires grad. Or a
                :class:`ctkd.losses._vocab.HeadLogits` (teacher side: no gradient, computed in chunks).
            mask: (B, T) bool answer mask.
            match_to: the teacher's signal, needed for ``student_columns="greedy"``.
            top_k: columns to keep (default: this loss's ``top_k``; None keeps all V).

        Returns:
            :class:`ctkd.types.RankedTopK` with L = this side's longest answer.
        """
        index = answer_index(mask)
        vocab = logits.shape[-1]
        top_k = self.top_k if top_k == "config" else top_k
        k = vocab if top_k is None else top_k
        if k > vocab:
            raise ValueError(f"top_k={k} is larger than a vocabulary of {vocab} columns; use top_k <= {vocab}")
        source, b, p = self._rows_source(logits, index)
        taus = self._temperatures()
        grouped = self.ranking in ("sequence", "batch")
        group = index.seq if self.ranking == "sequence" else torch.zeros_like(index.seq)
        stats = vocab_stats(
            source.detach(), b, p, temperatures=taus,
            group=group if grouped else None,
            num_groups=index.batch_size if self.ranking == "sequence" else 1,
            row_topk=0 if grouped else k,
        )
        check_finite("logits", stats.lse[taus[0]])
        if grouped:
            if match_to is not None and self.student_columns == "greedy":
                ranked = self._greedy_columns(source, b, p, index, stats, group, match_to, k)
            else:
                ranked = stats.colsum.topk(k, dim=-1, sorted=True).indices if k < vocab else \
                    stats.colsum.argsort(dim=-1, descending=True)
            ids = ranked[group]
        else:
            ids = stats.row_topk
        logps = log_softmax_at(source, b, p, ids, stats.lse, taus)
        logp_token = index.pack(logps[0], fill=PAD_LOGP)
        logp_sd = index.pack(logps[1], fill=PAD_LOGP) if len(logps) > 1 else logp_token
        return RankedTopK(ids=index.pack(ids, fill=0), logp_token=logp_token, logp_sd=logp_sd, valid=index.valid)

    def teacher_request(self) -> TeacherRequest:
        """What this loss reads from the teacher: its :class:`ctkd.types.RankedTopK` (a teacher cache stores it).

        Raises:
            ValueError: for settings whose teacher signal depends on more than one example (``ranking="batch"``)
                or keeps every column (``top_k=None``), which a per-example cache cannot hold.
        """
        if self.ranking == "batch":
            raise ValueError("multilevel_ot with ranking='batch' (the reference preset) ranks columns over the whole "
                             "batch, so its teacher signal cannot be cached per example; use ranking='sequence' (the "
                             "paper) or 'token' with a teacher cache, or a live teacher")
        if self.top_k is None:
            raise ValueError("multilevel_ot with top_k=None keeps every column: a teacher cache would hold the full "
                             "distributions; set top_k (the paper uses 50) or use a live teacher")
        return TeacherRequest(kind="ranked_topk", top_k=int(self.top_k), temperatures=self._temperatures(),
                              ranking=self.ranking, normalize=self.normalize)

    @torch.no_grad()
    def teacher_signal(self, teacher_logits: Tensor | HeadLogits, teacher_mask: Tensor) -> RankedTopK:
        """The teacher side of the loss, (B, L, K) ranked log-probabilities: what :meth:`compute` derives from
        ``teacher_logits`` and what it accepts instead of them. Exact at cache time: the ranking and the
        log-partition functions see every column."""
        return self.ranked_topk(teacher_logits.detach(), teacher_mask, top_k=self.top_k)

    @torch.no_grad()
    def _greedy_columns(self, source: Tensor, b: Tensor, p: Tensor, index: AnswerIndex, stats, group: Tensor,
                        teacher: RankedTopK, k: int) -> Tensor:
        """Greedy L1 matching of student columns to the teacher's ranked columns (the paper's ``Q*``).

        For each teacher rank i = 1..k in order, pick the unused student candidate column whose probability
        vector over the paired answer positions is closest in L1 to the teacher's i-th column. Candidates are the
        student's ``greedy_candidates`` most probable columns (by summed probability). A loop over the k ranks,
        vectorised over the batch.
        """
        num = min(max(k, self.greedy_candidates), source.shape[-1])
        candidates = stats.colsum.topk(num, dim=-1, sorted=True).indices  # (G, M)
        cand_logp = log_softmax_at(source.detach(), b, p, candidates[group], stats.lse, (float(self.tau_token),))[0]
        student = index.pack(cand_logp.exp())  # (B, Ls, M)
        s_pair, t_pair, valid = positional_pairs(student, teacher.logp_token.exp(), index.valid, teacher.valid)
        if self.ranking == "batch":  # one matching for the whole batch: stack the positions of every example
            s_pair = (s_pair * valid.unsqueeze(-1)).reshape(1, -1, num)
            t_pair = (t_pair * valid.unsqueeze(-1)).reshape(1, -1, t_pair.shape[-1])
        else:
            s_pair = s_pair * valid.unsqueeze(-1)
            t_pair = t_pair * valid.unsqueeze(-1)
        dist = torch.cdist(t_pair.transpose(1, 2).float(), s_pair.transpose(1, 2).float(), p=1.0)  # (G, K, M)
        used = torch.zeros_like(dist[:, 0], dtype=torch.bool)
        chosen = torch.empty(dist.shape[0], k, dtype=torch.long, device=dist.device)
        rows = torch.arange(dist.shape[0], device=dist.device)
        for i in range(k):
            pick = dist[:, i].masked_fill(used, float("inf")).argmin(dim=-1)
            chosen[:, i] = pick
            used[rows, pick] = True
        return candidates.gather(1, chosen)

    # ----------------------------------------------------------------------------------------------
    def compute(self, student_logits: Tensor, teacher_logits: Tensor | RankedTopK, student_mask: Tensor,
                teacher_mask: Tensor | None, *, alignment: SpanAlignment | None = None, **_: Any) -> LossOutput:
        k = self.top_k
        if k is not None:
            for name, logits in (("student", student_logits), ("teacher", teacher_logits)):
                if isinstance(logits, (Tensor, HeadLogits)) and k > logits.shape[-1]:
                    raise ValueError(f"top_k={k} is larger than the {name} vocabulary ({logits.shape[-1]} columns); "
                                     f"use top_k <= {logits.shape[-1]}")
        if isinstance(teacher_logits, RankedTopK):
            teacher = teacher_logits.to(student_logits.device)
            if teacher.valid.shape[0] != student_logits.shape[0]:
                raise ValueError(f"the teacher signal holds {teacher.valid.shape[0]} examples, the student batch "
                                 f"{student_logits.shape[0]}; both must hold the same examples in the same order")
        else:
            if isinstance(teacher_logits, HeadLogits) and teacher_logits.shape[0] != student_logits.shape[0]:
                raise ValueError(f"batch sizes differ: student_logits has B={student_logits.shape[0]}, the teacher's "
                                 f"head logits B={teacher_logits.shape[0]}; both must hold the same examples in order")
            teacher = self.teacher_signal(teacher_logits, teacher_mask)
        if not bool(student_mask.any()) or not bool(teacher.valid.any()):
            zero = zero_loss(student_logits)
            return LossOutput(loss=zero, components={c: zero.detach() for c in ("had", "sl", "sd")}, num_tokens=0)
        student = self.ranked_topk(student_logits, student_mask, match_to=teacher, top_k=k)
        t_tok, s_tok = _pad_columns(teacher.logp_token, student.logp_token)

        # token level: paired positions
        if self.padding == "zero":
            s_pair, t_pair, _ = positional_pairs(s_tok, t_tok, student.valid, teacher.valid)
            pair_valid = torch.ones(s_pair.shape[:2], dtype=torch.bool, device=s_pair.device)
        elif self.pairing == "span":
            s_pair, t_pair, pair_valid = span_pairs(
                s_tok, t_tok, alignment, self.span,
                student_lengths=student.lengths, teacher_lengths=teacher.lengths)
        else:
            s_pair, t_pair, pair_valid = positional_pairs(s_tok, t_tok, student.valid, teacher.valid)
        if self.pairing == "span" and self.span == "mean":  # mean of probabilities, then log
            s_prob, t_prob = s_pair.exp(), t_pair.exp()
            s_logp = s_prob.clamp_min(1e-30).log()
        else:
            s_prob, t_prob, s_logp = s_pair.exp(), t_pair.exp(), s_pair
        num_pairs = int(pair_valid.sum())
        weight = pair_valid.unsqueeze(-1).to(s_prob.dtype)
        denom = max(1, num_pairs)
        zero = zero_loss(student_logits)
        had = ((t_prob - s_prob).abs() * weight).sum() / denom if self.had_weight > 0 else zero
        if self.sl_weight > 0:
            # with top_k=None and different vocabulary sizes, SL runs over the columns both sides have
            kc = min(teacher.logp_token.shape[-1], student.logp_token.shape[-1])
            if self.sl_form == "paper":
                sl = -(t_prob[..., :kc] * s_logp[..., :kc] * weight).sum() / denom
            else:  # [reference] -sum softmax(s^k) * log_softmax(t^k): second softmax, roles swapped
                sl = -(torch.softmax(s_prob[..., :kc], -1) * torch.log_softmax(t_prob[..., :kc], -1)
                       * weight).sum() / denom
        else:
            sl = zero

        # sequence level: every teacher position against every student position
        sd = self._sequence_level(teacher, student) if self.sd_weight > 0 else zero
        loss = self.had_weight * had + self.sl_weight * sl + self.sd_weight * sd
        return LossOutput(loss=loss, components={"had": had.detach(), "sl": sl.detach(), "sd": sd.detach()},
                          num_tokens=num_pairs)

    def _sequence_level(self, teacher: RankedTopK, student: RankedTopK) -> Tensor:
        if self.sd_probs == "temperature":
            t_vec, s_vec = _pad_columns(teacher.logp_sd, student.logp_sd)
            t_vec, s_vec = t_vec.exp(), s_vec.exp()
        else:  # [reference] second softmax at tau_sd over the kept temperature-1 probabilities
            t_vec, s_vec = _pad_columns(teacher.logp_token, student.logp_token)
            t_vec = torch.softmax(t_vec.exp() / self.tau_sd, dim=-1)
            s_vec = torch.softmax(s_vec.exp() / self.tau_sd, dim=-1)
        if self.padding == "exclude":
            # padded rows/columns are masked out of the problem; zero them so the cost stays finite
            t_vec = t_vec * teacher.valid.unsqueeze(-1)
            s_vec = s_vec * student.valid.unsqueeze(-1)
        cost = l1_cost(t_vec, s_vec)  # (B, Lt, Ls): rows teacher positions, columns student positions
        if self.solver == "log":
            masks = (teacher.valid, student.valid) if self.padding == "exclude" else (None, None)
            values = sinkhorn(cost, epsilon=self.epsilon, n_iters=self.n_iters, row_mask=masks[0],
                              col_mask=masks[1], grad=self.grad).value
        else:
            plan = sinkhorn_plain(cost.float(), epsilon=self.epsilon, n_iters=self.n_iters)
            values = (plan * cost).sum(dim=(1, 2))
        values = values * self.sd_scale
        if self.sd_reduction == "sum":
            return values.sum()
        present = teacher.valid.any(1) & student.valid.any(1)
        return (values * present).sum() / present.sum().clamp_min(1)


def _pad_columns(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-pad (in probability: PAD_LOGP in log space) the shorter K of two (B, L, K) log-prob tensors."""
    ka, kb = a.shape[-1], b.shape[-1]
    if ka == kb:
        return a, b
    if ka < kb:
        return torch.nn.functional.pad(a, (0, kb - ka), value=PAD_LOGP), b
    return a, torch.nn.functional.pad(b, (0, ka - kb), value=PAD_LOGP)
