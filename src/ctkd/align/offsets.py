"""Byte-offset alignment of two tokenizations of the same answer text.

Teacher and student tokenize the same answer with different tokenizers, so the j-th teacher token and
the j-th student token (positional pairing, :mod:`ctkd.align.positional`) usually cover different text.
This module groups the answer tokens of both sides into the *smallest spans whose boundaries agree on
both sides*: group ``g`` is a run of one or more contiguous tokens on each side, and the two runs cover
the same text.

What a group means
------------------
Let the answer text be ``x`` and let a side's token ``i`` cover the bytes ``[s_i, e_i)`` of ``x`` (from
the fast tokenizer's ``offset_mapping``). A *cut* of a side is a byte position ``c`` such that every
token before it ends at or before ``c`` and every token after it starts at or after ``c``. The groups
are the segments between consecutive *common* cuts::

    cuts_s = {c : c is a cut of the student},  cuts_t = likewise for the teacher
    common = cuts_s ∩ cuts_t  (plus 0 and len(x), always common)
    group g = the tokens of each side lying between the g-th and (g+1)-th common cut

so the groups partition both token sequences, are numbered ``0 .. G-1`` in text order, and group ``g``
covers ``x[common_g : common_{g+1}]`` on both sides. Two identical tokenizations give one token per
group (except where a tokenizer itself gives several tokens the same character offsets, see below).

How a loss should use a group of several tokens
-----------------------------------------------
The first token of group ``g`` starts at the same byte ``common_g`` on both sides, and everything
before it is the same text. So the distribution that *predicts* the first token of a group (with the
shifted answer mask, the logits at the answer position just before it: ``AnswerIndex.position[b, j]``
for the group's first answer-token index ``j``) is, on both sides, a distribution over continuations
of the same prefix that start at the same byte: those two distributions are comparable, and a loss
that pairs positions should pair exactly these. The distributions predicting the later tokens of a
multi-token group are conditioned on different partial texts (one side is mid-word where the other is
not) and are not comparable position by position; a loss should either skip them, or compare the
group as a whole, e.g. through the probability of the group's text on each side,
``log p(span) = sum_{i in group} log p(token_i | prefix)``, which is the probability of the same string
given the same prefix on both sides.

Details that real tokenizers need
---------------------------------
- **Canonical text.** The two texts may differ in leading and trailing whitespace only (e.g.
  ``" Paris"`` against ``"Paris"``); both are mapped to ``x = text.strip()`` and offsets are shifted
  and clipped into it. Texts that differ in anything else raise :class:`ValueError`.
- **Empty tokens.** A token whose span is empty after clipping (a ``(0, 0)`` BOS or other special
  token, a token covering only stripped leading/trailing whitespace such as a lone ``Ġ``/``▁``) covers
  no text; it joins the group of the closest non-empty token before it, or after it when it comes
  first. Such a token then comes first in group 0 on its side, so keep specials out of the answer
  when the first group's first token matters (the collator should).
- **Character granularity.** Offsets are *character* offsets, so when several tokens share one
  character's offsets (a multi-byte character split into byte tokens: GPT-2's ``Ġæ``, ``Ŀ``, ``±``
  for `` 東``, or SentencePiece byte fallback ``<0xF0> <0x9F> <0x98> <0x80>`` for ``😀``) the byte
  boundaries between them cannot be recovered from offsets alone: overlapping tokens get no cut
  between them, so such tokens are *grouped at character level* (the whole character, with every
  token that touches it, is one group on each side). All cuts are character boundaries, which map
  one to one and in order onto UTF-8 byte offsets, so matching cuts in character coordinates is the
  same as matching byte offsets at character boundaries. Token strings are not used.
- **Overlapping offsets.** SentencePiece's prepended ``▁`` sometimes gets offsets that overlap the
  next token (Llama 2 ``"1"`` gives ``▁`` at ``(0, 1)`` and ``1`` at ``(0, 1)``); overlaps never hold a
  cut, so such tokens share a group. A cut between tokens ``i`` and ``i + 1`` exists exactly when
  ``max_{k <= i} e_k <= min_{k > i} s_k`` (over non-empty tokens).
- **Gaps.** Text covered by no token (a byte-level tokenizer with ``trim_offsets`` leaves out a
  token's leading space; an NFC-normalising tokenizer gives ``Á`` = ``A`` + U+0301 the offsets of
  ``A`` only) is resolved to one cut point: the gap's trailing whitespace goes to the next token (as
  ``trim_offsets`` intends), the rest to the previous token (as normalisers intend).
- **Whitespace at token edges** (``match_across_whitespace=True``, the default). One tokenizer may
  attach a space to the end of a token (``"Hello "`` ``"world"``) where the other attaches it to the
  start of the next (``"Hello"`` ``" world"``): there is no common byte cut, yet the words clearly
  correspond. After matching exact cuts, the remaining cuts between two consecutive exact matches are
  matched in order when only whitespace lies between them. The groups' texts then agree up to
  whitespace at their edges, and their first tokens start at the same non-whitespace byte (the
  distributions predicting them agree on the prefix up to that whitespace). With ``False`` only exact
  byte cuts are used.
- **EOS.** With ``*_has_eos`` the last offset entry is an appended EOS/end-of-turn token. An EOS on
  both sides forms its own final group (both predict "end of answer" after the same text); an EOS on
  one side only joins the last group of that side.

Complexity: ``O(n_s + n_t + len(text))`` plain Python per example (it runs in the collator on the CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor

from ctkd.types import SpanAlignment

PAD_GROUP = -1
"""Group id of padding positions in :class:`ctkd.types.SpanAlignment`."""

TEXT_PREVIEW_CHARS = 80
"""How many characters of each text an error message shows around the first difference."""

__all__ = [
    "GroupSpans",
    "PAD_GROUP",
    "align_answer_offsets",
    "alignment_matrix",
    "group_spans",
    "one_to_one_share",
    "stack_alignments",
    "token_ranges",
]


# ---------------------------------------------------------------------------------------------------
# One example: two offset lists -> two group-id lists
# ---------------------------------------------------------------------------------------------------


def align_answer_offsets(
    student_text: str,
    student_offsets: Sequence[tuple[int, int]],
    teacher_text: str,
    teacher_offsets: Sequence[tuple[int, int]],
    student_has_eos: bool = False,
    teacher_has_eos: bool = False,
    *,
    match_across_whitespace: bool = True,
) -> tuple[list[int], list[int]]:
    """Group the answer tokens of both sides into the smallest spans that cover the same text.

    Args:
        student_text: the exact answer string the student tokenized.
        student_offsets: the student's ``offset_mapping`` for its answer tokens, ``(start, end)``
            character offsets into ``student_text`` (Ls entries).
        teacher_text: the exact answer string the teacher tokenized; equal to ``student_text`` up to
            leading and trailing whitespace.
        teacher_offsets: the teacher's ``offset_mapping`` (Lt entries), into ``teacher_text``.
        student_has_eos: the last student entry is an appended EOS/end-of-turn token (offsets ignored).
        teacher_has_eos: likewise for the teacher.
        match_across_whitespace: also pair cuts that differ only by whitespace between them (see the
            module docstring); ``False`` keeps exact byte cuts only.

    Returns:
        ``(student_groups, teacher_groups)``: lists of length Ls and Lt, the group id of every token,
        0-based, non-decreasing by steps of 0 or 1, both ending at the same G - 1; every group has at
        least one token on each side. Two empty lists when both sides have no tokens.

    Raises:
        ValueError: when the texts differ beyond leading/trailing whitespace, when an offset lies
            outside its text, or when one side has answer tokens and the other none.
    """
    text = _check_same_answer(student_text, teacher_text)
    s_offsets, s_eos = _split_eos(student_offsets, student_has_eos, "student")
    t_offsets, t_eos = _split_eos(teacher_offsets, teacher_has_eos, "teacher")

    if not s_offsets or not t_offsets:
        if s_offsets or t_offsets:
            raise ValueError(
                f"cannot align answer {_preview(text)}: the student has {len(s_offsets)} answer tokens "
                f"and the teacher {len(t_offsets)} (EOS not counted); each side needs at least one "
                "answer token when the other has any. Drop or fix this example before collating."
            )
        s_groups, t_groups, num_groups = [], [], 0
    else:
        s_spans = _canonical_spans(s_offsets, student_text, text, "student")
        t_spans = _canonical_spans(t_offsets, teacher_text, text, "teacher")
        s_tokens, s_cuts = _cuts(s_spans, text)
        t_tokens, t_cuts = _cuts(t_spans, text)
        s_keep, t_keep = _match_cuts(s_cuts, t_cuts, text, match_across_whitespace)
        s_groups = _group_ids(len(s_spans), s_tokens, s_keep)
        t_groups = _group_ids(len(t_spans), t_tokens, t_keep)
        num_groups = s_groups[-1] + 1

    if s_eos and t_eos:  # both predict "end of answer" after the same text: a group of its own
        s_groups.append(num_groups)
        t_groups.append(num_groups)
    elif s_eos or t_eos:  # one side only: its EOS ends that side's last group
        if num_groups == 0:
            side, other = ("student", "teacher") if s_eos else ("teacher", "student")
            raise ValueError(
                f"cannot align answer {_preview(text)}: the {side} has only an EOS token and the {other} "
                "no token at all; an empty answer needs an EOS on both sides or on neither."
            )
        (s_groups if s_eos else t_groups).append(num_groups - 1)
    return s_groups, t_groups


def _check_same_answer(student_text: str, teacher_text: str) -> str:
    """The canonical answer ``x`` (stripped), after checking both sides tokenized the same answer."""
    s, t = student_text.strip(), teacher_text.strip()
    if s != t:
        first = next((i for i, (a, b) in enumerate(zip(s, t)) if a != b), min(len(s), len(t)))
        lo = max(0, first - TEXT_PREVIEW_CHARS // 2)
        raise ValueError(
            "student and teacher answers differ beyond leading/trailing whitespace (they must be the "
            f"same answer): student text {_preview(student_text)} vs teacher text {_preview(teacher_text)}; after "
            f"stripping they first differ at character {first}: student {s[lo:lo + TEXT_PREVIEW_CHARS]!r} "
            f"vs teacher {t[lo:lo + TEXT_PREVIEW_CHARS]!r}. Pass both sides the same answer string."
        )
    return s


def _preview(text: str) -> str:
    return repr(text if len(text) <= TEXT_PREVIEW_CHARS else text[:TEXT_PREVIEW_CHARS] + "...")


def _split_eos(offsets: Sequence[tuple[int, int]], has_eos: bool, side: str) -> tuple[list, bool]:
    offsets = list(offsets)
    if has_eos:
        if not offsets:
            raise ValueError(f"{side}_has_eos=True but the {side} offsets are empty: there is no EOS entry")
        offsets.pop()
    return offsets, has_eos


def _canonical_spans(
    offsets: list[tuple[int, int]], side_text: str, text: str, side: str
) -> list[tuple[int, int]]:
    """Shift ``(start, end)`` character offsets of ``side_text`` into the stripped text and clip them."""
    try:
        pairs = [(int(start), int(end)) for start, end in offsets]
    except (TypeError, ValueError):
        i, pair = next((i, p) for i, p in enumerate(offsets) if not _is_int_pair(p))
        raise ValueError(f"{side} offset {i} is {pair!r}; expected a (start, end) pair of ints") from None
    limit = len(side_text)
    bad = next((i for i, (start, end) in enumerate(pairs) if not 0 <= start <= end <= limit), None)
    if bad is not None:
        raise ValueError(
            f"{side} offset {bad} is {pairs[bad]}, outside the {side} text of {limit} characters "
            f"{_preview(side_text)}; offsets must be the tokenizer's offset_mapping for exactly this "
            "text (tokenize the answer on its own, or subtract the answer's start)."
        )
    lead, n = len(side_text) - len(side_text.lstrip()), len(text)
    if lead == 0 and n == limit:
        return pairs
    return [(min(max(start - lead, 0), n), min(max(end - lead, 0), n)) for start, end in pairs]


def _is_int_pair(pair) -> bool:
    try:
        start, end = pair
        int(start), int(end)
    except (TypeError, ValueError):
        return False
    return True


def _cuts(spans: list[tuple[int, int]], text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The non-empty tokens of one side, and its cuts between consecutive non-empty tokens.

    A cut after non-empty token ``k`` exists when ``max(ends[:k + 1]) <= min(starts[k + 1:])``.

    Returns:
        ``(tokens, cuts)``: ``tokens`` the indices of the non-empty tokens in order; ``cuts`` a list of
        ``(k, position)``, strictly increasing in both, meaning a cut at character ``position`` between
        ``tokens[k]`` and ``tokens[k + 1]``.
    """
    tokens = [i for i, (start, end) in enumerate(spans) if start < end]
    starts = [spans[i][0] for i in tokens]
    ends = [spans[i][1] for i in tokens]
    suffix_min = list(accumulate(reversed(starts), min))[::-1]  # suffix_min[k] = min(starts[k:])
    cuts = []
    for k, (max_end, nxt) in enumerate(zip(accumulate(ends, max), suffix_min[1:])):
        if max_end <= nxt:
            # uncovered text (usually none): its trailing whitespace goes to the next token, the rest
            # to the previous one
            gap = text[max_end:nxt]
            cuts.append((k, nxt - (len(gap) - len(gap.rstrip()))))
    return tokens, cuts


