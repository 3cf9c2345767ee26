"""How student and teacher tokens correspond.

- :mod:`ctkd.align.positional`: each example's answer positions in order, packed into (B, L) tensors.
- :mod:`ctkd.align.pairs`: pairing answer positions for token-level terms, by position or by aligned span.
- :mod:`ctkd.align.offsets`: byte-offset alignment, the smallest groups of answer tokens whose text
  boundaries agree on both sides (from the tokenizers' offset mappings), stacked into a
  :class:`ctkd.types.SpanAlignment`.
"""

from ctkd.align.offsets import (
    GroupSpans,
    align_answer_offsets,
    alignment_matrix,
    group_spans,
    one_to_one_share,
    stack_alignments,
    token_ranges,
)
from ctkd.align.pairs import SPAN_MODES, positional_pairs, span_pairs
from ctkd.align.positional import AnswerIndex, answer_index, paired_prefix

__all__ = [
    "SPAN_MODES",
    "AnswerIndex",
    "GroupSpans",
    "align_answer_offsets",
    "alignment_matrix",
    "answer_index",
    "group_spans",
    "one_to_one_share",
    "paired_prefix",
    "positional_pairs",
    "span_pairs",
    "stack_alignments",
    "token_ranges",
]
