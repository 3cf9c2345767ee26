"""How student and teacher tokens correspond.

- :mod:`ctkd.align.positional`: each example's answer positions in order, packed into (B, L) tensors.
- :mod:`ctkd.align.pairs`: pairing answer positions for token-level terms, by position or by aligned span.
"""

from ctkd.align.pairs import SPAN_MODES, positional_pairs, span_pairs
from ctkd.align.positional import AnswerIndex, answer_index, paired_prefix

__all__ = ["SPAN_MODES", "AnswerIndex", "answer_index", "paired_prefix", "positional_pairs", "span_pairs"]
