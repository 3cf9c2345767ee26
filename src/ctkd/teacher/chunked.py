"""Teacher logits that never fill memory: the answer logits as hidden states and an output head.

With a 150k-260k vocabulary the teacher's logits dominate memory (B=8, L=512, V=262,144 is 4.3 GB in float32).
Every statistic a loss takes from the teacher (log-partition functions, per-sequence column sums, top-k
columns, log-probabilities at a few columns, sorted probabilities) is computed row by row, so the teacher is run
for its final hidden states at the answer positions only, (B, L, H), and the logits of a chunk of positions are
computed when a statistic reads them: :class:`ctkd.losses._vocab.HeadLogits`. Peak memory is one
(chunk, V) float32 tensor; the work is the same (N, H) x (H, V) product as the full logits, in tall slices.

Chunk size: :attr:`ctkd.config.TeacherConfig.chunk_size` positions (0: automatic,
:func:`ctkd.losses._vocab.head_chunk_rows`: 64M elements per chunk, 256 positions for a 262,144 vocabulary).
Results equal the unchunked path to float32 rounding (``tests/teacher/test_chunked.py`` checks 1e-5).
"""

from __future__ import annotations

from torch import Tensor

from ctkd.forward import head_parameters
from ctkd.losses._vocab import HeadLogits, head_chunk_rows

__all__ = ["HeadLogits", "head_chunk_rows", "teacher_head_logits"]


def teacher_head_logits(model, hidden: Tensor, vocab_size: int, chunk_size: int = 0) -> HeadLogits:
    """:class:`HeadLogits` of ``model``'s output head (bias and final soft-capping included) over ``hidden``.

    Args:
        model: the causal LM whose head is used (possibly DDP-wrapped).
        hidden: (B, L, H) final hidden states at the packed answer positions
            (:func:`ctkd.forward.answer_forward` with ``hidden=True``).
        vocab_size: the tokenizer's real vocabulary size (head rows kept).
        chunk_size: positions per chunk (0: automatic).
    """
    weight, bias, cap = head_parameters(getattr(model, "module", model), vocab_size)
    return HeadLogits(hidden, weight, bias, cap, chunk_rows=chunk_size)