def _match_cuts(
    a: list[tuple[int, int]], b: list[tuple[int, int]], text: str, across_whitespace: bool
) -> tuple[set[int], set[int]]:
    """Monotone matching of two increasing cut lists; returns the kept cut indices ``k`` of each side.

    Exact positions are matched first (they are the cuts both sides share). With
    ``across_whitespace``, the unmatched cuts lying between the same two consecutive exact matches
    (the same *stretch*) are then matched in order by their *non-whitespace key*, the number of
    non-whitespace characters before the cut: two cuts have the same key exactly when only whitespace
    lies between them. That second step is a greedy earliest-first merge on the non-decreasing key
    ``(stretch, non-whitespace key)``, which gives a maximum monotone matching.
    """
    common = {p for _, p in a}.intersection(p for _, p in b)
    kept_a = {k for k, p in a if p in common}
    kept_b = {k for k, p in b if p in common}
    if not across_whitespace or (len(kept_a) == len(a) or len(kept_b) == len(b)):
        return kept_a, kept_b
    rest_a, rest_b = _unmatched(a, common), _unmatched(b, common)
    # key[p] = number of non-whitespace characters in text[:p]
    whitespace = list(accumulate(map(str.isspace, text), initial=0))
    i = j = 0
    while i < len(rest_a) and j < len(rest_b):
        (stretch_a, pa, ka), (stretch_b, pb, kb) = rest_a[i], rest_b[j]
        key_a, key_b = (stretch_a, pa - whitespace[pa]), (stretch_b, pb - whitespace[pb])
        if key_a < key_b:
            i += 1
        elif key_b < key_a:
            j += 1
        else:
            kept_a.add(ka)
            kept_b.add(kb)
            i += 1
            j += 1
    return kept_a, kept_b


