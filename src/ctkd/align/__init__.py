"""How student and teacher tokens correspond.

- :mod:`ctkd.align.positional`: the j-th answer token of one side with the j-th of the other (the
  paper's and ULD's pairing), and the packing of answer positions into (B, L) tensors.
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
from ctkd.align.positional import AnswerIndex, answer_index, paired_prefix

__all__ = [
    "AnswerIndex",
    "GroupSpans",
    "align_answer_offsets",
    "alignment_matrix",
    "answer_index",
    "group_spans",
    "one_to_one_share",
    "paired_prefix",
    "stack_alignments",
    "token_ranges",
]
