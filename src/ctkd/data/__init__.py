"""Task data: readers, prompts, and the two-tokenizer collator.

- :mod:`ctkd.data.readers`: :func:`load_task` and the :data:`TASKS` registry (QED, DialogSum,
  FairytaleQA in their original formats, and a generic JSONL format), with the file layouts.
- :mod:`ctkd.data.examples`: the :class:`Example` record, :func:`write_examples_jsonl`, and the
  malformed-row policy (skip, count, warn; an empty split is an error).
- :mod:`ctkd.data.prompts`: :class:`PromptConfig`, :class:`PromptBuilder`, :data:`DEFAULT_PROMPTS`
  (student zero-shot plain, teacher few-shot with its chat template).
- :mod:`ctkd.data.collator`: :class:`DistillCollator` (tokenize once with ``prepare``, pad with
  ``collate``) and its policies (BOS, EOS, padding, left truncation, dropping).
- :mod:`ctkd.data.builtin`: :func:`builtin_data_dir`, the small QED copy shipped in the package.
- :mod:`ctkd.data.hub`: optional loading from the Hugging Face hub (``hf://`` data dirs).
"""

from ctkd.data.builtin import builtin_data_dir
from ctkd.data.collator import (
    DistillCollator,
    PairFeatures,
    PreparationReport,
    PreparedFeatures,
    SideConfig,
    SideFeatures,
)
from ctkd.data.examples import EmptyDatasetError, Example, MalformedRowWarning, write_examples_jsonl
from ctkd.data.prompts import DEFAULT_PROMPTS, ChatTurnFormat, PromptBuilder, PromptConfig, chat_turn_format, default_prompt
from ctkd.data.readers import SPLITS, TASKS, load_task

__all__ = [
    "DEFAULT_PROMPTS",
    "SPLITS",
    "TASKS",
    "ChatTurnFormat",
    "DistillCollator",
    "EmptyDatasetError",
    "Example",
    "MalformedRowWarning",
    "PairFeatures",
    "PreparationReport",
    "PreparedFeatures",
    "PromptBuilder",
    "PromptConfig",
    "SideConfig",
    "SideFeatures",
    "builtin_data_dir",
    "chat_turn_format",
    "default_prompt",
    "load_task",
    "write_examples_jsonl",
]