def _unmatched(cuts: list[tuple[int, int]], common: set[int]) -> list[tuple[int, int, int]]:
    """``(stretch, position, k)`` of the cuts not at a common position; ``stretch`` counts the common
    cuts before it."""
    out, stretch = [], 0
    for k, p in cuts:
        if p in common:
            stretch += 1
        else:
            out.append((stretch, p, k))
    return out


def _group_ids(num_tokens: int, tokens: list[int], kept: set[int]) -> list[int]:
    """Group id of every token: non-empty tokens count the kept cuts before them; empty ones join a
    neighbour (the previous non-empty token, or the first one when none comes before)."""
    groups = [0] * num_tokens
    group = 0
    for k, i in enumerate(tokens):
        groups[i] = group
        if k in kept:
            group += 1
    # empty tokens: inherit from the previous token (leading ones keep group 0, the first group)
    non_empty = set(tokens)
    current = 0
    for i in range(num_tokens):
        if i in non_empty:
            current = groups[i]
        else:
            groups[i] = current
    return groups


# ---------------------------------------------------------------------------------------------------
# Group-id lists -> tensors
# ---------------------------------------------------------------------------------------------------


def token_ranges(groups: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, end)`` token index range (end exclusive) of each group of one side, in group order.

    Args:
        groups: one side's group ids, as :func:`align_answer_offsets` returns them (no padding).
    """
    _check_groups(list(groups), "groups")
    ranges: list[tuple[int, int]] = []
    for i, g in enumerate(groups):
        if g == len(ranges):
            ranges.append((i, i + 1))
        else:
            ranges[-1] = (ranges[-1][0], i + 1)
    return ranges


def _check_groups(groups: list[int], name: str) -> int:
    """Check contiguous 0-based group ids; return the number of groups."""
    expected = 0
    for i, g in enumerate(groups):
        if g == expected:
            expected += 1
        elif g != expected - 1:
            raise ValueError(
                f"{name}[{i}] = {g} after group {expected - 1}: group ids must start at 0 and rise by 0 "
                f"or 1 from token to token (got {groups[: i + 1]}); use align_answer_offsets' output"
            )
    return expected


def stack_alignments(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> SpanAlignment:
    """Pad per-example ``(student_groups, teacher_groups)`` into a batch :class:`SpanAlignment`.

    Args:
        pairs: B pairs as returned by :func:`align_answer_offsets`, in batch order.

    Returns:
        ``SpanAlignment`` with ``student_group`` (B, Ls) and ``teacher_group`` (B, Lt) long, padded with
        ``PAD_GROUP`` (-1) to the longest answer of each side, and ``num_groups`` (B,) long.
    """
    batch = len(pairs)
    s_len = max((len(s) for s, _ in pairs), default=0)
    t_len = max((len(t) for _, t in pairs), default=0)
    student = torch.full((batch, s_len), PAD_GROUP, dtype=torch.long)
    teacher = torch.full((batch, t_len), PAD_GROUP, dtype=torch.long)
    num_groups = torch.zeros(batch, dtype=torch.long)
    for b, (s, t) in enumerate(pairs):
        s, t = list(s), list(t)
        gs, gt = _check_groups(s, f"pairs[{b}] student"), _check_groups(t, f"pairs[{b}] teacher")
        if gs != gt:
            raise ValueError(
                f"pairs[{b}] has {gs} student groups but {gt} teacher groups; both sides of an example "
                "must have the same groups (use align_answer_offsets' output)"
            )
        student[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        teacher[b, : len(t)] = torch.tensor(t, dtype=torch.long)
        num_groups[b] = gs
    return SpanAlignment(student_group=student, teacher_group=teacher, num_groups=num_groups)


def alignment_matrix(alignment: SpanAlignment) -> Tensor:
    """Dense pairing of answer tokens: ``M[b, i, j]`` is True when student answer token ``i`` and
    teacher answer token ``j`` of example ``b`` belong to the same group.

    Returns:
        (B, Ls, Lt) bool; rows and columns of padding are all False. Every real token's row (column)
        has at least one True.
    """
    s, t = alignment.student_group, alignment.teacher_group
    return (s.unsqueeze(2) == t.unsqueeze(1)) & (s >= 0).unsqueeze(2)


@dataclass
class GroupSpans:
    """Token ranges of every group, per side (answer-token indices j, end exclusive).

    Attributes:
        student_start: (B, G) long, index of the first student answer token of each group.
        student_end: (B, G) long, one past its last student answer token.
        teacher_start: (B, G) long, likewise for the teacher.
        teacher_end: (B, G) long.
        valid: (B, G) bool, True for real groups (``g < num_groups[b]``); ranges are 0 elsewhere.

    G is the largest ``num_groups`` of the batch. ``student_start`` and ``teacher_start`` index the
    tokens whose predicting distributions are comparable (see the module docstring).
    """

    student_start: Tensor
    student_end: Tensor
    teacher_start: Tensor
    teacher_end: Tensor
    valid: Tensor

    @property
    def student_size(self) -> Tensor:
        """(B, G) long, number of student tokens in each group (0 on padding)."""
        return self.student_end - self.student_start

    @property
    def teacher_size(self) -> Tensor:
        """(B, G) long, number of teacher tokens in each group (0 on padding)."""
        return self.teacher_end - self.teacher_start


def group_spans(alignment: SpanAlignment) -> GroupSpans:
    """First and one-past-last answer-token index of every group on both sides; no Python loop."""
    batch = alignment.num_groups.shape[0]
    num = int(alignment.num_groups.max()) if batch > 0 else 0
    valid = torch.arange(num, device=alignment.num_groups.device).unsqueeze(0) < alignment.num_groups.unsqueeze(1)

    def side(group: Tensor) -> tuple[Tensor, Tensor]:
        length = group.shape[1]
        position = torch.arange(length, device=group.device).expand_as(group)
        # padding goes to an extra column `num` that is dropped afterwards
        column = torch.where(group >= 0, group, torch.full_like(group, num))
        start = torch.full((batch, num + 1), length, dtype=torch.long, device=group.device)
        start = start.scatter_reduce(1, column, position, reduce="amin")
        end = torch.zeros((batch, num + 1), dtype=torch.long, device=group.device)
        end = end.scatter_reduce(1, column, position + 1, reduce="amax")
        zero = torch.zeros((), dtype=torch.long, device=group.device)
        return torch.where(valid, start[:, :num], zero), torch.where(valid, end[:, :num], zero)

    s_start, s_end = side(alignment.student_group)
    t_start, t_end = side(alignment.teacher_group)
    return GroupSpans(s_start, s_end, t_start, t_end, valid)


def one_to_one_share(student_groups: Sequence[int] | Tensor, teacher_groups: Sequence[int] | Tensor) -> float:
    """Share of answer tokens (both sides pooled) that lie in groups of exactly one token per side.

    ``2 * #{g : |g_s| = |g_t| = 1} / (Ls + Lt)``; 1.0 for identical tokenizations, 0.0 when there are no
    tokens. Accepts one example's two group-id lists, or the (B, Ls) and (B, Lt) padded tensors of a
    :class:`SpanAlignment` (pooled over the batch; ``PAD_GROUP`` entries are ignored).
    """
    s = torch.as_tensor(student_groups, dtype=torch.long)
    t = torch.as_tensor(teacher_groups, dtype=torch.long)
    if s.dim() == 1 and t.dim() == 1:
        s, t = s.unsqueeze(0), t.unsqueeze(0)
    if s.dim() != 2 or t.dim() != 2 or s.shape[0] != t.shape[0]:
        raise ValueError(
            f"student_groups {tuple(s.shape)} and teacher_groups {tuple(t.shape)} must be two 1-D lists "
            "(one example) or two 2-D (B, L) tensors with the same B"
        )
    total = int((s >= 0).sum() + (t >= 0).sum())
    if total == 0:
        return 0.0
    width = 2 + max(int(g.max()) if g.numel() else -1 for g in (s, t))  # group ids -1 .. max, shifted by 1

    def counts(g: Tensor) -> Tensor:
        # one bincount over (row, group) pairs; padding (-1) lands in each row's column 0 and is dropped
        rows = torch.arange(g.shape[0]).unsqueeze(1).expand_as(g)
        return torch.bincount((rows * width + g + 1).reshape(-1), minlength=g.shape[0] * width).view(-1, width)[:, 1:]

    single = (counts(s) == 1) & (counts(t) == 1)
    return 2.0 * int(single.sum()) / total
