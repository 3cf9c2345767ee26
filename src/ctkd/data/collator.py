"""The two-tokenizer collator: one example, two prompts, two tokenizations, one :class:`DistillBatch`.

Work is split in two so that nothing is dropped during training:

- :meth:`DistillCollator.prepare` (or :meth:`~DistillCollator.prepare_features`) tokenizes every
  example once, for both sides, applies the length policy, drops what cannot fit, and reports the
  counts before training starts;
- :meth:`DistillCollator.collate` (also ``__call__``, so it can be a ``DataLoader``'s
  ``collate_fn``) only pads prepared features into tensors. It never drops an example, so a batch is
  never empty unless it is given no features (an error). If every example is dropped, ``prepare``
  raises instead of returning an empty data set.

Policies, per side (:class:`SideConfig`)
----------------------------------------
Tokenization (what the model sees)
    The prompt is ``builder.render(example)``; the answer text is ``builder.answer_text(example)``
    (answer prefix + target). The prompt is tokenized alone, exactly as at inference; the answer
    tokens are the tokens that follow those prompt tokens when prompt + answer text is tokenized as
    one string, so they are the model's natural segmentation of the answer in context. (Tokenizing
    the answer on its own would add SentencePiece's dummy-prefix space: Mistral tokenizes
    ``" Paris"`` alone as ``["▁", "▁Paris"]`` but ``"Answer: Paris"`` as ``[..., ":", "▁Paris"]``.)
    When the joint tokenization does not begin with the prompt's tokens (a token straddles the
    boundary, e.g. a prompt ending in a space followed by a word), the answer is tokenized on its
    own instead; such examples are counted (``boundary_fallbacks``) and a warning suggests moving
    the space into the answer prefix. All tokenization is without special tokens; BOS and EOS are
    added by the explicit policies below (so a tokenizer that appends EOS by itself cannot put one
    between prompt and answer). Fast tokenizers are required (offsets).
BOS
    ``add_bos=None`` (automatic) prepends ``bos_token_id`` iff the tokenizer adds it by itself
    (tested on a probe string) and the rendered prompt does not already start with the BOS text (a
    chat template that writes ``<s>`` or ``<bos>``).
EOS
    ``append_eos=True`` appends one end token to the answer and counts it as an answer token (the
    model learns to stop): ``eos_token`` if given, else the chat template's end-of-turn token when
    the prompt is rendered with one (``<|im_end|>``, ``<end_of_turn>``), else the tokenizer's EOS.
Padding
    Right padding, with ``tokenizer.pad_token_id``, or its ``eos_token_id`` when it has no pad token
    (padding is masked by ``attention_mask`` and ``labels``, so the id only has to be valid).
Masks
    The shifted convention of :mod:`ctkd.types`: ``answer_mask[b, p]`` is True iff token ``p + 1`` is
    an answer token (EOS included when appended), ``labels[b, p]`` is that token's id there and
    ``-100`` elsewhere.
Length
    ``max_length`` bounds prompt + answer (+ EOS). Too long: the prompt is cut from the left (the
    oldest tokens go first, so few-shot demonstrations go before the example's own context),
    keeping BOS when present; the answer is never cut. When fewer than ``min_prompt_tokens`` prompt
    tokens (BOS counted) would remain, the example is dropped, on both sides, and counted by side and
    reason; :meth:`prepare` warns how many were dropped and why.
Offsets (for byte-offset alignment)
    Each side keeps its answer text and the character offsets of its answer tokens relative to
    that text (EOS excluded; ``has_eos`` says whether one follows). With ``alignment=True`` the
    collator calls ``ctkd.align.offsets.align_answer_offsets`` per example in :meth:`prepare` and
    ``stack_alignments`` in :meth:`collate` to fill ``DistillBatch.alignment``.
Method extras
    ``extras=("mined_alignment",)`` (or ``{"mined_alignment": {"match": "first"}}`` with options) computes
    method-specific per-example data in :meth:`prepare` and stacks it into ``DistillBatch.extras`` in
    :meth:`collate`. ``"mined_alignment"``: MinED's token alignment (:class:`ctkd.align.mined.MinEDAligner`),
    for each student answer token the index of its aligned teacher answer token or -1, stacked (B, Ls) and
    padded with -1.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from ctkd.data.examples import Example
from ctkd.data.prompts import PromptBuilder, default_prompt
from ctkd.types import IGNORE_INDEX, DistillBatch, TokenizedSide

logger = logging.getLogger(__name__)

BOS_PROBE_TEXT = "a"
"""Text tokenized with special tokens to find out whether a tokenizer adds a BOS by itself."""

SIDES = ("student", "teacher")

PREPARE_CHUNK = 256
"""Examples tokenized per call in :meth:`DistillCollator.prepare` (one progress-bar update each)."""

METHOD_EXTRAS = ("mined_alignment",)
"""Names accepted by ``DistillCollator(extras=...)``."""


@dataclass(frozen=True)
class SideConfig:
    """Tokenization policy of one side (see the module docstring).

    Attributes:
        max_length: most tokens of prompt + answer (+ EOS); longer prompts are cut from the left.
        append_eos: append an end token to the answer and train on it.
        eos_token: the end token to append (``None``: chat end-of-turn token, else the tokenizer's EOS).
        add_bos: prepend the tokenizer's BOS (``None``: when the tokenizer adds one by itself).
        min_prompt_tokens: fewest prompt tokens (BOS counted) an example may keep after truncation;
            an example that would keep fewer is dropped. At least 1: the first answer token is
            predicted from the position before it.
    """

    max_length: int = 1024
    append_eos: bool = True
    eos_token: str | None = None
    add_bos: bool | None = None
    min_prompt_tokens: int = 1

    def __post_init__(self) -> None:
        if self.min_prompt_tokens < 1:
            raise ValueError(f"min_prompt_tokens must be >= 1 (a token must precede the answer), got {self.min_prompt_tokens}")
        if self.max_length <= self.min_prompt_tokens:
            raise ValueError(f"max_length={self.max_length} leaves no room for an answer after min_prompt_tokens={self.min_prompt_tokens}")


@dataclass(frozen=True)
class SideFeatures:
    """One side of one prepared example (lists, so features pickle cheaply to DataLoader workers).

    Attributes:
        input_ids: prompt tokens (truncated, BOS kept) + answer tokens (+ EOS).
        answer_start: index in ``input_ids`` of the first answer token.
        answer_length: number of answer tokens, EOS included when appended.
        answer_text: the answer string that was tokenized (answer prefix + target).
        answer_offsets: ``(start, end)`` character offsets in ``answer_text`` of each answer token, EOS
            excluded.
        has_eos: whether an end token follows the answer tokens.
        prompt_tokens_dropped: prompt tokens removed by left truncation.
        boundary_fallback: the answer was tokenized on its own (see "Tokenization").
    """

    input_ids: list[int]
    answer_start: int
    answer_length: int
    answer_text: str
    answer_offsets: list[tuple[int, int]]
    has_eos: bool
    prompt_tokens_dropped: int = 0
    boundary_fallback: bool = False


@dataclass(frozen=True)
class PairFeatures:
    """Both sides of one prepared example, plus its alignment groups and method extras when requested."""

    example_id: str
    student: SideFeatures
    teacher: SideFeatures
    alignment: tuple[list[int], list[int]] | None = None
    extras: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparationReport:
    """What :meth:`DistillCollator.prepare` did.

    Attributes:
        num_examples: examples given.
        num_kept: examples kept (both sides fit).
        dropped: ``"<side>: <reason>"`` -> number of examples dropped for it (an example too long on
            both sides counts under both).
        dropped_ids: ids of the dropped examples, in input order.
        truncated: side -> number of kept examples whose prompt was cut.
        boundary_fallbacks: side -> number of examples whose answer was tokenized on its own.
    """

    num_examples: int
    num_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_ids: list[str] = field(default_factory=list)
    truncated: dict[str, int] = field(default_factory=dict)
    boundary_fallbacks: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedFeatures:
    """Prepared features (input order, dropped examples left out) and the report of the preparation."""

    features: list[PairFeatures]
    report: PreparationReport


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer(BOS_PROBE_TEXT, add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def _token_id(tokenizer: Any, token: str, what: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if token_id is None or (token_id == unk and token != tokenizer.unk_token):
        raise ValueError(f"{what} {token!r} is not a token of {type(tokenizer).__name__}'s vocabulary; set a valid eos_token")
    return int(token_id)


class _Side:
    """One side's tokenizer, prompt builder and policy, with its special ids resolved."""

    def __init__(self, name: str, tokenizer: Any, builder: PromptBuilder, config: SideConfig) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"the {name} tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; the collator needs "
                "character offsets (load it with AutoTokenizer.from_pretrained(..., use_fast=True))"
            )
        self.name, self.tokenizer, self.builder, self.config = name, tokenizer, builder, config
        self.add_bos = _adds_bos(tokenizer) if config.add_bos is None else config.add_bos
        self.bos_id = tokenizer.bos_token_id
        if self.add_bos and self.bos_id is None:
            raise ValueError(f"add_bos=True for the {name} side but its tokenizer has no BOS token")
        self.eos_id: int | None = None
        if config.append_eos:
            token = config.eos_token or builder.end_of_turn or tokenizer.eos_token
            if token is None:
                raise ValueError(
                    f"append_eos=True for the {name} side but its tokenizer has no EOS token and its prompt no "
                    "end-of-turn token; set eos_token or append_eos=False"
                )
            self.eos_id = _token_id(tokenizer, token, f"the {name} end token")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError(f"the {name} tokenizer has neither a pad nor an EOS token to pad with; set tokenizer.pad_token")
        self.pad_id = int(pad)

    def encode(self, examples: Sequence[Example]) -> list[SideFeatures | str]:
        """Features of every example, or the reason it must be dropped."""
        tok = self.tokenizer
        prompts = [self.builder.render(ex) for ex in examples]
        answers = [self.builder.answer_text(ex, prompt=p) for ex, p in zip(examples, prompts)]
        prompt_ids = tok(prompts, add_special_tokens=False)["input_ids"]
        joint = tok([p + a for p, a in zip(prompts, answers)], add_special_tokens=False, return_offsets_mapping=True)

        answer_ids: list[list[int] | None] = []
        answer_offsets: list[list[tuple[int, int]] | None] = []
        for i, prompt in enumerate(prompts):
            ids, offsets, n = joint["input_ids"][i], joint["offset_mapping"][i], len(prompt_ids[i])
            if ids[:n] == prompt_ids[i] and len(ids) > n:
                base = len(prompt)
                answer_ids.append(list(ids[n:]))
                answer_offsets.append([(max(s - base, 0), max(e - base, 0)) for s, e in offsets[n:]])
            else:
                answer_ids.append(None)
                answer_offsets.append(None)
        fallback = [i for i, ids in enumerate(answer_ids) if ids is None]
        if fallback:
            alone = tok([answers[i] for i in fallback], add_special_tokens=False, return_offsets_mapping=True)
            for j, i in enumerate(fallback):
                answer_ids[i] = list(alone["input_ids"][j])
                answer_offsets[i] = [tuple(o) for o in alone["offset_mapping"][j]]

        fallback_set = set(fallback)
        return [
            self._fit(prompts[i], prompt_ids[i], answers[i], answer_ids[i], answer_offsets[i], i in fallback_set)
            for i in range(len(examples))
        ]

    def _fit(
        self,
        prompt: str,
        prompt_ids: list[int],
        answer: str,
        answer_ids: list[int],
        answer_offsets: list[tuple[int, int]],
        fallback: bool,
    ) -> SideFeatures | str:
        config = self.config
        if not answer_ids:
            return "answer has no token"
        bos_text = self.tokenizer.bos_token
        head = [self.bos_id] if self.add_bos and not (bos_text and prompt.startswith(bos_text)) else []
        prompt_ids = head + list(prompt_ids)
        if not prompt_ids:
            return "empty prompt (no token precedes the answer)"
        keeps_bos = int(self.bos_id is not None and prompt_ids[0] == self.bos_id)
        eos = [] if self.eos_id is None else [self.eos_id]
        budget = config.max_length - len(answer_ids) - len(eos)
        if budget < min(config.min_prompt_tokens, len(prompt_ids)) or budget < keeps_bos:
            return f"answer does not fit max_length={config.max_length} with min_prompt_tokens={config.min_prompt_tokens}"
        dropped = max(len(prompt_ids) - budget, 0)
        if dropped:
            prompt_ids = prompt_ids[:keeps_bos] + prompt_ids[keeps_bos + dropped :]
        return SideFeatures(
            input_ids=prompt_ids + list(answer_ids) + eos,
            answer_start=len(prompt_ids),
            answer_length=len(answer_ids) + len(eos),
            answer_text=answer,
            answer_offsets=[(int(s), int(e)) for s, e in answer_offsets],
            has_eos=bool(eos),
            prompt_tokens_dropped=dropped,
            boundary_fallback=fallback,
        )

    def pad(self, features: Sequence[SideFeatures]) -> TokenizedSide:
        """Right-pad features into a :class:`TokenizedSide` (shifted answer mask and labels)."""
        input_ids = pad_sequence(
            [torch.tensor(f.input_ids, dtype=torch.long) for f in features], batch_first=True, padding_value=self.pad_id
        )
        lengths = torch.tensor([len(f.input_ids) for f in features])
        first = torch.tensor([f.answer_start - 1 for f in features])  # position whose logits predict answer token 0
        count = torch.tensor([f.answer_length for f in features])
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        attention_mask = (positions < lengths.unsqueeze(1)).long()
        answer_mask = (positions >= first.unsqueeze(1)) & (positions < (first + count).unsqueeze(1))
        next_token = torch.cat([input_ids[:, 1:], input_ids.new_full((input_ids.shape[0], 1), self.pad_id)], dim=1)
        labels = torch.where(answer_mask, next_token, torch.full_like(input_ids, IGNORE_INDEX))
        return TokenizedSide(input_ids=input_ids, attention_mask=attention_mask, answer_mask=answer_mask, labels=labels)


