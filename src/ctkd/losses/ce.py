"""Cross-entropy of the student on its own answer labels: the SFT baseline, under the loss interface.

Where the labels come from: the ``labels=`` input, (B, Ts) long in the shifted convention of
:mod:`ctkd.types` (``labels[b, p]`` = id of the answer token ``p + 1``; ``IGNORE_INDEX`` elsewhere). The
collator fills it from the training target, which is the ground-truth answer in the labeled setting or the
teacher's generated answer in SeqKD and the unlabeled setting. Every position of ``student_mask`` must carry a
label. The teacher inputs are ignored (pass None).

``loss = -(1 / N) sum_{answer positions} log softmax(z / temperature)[label]`` (mean over answer tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ctkd.align import answer_index
from ctkd.losses._vocab import log_softmax_at, vocab_stats
from ctkd.losses.base import DistillationLoss, check_finite, check_positive, zero_loss
from ctkd.types import IGNORE_INDEX, LossOutput


class CrossEntropy(DistillationLoss):
    """Token cross-entropy on the answer positions (SFT).

    Args:
        temperature: divides the logits before the softmax (1 for plain SFT).
    """

    name = "ce"
    needs = frozenset({"labels"})
    uses_teacher = False

    def __init__(self, temperature: float = 1.0) -> None:
        check_positive("temperature", temperature)
        self.temperature = float(temperature)

    def compute(self, student_logits: Tensor, teacher_logits: Any, student_mask: Tensor,
                teacher_mask: Tensor | None, *, labels: Tensor, **_: Any) -> LossOutput:
        if tuple(labels.shape) != tuple(student_mask.shape):
            raise ValueError(f"labels must be (B, Ts) = {tuple(student_mask.shape)} like student_mask, got "
                             f"{tuple(labels.shape)}")
        index = answer_index(student_mask)
        if index.num_tokens == 0:
            zero = zero_loss(student_logits)
            return LossOutput(loss=zero, components={"ce": zero.detach()}, num_tokens=0)
        seq_len, vocab = student_logits.shape[1], student_logits.shape[2]
        b, p = index.seq, index.flat - index.seq * seq_len
        target = labels.to(student_logits.device)[b, p]
        bad = (target < 0) | (target >= vocab)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"labels hold {int(target[first])} at answer position ({int(b[first])}, {int(p[first])}) but must be a "
                f"token id in [0, {vocab}) wherever student_mask is True (IGNORE_INDEX={IGNORE_INDEX} only elsewhere)"
            )
        tau = self.temperature
        stats = vocab_stats(student_logits.detach(), b, p, temperatures=(tau,))
        check_finite("student_logits", stats.lse[tau])
        logp = log_softmax_at(student_logits, b, p, target.unsqueeze(1), stats.lse, (tau,))[0]
        loss = -logp.sum() / index.num_tokens
        return LossOutput(loss=loss, components={"ce": loss.detach()}, num_tokens=index.num_tokens)
