"""MinED: FuseLLM's cross-tokenizer distillation (Wan et al., ICLR 2024, arXiv 2401.10491).

Source: "Knowledge Fusion of Large Language Models", section 3.3 and appendix (token alignment), used as a
cross-tokenizer distillation baseline by MultiLevelOT (``docs/method.md``). Re-implemented from the paper;
no code is taken from the authors' repository (it has no licence).

Pieces (each in its own module):

1. **Token alignment** (:mod:`ctkd.align.mined`, computed per example by the collator on the CPU with
   ``extras=("mined_alignment",)``): for each student answer token, the index of its aligned teacher answer
   token, or -1. Input ``mined_alignment`` (B, Ls) long, padded with -1.
2. **Vocabulary map** (:mod:`ctkd.align.vocab_map`, built once per tokenizer pair and cached): each teacher
   id -> the student id whose text is nearest in edit distance (exact matches first). Given at construction.
3. **The loss** (here). At every aligned student answer position ``r`` (student row ``(b, p)``, teacher row
   ``(b, p')``), with ``tau`` the temperature and ``K`` = ``top_k``::

       t_r   = softmax(z_T[b, p'] / tau)                    (Vt,)   teacher distribution
       I_r   = top-K ids of t_r                                       (FuseLLM keeps the top 10)
       q_r,u = sum_{i in I_r, map(i) = u} t_r,i   [/ sum_{i in I_r, map(i) >= 0} t_r,i]   (Vs,) mapped target
       s_r   = softmax(z_S[b, p] / tau)                     (Vs,)   student distribution

       ce    = - sum_u q_r,u log s_r,u                        (FuseLLM's fusion loss is this cross-entropy)
       kl    =   sum_u q_r,u log (q_r,u / s_r,u)   = ce - H(q_r)

   ``loss = mean over aligned positions r`` of ``ce`` or ``kl`` (``divergence``).

Choices where the paper is vague, all written down here:

- **Renormalisation** (``renormalize=True``, default): the target ``q`` is the teacher's top-K distribution
  conditioned on its mapped entries (divided by the kept mass), so ``q`` sums to 1 and ``kl`` is a true
  divergence (>= 0, zero iff the student matches). FuseLLM stores only the top-K of each source model, so
  a normalised top-K distribution is what it can train on. ``renormalize=False`` keeps the raw teacher
  probabilities (the mass outside the top-K, or on unmapped ids, is simply lost; ``kl`` is then the
  restriction of the KL sum to the kept ids and can be negative).
- **Unmapped ids**: teacher ids that map to -1 (holes) or, with ``max_distance=d``, whose map has edit
  distance above ``d`` carry no mass into ``q``. ``max_distance=None`` (default, FuseLLM) maps every id.
- **Merged mass**: several teacher ids that map to the same student id add up (``q_r,u`` sums them); this
  matters for ``kl``'s entropy term only (``ce`` is linear in ``q``).
- **Skipped positions**: unaligned student positions (alignment -1) take no part; FuseLLM falls back to
  the one-hot ground truth there, which the training step's cross-entropy already is. A position whose
  top-K holds no mapped id (only possible with ``max_distance`` or holes) is skipped too. ``num_tokens`` is
  the number of positions that took part.
- **Temperature** applies to both sides; no ``tau**2`` factor (the training step weighs the terms).

Cost: logits are read at aligned rows only, in chunks (:mod:`ctkd.losses._vocab`): one pass over the
teacher rows for the log-partition function and the top-K ids, one over the student rows for the
log-partition function, then K gathered columns per row; the student's gradient is written by one fused
chunked pass. Nothing of size (N, V) or (B, T, V) is built.

Components: ``"mined"`` (the loss) and ``"mapped_mass"``, the mean teacher probability that reached the
student vocabulary before renormalisation (how much of the teacher signal the top-K and the map keep).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from ctkd.align import answer_index
from ctkd.align.positional import AnswerIndex
from ctkd.align.vocab_map import VocabMap
from ctkd.losses._vocab import log_softmax_at, vocab_stats
from ctkd.losses.base import DistillationLoss, check_choice, check_finite, check_positive, zero_loss
from ctkd.types import LossOutput

DIVERGENCES: tuple[str, ...] = ("ce", "kl")

FUSELLM_TOP_K = 10
"""Teacher entries kept per position in FuseLLM (the source models' stored top-10)."""


def _load_map(vocab_map: Any) -> tuple[Tensor, Tensor | None]:
    """(teacher_to_student (Vt,) long, distance (Vt,) int or None) from a VocabMap, a tensor or a file path."""
    if isinstance(vocab_map, (str, os.PathLike)):
        vocab_map = VocabMap.load(vocab_map)
    if isinstance(vocab_map, VocabMap):
        return vocab_map.teacher_to_student.long().cpu(), vocab_map.distance.cpu()
    if isinstance(vocab_map, Tensor):
        if vocab_map.dim() != 1 or vocab_map.is_floating_point() or vocab_map.dtype == torch.bool:
            raise ValueError(
                f"vocab_map as a tensor must be (Vt,) integer teacher -> student ids, got shape "
                f"{tuple(vocab_map.shape)} and dtype {vocab_map.dtype}; build one with "
                "ctkd.align.vocab_map.build_vocab_map"
            )
        return vocab_map.long().cpu(), None
    raise ValueError(
        f"vocab_map must be a VocabMap, a (Vt,) long tensor or the path of a saved VocabMap, got "
        f"{type(vocab_map).__name__}; build one with ctkd.align.vocab_map.build_vocab_map(teacher_tokenizer, "
        "student_tokenizer)"
    )


def _empty(student_logits: Tensor) -> LossOutput:
    """The result when no position takes part: zero, connected to the student logits."""
    zero = zero_loss(student_logits)
    return LossOutput(loss=zero, components={"mined": zero.detach(), "mapped_mass": zero.detach()}, num_tokens=0)


class MinED(DistillationLoss):
    """MinED (FuseLLM) distillation loss on aligned answer positions.

    Args:
        vocab_map: the teacher -> student map: a :class:`ctkd.align.vocab_map.VocabMap`, a (Vt,) long tensor
            (-1 = no map) or the path of a saved VocabMap.
        top_k: teacher entries kept per position (FuseLLM: 10).
        temperature: softmax temperature of both sides.
        divergence: ``"ce"`` (``-sum q log s``, FuseLLM) or ``"kl"`` (``sum q log(q / s)``).
        renormalize: divide the mapped top-K mass by its sum (module docstring).
        max_distance: drop teacher ids whose map has edit distance above this (needs a VocabMap); None keeps all.

    Call inputs: the usual logits and masks, plus ``mined_alignment`` (B, Ls) long: for the j-th student
    answer token of example b, the index of its aligned teacher answer token (0-based among that example's
    teacher answer tokens) or -1; Ls is at least the longest student answer, padding is -1.
    """

    name = "mined"
    needs = frozenset({"mined_alignment"})

    def __init__(self, vocab_map: Any, top_k: int = FUSELLM_TOP_K, temperature: float = 1.0,
                 divergence: str = "ce", renormalize: bool = True, max_distance: int | None = None) -> None:
        if not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        check_positive("temperature", temperature)
        check_choice("divergence", divergence, DIVERGENCES)
        if max_distance is not None and not (isinstance(max_distance, int) and max_distance >= 0):
            raise ValueError(f"max_distance must be None or an int >= 0, got {max_distance!r}")
        mapping, distance = _load_map(vocab_map)
        if max_distance is not None:
            if distance is None:
                raise ValueError("max_distance needs the map's edit distances: pass a VocabMap (not a bare tensor)")
            mapping = torch.where(distance > max_distance, torch.full_like(mapping, -1), mapping)
        if mapping.numel() == 0 or int(mapping.max()) < 0:
            raise ValueError("vocab_map maps no teacher id to a student id (all -1); check how it was built")
        if int(mapping.min()) < -1:
            raise ValueError(
                f"vocab_map holds {int(mapping.min())}; valid values are student ids >= 0, or -1 for no map"
            )
        self.top_k = top_k
        self.temperature = float(temperature)
        self.divergence = divergence
        self.renormalize = bool(renormalize)
        self.max_distance = max_distance
        self._teacher_vocab_size = int(mapping.numel())
        self._map = mapping
        self._map_max = int(mapping.max())

    @classmethod
    def from_tokenizers(cls, teacher_tokenizer: Any, student_tokenizer: Any, *, cache_dir: Any = None,
                        **params: Any) -> "MinED":
        """Build the vocabulary map of a tokenizer pair (:func:`ctkd.align.vocab_map.build_vocab_map`, cached under
        ``cache_dir``) and the loss with the other ``params``."""
        from ctkd.align.vocab_map import build_vocab_map

        return cls(build_vocab_map(teacher_tokenizer, student_tokenizer, cache_dir=cache_dir), **params)

    def _pairs(self, alignment: Any, s_idx: AnswerIndex, t_idx: AnswerIndex, device: torch.device
               ) -> tuple[Tensor, Tensor, Tensor]:
        """Validate ``mined_alignment``; return (b, student position, teacher position) of each aligned pair."""
        if not isinstance(alignment, Tensor) or alignment.dim() != 2 or alignment.is_floating_point():
            shape = tuple(alignment.shape) if isinstance(alignment, Tensor) else type(alignment).__name__
            raise ValueError(
                f"mined_alignment must be a (B, Ls) integer tensor (teacher answer index of each student answer token, "
                f"-1 where unaligned), got {shape}; compute it with DistillCollator(..., extras=('mined_alignment',))"
            )
        bsz, length = s_idx.batch_size, s_idx.max_len
        if alignment.shape[0] != bsz or alignment.shape[1] < length:
            raise ValueError(
                f"mined_alignment has shape {tuple(alignment.shape)} but the batch has B={bsz} examples whose longest "
                f"student answer has {length} tokens: it must be (B, Ls) with Ls >= {length}; build it from the same "
                "batch (the collator does)"
            )
        align = alignment.to(device=device, dtype=torch.long)
        columns = torch.arange(align.shape[1], device=device).unsqueeze(0)
        real = columns < s_idx.lengths.to(device).unsqueeze(1)
        bad_pad = (~real) & (align != -1)
        bad_value = real & ((align < -1) | (align >= t_idx.lengths.to(device).unsqueeze(1)))
        for what, bad in (("padding (beyond the student answer) must be -1", bad_pad),
                          ("values must be -1 or a teacher answer index below the teacher answer length", bad_value)):
            if bool(bad.any()):
                b, j = (int(v) for v in bad.nonzero()[0])
                raise ValueError(
                    f"mined_alignment[{b}, {j}] = {int(align[b, j])}: {what} (example {b} has "
                    f"{int(s_idx.lengths[b])} student and {int(t_idx.lengths[b])} teacher answer tokens); build the "
                    "alignment from the same batch (the collator does)"
                )
        align = align[:, :length]
        valid = align >= 0
        b, j = valid.nonzero(as_tuple=True)
        return b, s_idx.position[b, j], t_idx.position[b, align[b, j]]

    def compute(self, student_logits: Tensor, teacher_logits: Tensor, student_mask: Tensor, teacher_mask: Tensor,
                *, mined_alignment: Tensor, **_: Any) -> LossOutput:
        if not isinstance(teacher_logits, Tensor):
            raise ValueError(
                f"loss 'mined' needs the teacher's logits (B, Tt, Vt), got {type(teacher_logits).__name__}: a "
                "teacher cache of ranked top-k values (MultiLevelOT's) does not carry the teacher's own top-k ids; "
                "use a live teacher"
            )
        vt, vs = teacher_logits.shape[-1], student_logits.shape[-1]
        if vt != self._teacher_vocab_size:
            raise ValueError(
                f"the vocab_map has {self._teacher_vocab_size} entries but teacher_logits have Vt={vt} columns: the "
                "map must be built for this teacher's tokenizer, and the logits sliced to its vocabulary (ctkd.models)"
            )
        if self._map_max >= vs:
            raise ValueError(
                f"the vocab_map points to student id {self._map_max} but student_logits have Vs={vs} columns: the map "
                "must be built for this student's tokenizer"
            )
        if self.top_k > vt:
            raise ValueError(f"top_k={self.top_k} exceeds the teacher vocabulary (Vt={vt}); use top_k <= {vt}")
        device = student_logits.device
        s_idx, t_idx = answer_index(student_mask), answer_index(teacher_mask)
        b, sp, tp = self._pairs(mined_alignment, s_idx, t_idx, device)
        if b.numel() == 0:
            return _empty(student_logits)
        tau = self.temperature
        teacher = teacher_logits.detach()
        t_stats = vocab_stats(teacher, b, tp, temperatures=(tau,), row_topk=self.top_k)
        check_finite("teacher_logits", t_stats.lse[tau])
        ids = t_stats.row_topk  # (N, K)
        (t_logp,) = log_softmax_at(teacher, b, tp, ids, t_stats.lse, (tau,))
        if self._map.device != ids.device:
            self._map = self._map.to(ids.device)  # moved once, not every call
        target = self._map[ids]  # (N, K) student ids, -1 where unmapped
        kept = target >= 0
        weight = t_logp.exp() * kept  # (N, K) teacher probability carried to the student vocabulary
        mass = weight.sum(dim=1)
        rows = mass > 0
        if not bool(rows.all()):  # positions with nothing mapped are skipped (module docstring)
            b, sp, tp, target, kept, weight, mass = (x[rows] for x in (b, sp, tp, target, kept, weight, mass))
        num = int(b.numel())
        if num == 0:
            return _empty(student_logits)
        if self.renormalize:
            weight = weight / mass.unsqueeze(1)
        s_stats = vocab_stats(student_logits, b, sp, temperatures=(tau,))
        check_finite("student_logits", s_stats.lse[tau])
        safe_target = target.clamp_min(0)
        (s_logp,) = log_softmax_at(student_logits, b, sp, safe_target, s_stats.lse, (tau,))
        per_row = -(weight * s_logp).sum(dim=1)  # cross-entropy; duplicates of a student id add up linearly
        if self.divergence == "kl":
            # sum_u q_u log q_u with q_u merged over teacher ids sharing student id u: group (row, u) pairs
            key = torch.arange(num, device=device).unsqueeze(1) * vs + safe_target
            unique, inverse = torch.unique(key[kept], return_inverse=True)
            merged = torch.zeros(unique.numel(), dtype=weight.dtype, device=device).index_add_(0, inverse, weight[kept])
            q_at = torch.ones_like(weight)
            q_at[kept] = merged[inverse]
            per_row = per_row + (weight * torch.log(q_at.clamp_min(torch.finfo(q_at.dtype).tiny))).sum(dim=1)
        loss = per_row.sum() / num
        return LossOutput(loss=loss, components={"mined": loss.detach(), "mapped_mass": mass.mean().detach()},
                          num_tokens=num)