def _method_extras(requested: Sequence[str] | Mapping[str, Mapping[str, Any]], student_tokenizer: Any,
                   teacher_tokenizer: Any) -> dict[str, Any]:
    """Build the per-example computers of the requested method extras (each has ``for_features`` and ``stack``)."""
    if isinstance(requested, str):
        requested = (requested,)
    specs = dict(requested) if isinstance(requested, Mapping) else {name: {} for name in requested}
    built: dict[str, Any] = {}
    for name, options in specs.items():
        if name == "mined_alignment":
            from ctkd.align.mined import MinEDAligner

            built[name] = MinEDAligner(student_tokenizer, teacher_tokenizer, **dict(options or {}))
        else:
            raise ValueError(f"unknown method extra {name!r}; known extras: {list(METHOD_EXTRAS)}")
    return built


class DistillCollator:
    """Tokenize examples for a student and a teacher and batch them as :class:`DistillBatch`.

    Args:
        student_tokenizer, teacher_tokenizer: fast Hugging Face tokenizers.
        student_prompt, teacher_prompt: each side's :class:`PromptBuilder` (built with that side's
            tokenizer when it renders a chat template).
        student, teacher: each side's :class:`SideConfig`.
        alignment: compute byte-offset span alignments (``DistillBatch.alignment``).
        extras: method extras to compute (``DistillBatch.extras``): names from :data:`METHOD_EXTRAS`, or a
            mapping from name to that extra's options (module docstring).

    Example::

        collator = DistillCollator(s_tok, t_tok, PromptBuilder(s_cfg), PromptBuilder(t_cfg, t_tok, train))
        features = collator.prepare_features(train)      # tokenized once, filtered, counts warned
        loader = DataLoader(features, batch_size=2, shuffle=True, collate_fn=collator)
    """

    def __init__(
        self,
        student_tokenizer: Any,
        teacher_tokenizer: Any,
        student_prompt: PromptBuilder,
        teacher_prompt: PromptBuilder,
        student: SideConfig = SideConfig(),
        teacher: SideConfig = SideConfig(),
        alignment: bool = False,
        extras: Sequence[str] | Mapping[str, Mapping[str, Any]] = (),
    ) -> None:
        self.sides = {
            "student": _Side("student", student_tokenizer, student_prompt, student),
            "teacher": _Side("teacher", teacher_tokenizer, teacher_prompt, teacher),
        }
        self.alignment = alignment
        self.extras = _method_extras(extras, student_tokenizer, teacher_tokenizer)

    @classmethod
    def for_task(
        cls,
        task: str,
        student_tokenizer: Any,
        teacher_tokenizer: Any,
        shot_pool: Sequence[Example] = (),
        student: SideConfig = SideConfig(),
        teacher: SideConfig = SideConfig(),
        alignment: bool = False,
        extras: Sequence[str] | Mapping[str, Mapping[str, Any]] = (),
    ) -> "DistillCollator":
        """A collator with the task's default prompts (:data:`~ctkd.data.prompts.DEFAULT_PROMPTS`)."""
        return cls(
            student_tokenizer,
            teacher_tokenizer,
            PromptBuilder(default_prompt(task, "student"), student_tokenizer, shot_pool),
            PromptBuilder(default_prompt(task, "teacher"), teacher_tokenizer, shot_pool),
            student,
            teacher,
            alignment,
            extras,
        )

    def prepare(self, examples: Sequence[Example], *, progress: bool = False) -> PreparedFeatures:
        """Tokenize every example once for both sides, apply the length policy, report what was dropped.

        ``progress`` shows a progress bar (tokenizing a few thousand few-shot teacher prompts takes minutes).
        """
        from tqdm.auto import tqdm

        encoded: dict[str, list[SideFeatures | str]] = {name: [] for name in self.sides}
        with tqdm(total=len(examples), desc="tokenize", unit="ex", disable=not progress) as bar:
            for start in range(0, len(examples), PREPARE_CHUNK):
                part = examples[start:start + PREPARE_CHUNK]
                for name, side in self.sides.items():
                    encoded[name].extend(side.encode(part))
                bar.update(len(part))
        features: list[PairFeatures] = []
        dropped: Counter[str] = Counter()
        dropped_ids: list[str] = []
        for i, example in enumerate(examples):
            student, teacher = encoded["student"][i], encoded["teacher"][i]
            reasons = [f"{name}: {encoded[name][i]}" for name in SIDES if isinstance(encoded[name][i], str)]
            if reasons:
                dropped.update(reasons)
                dropped_ids.append(example.id)
                continue
            assert isinstance(student, SideFeatures) and isinstance(teacher, SideFeatures)
            features.append(PairFeatures(example.id, student, teacher))
        if self.alignment:
            features = self._with_alignment(features)
        if self.extras:
            features = [
                replace(f, extras={name: extra.for_features(f.student, f.teacher) for name, extra in self.extras.items()})
                for f in features
            ]

        def count(attribute: str) -> dict[str, int]:
            return {
                name: sum(bool(getattr(getattr(f, name), attribute)) for f in features) for name in SIDES
            }

        report = PreparationReport(
            num_examples=len(examples),
            num_kept=len(features),
            dropped=dict(dropped),
            dropped_ids=dropped_ids,
            truncated=count("prompt_tokens_dropped"),
            boundary_fallbacks=count("boundary_fallback"),
        )
        self._warn(report)
        return PreparedFeatures(features, report)

    def prepare_features(self, examples: Sequence[Example]) -> list[PairFeatures]:
        """:meth:`prepare` without the report (the warnings are still emitted)."""
        return self.prepare(examples).features

    @staticmethod
    def _warn(report: PreparationReport) -> None:
        if report.dropped_ids:
            reasons = "; ".join(f"{reason}: {n}" for reason, n in sorted(report.dropped.items()))
            warnings.warn(
                f"dropped {len(report.dropped_ids)} of {report.num_examples} examples whose answer does not fit "
                f"({reasons}); raise max_length to keep them",
                stacklevel=3,
            )
        fallbacks = {side: n for side, n in report.boundary_fallbacks.items() if n}
        if fallbacks:
            warnings.warn(
                f"answers tokenized apart from their prompt for {fallbacks} examples: a token straddles the "
                "prompt/answer boundary (often a prompt ending in a space); put that space in the answer prefix",
                stacklevel=3,
            )
        if any(report.truncated.values()):
            logger.info("prompts cut from the left to fit max_length: %s", report.truncated)
        if report.num_examples and not report.num_kept:
            raise ValueError(f"no example fits: all {report.num_examples} were dropped ({report.dropped}); raise max_length")

    def _with_alignment(self, features: list[PairFeatures]) -> list[PairFeatures]:
        from ctkd.align.offsets import align_answer_offsets

        def offsets(side: SideFeatures) -> list[tuple[int, int]]:
            # align_answer_offsets expects the end token as the last offset entry when has_eos is True;
            # answer_offsets leave it out, so add it as an empty span at the end of the text
            end = len(side.answer_text)
            return list(side.answer_offsets) + ([(end, end)] if side.has_eos else [])

        return [
            PairFeatures(
                f.example_id,
                f.student,
                f.teacher,
                tuple(
                    align_answer_offsets(
                        f.student.answer_text,
                        offsets(f.student),
                        f.teacher.answer_text,
                        offsets(f.teacher),
                        f.student.has_eos,
                        f.teacher.has_eos,
                    )
                ),
            )
            for f in features
        ]

    def collate(self, features: Sequence[PairFeatures]) -> DistillBatch:
        """Pad prepared features into a :class:`DistillBatch` (right padding; never drops anything)."""
        if not features:
            raise ValueError("collate() got no features; prepare the examples first and batch the prepared features")
        alignment = None
        if self.alignment:
            if any(f.alignment is None for f in features):
                raise ValueError("alignment=True but some features were prepared without alignment; prepare them with this collator")
            from ctkd.align.offsets import stack_alignments

            alignment = stack_alignments([f.alignment for f in features])
        extras = {}
        for name, extra in self.extras.items():
            if any(name not in f.extras for f in features):
                raise ValueError(f"extras include {name!r} but some features were prepared without it; prepare them with this collator")
            extras[name] = extra.stack([f.extras[name] for f in features])
        return DistillBatch(
            student=self.sides["student"].pad([f.student for f in features]),
            teacher=self.sides["teacher"].pad([f.teacher for f in features]),
            alignment=alignment,
            example_ids=[f.example_id for f in features],
            extras=extras,
        )

    __call__ = collate
