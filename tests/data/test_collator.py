"""The two-tokenizer collator: answer tokens, shifted masks, BOS/EOS/padding and length policies."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from ctkd.data import (
    DistillCollator,
    Example,
    PairFeatures,
    PromptBuilder,
    PromptConfig,
    SideConfig,
    SideFeatures,
    default_prompt,
)
from ctkd.data.prompts import QA_TEMPLATE
from ctkd.types import IGNORE_INDEX, DistillBatch, TokenizedSide

TINY = ("tiny_byte_level", "tiny_metaspace")
REAL = ("gpt2", "llama2", "mistral", "qwen1.5")
POOL = [
    Example(f"pool{i}", "qed", {"context": f"Pool context {i}.", "question": f"pool question {i}?"}, f"answer {i}", [f"answer {i}"])
    for i in range(4)
]
"""Shots for the teachers' default few-shot prompts in tests that do not care which shots."""
SENTENCEPIECE = {"llama2", "mistral"}


@pytest.fixture
def get_tokenizer(request):
    def get(name: str):
        if name in TINY:
            return request.getfixturevalue(name)
        return request.getfixturevalue("real_tokenizers")[name]

    return get


def _check_side(side: TokenizedSide, features: list[SideFeatures], tokenizer, pad_id: int) -> None:
    """Every property of one padded side that the losses rely on, checked row by row."""
    batch, length = side.input_ids.shape
    assert side.attention_mask.shape == side.answer_mask.shape == side.labels.shape == (batch, length)
    assert side.answer_mask.dtype == torch.bool and side.input_ids.dtype == torch.long
    for b, f in enumerate(features):
        n = len(f.input_ids)
        assert side.input_ids[b, :n].tolist() == f.input_ids
        assert (side.input_ids[b, n:] == pad_id).all()
        assert side.attention_mask[b].tolist() == [1] * n + [0] * (length - n)
        # Shifted convention: position p is an answer position iff token p + 1 is an answer token.
        positions = side.answer_mask[b].nonzero().flatten().tolist()
        assert positions == list(range(f.answer_start - 1, f.answer_start - 1 + f.answer_length))
        assert side.labels[b, side.answer_mask[b]].tolist() == f.input_ids[f.answer_start : f.answer_start + f.answer_length]
        assert (side.labels[b, ~side.answer_mask[b]] == IGNORE_INDEX).all()
        answer = f.input_ids[f.answer_start : f.answer_start + f.answer_length - int(f.has_eos)]
        prompt = f.input_ids[: f.answer_start]
        # The answer tokens decode to exactly the answer text, read in context (SentencePiece decoders
        # drop the leading space of a sequence, so the prompt is decoded with it).
        assert tokenizer.decode(prompt + answer) == tokenizer.decode(prompt) + f.answer_text
        # Offsets: one per answer token, monotone, covering the answer text from start to end.
        assert len(f.answer_offsets) == len(answer)
        starts, ends = zip(*f.answer_offsets)
        assert list(starts) == sorted(starts) and list(ends) == sorted(ends)
        assert starts[0] == 0 and ends[-1] == len(f.answer_text)
        assert all(0 <= s <= e <= len(f.answer_text) for s, e in f.answer_offsets)


def _batch(collator: DistillCollator, examples: list[Example]) -> tuple[DistillBatch, list[PairFeatures]]:
    features = collator.prepare_features(examples)
    return collator.collate(features), features


@pytest.mark.parametrize("name", TINY + REAL)
def test_answer_tokens_are_exactly_the_answer(get_tokenizer, examples, name):
    tok = get_tokenizer(name)
    other = get_tokenizer("tiny_byte_level" if name != "tiny_byte_level" else "tiny_metaspace")
    for student, teacher in ((tok, other), (other, tok)):
        collator = DistillCollator.for_task("qed", student, teacher, shot_pool=examples)
        batch, features = _batch(collator, examples)
        assert batch.example_ids == [e.id for e in examples]
        for side_name, side_tok, side in (("student", student, batch.student), ("teacher", teacher, batch.teacher)):
            side_features = [getattr(f, side_name) for f in features]
            _check_side(side, side_features, side_tok, collator.sides[side_name].pad_id)
            builder = collator.sides[side_name].builder
            for example, f in zip(examples, side_features):
                assert f.answer_text == builder.answer_prefix_for(builder.render(example)) + example.target
                assert f.has_eos and f.input_ids[-1] == collator.sides[side_name].eos_id
                assert not f.boundary_fallback


@pytest.mark.parametrize("name", REAL)
def test_answer_segmentation_is_the_natural_one(real_tokenizers, examples, name):
    """Independent reference: byte-level BPE segments ' answer' on its own the same way; SentencePiece
    segments the bare target (its dummy prefix stands for the space). Tokenizing ' answer' alone would
    give Mistral an extra '▁' token, which the in-context tokenization avoids."""
    tok = real_tokenizers[name]
    collator = DistillCollator.for_task("qed", tok, tok, shot_pool=examples)
    for f, example in zip(collator.prepare_features(examples), examples):
        s = f.student
        answer = s.input_ids[s.answer_start : s.answer_start + s.answer_length - 1]
        reference = example.target if name in SENTENCEPIECE else s.answer_text
        assert answer == tok(reference, add_special_tokens=False)["input_ids"]
    if name == "mistral":
        alone = tok(" Paris", add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(alone)[0] == "▁", "Mistral's dummy prefix doubles a leading space"


def test_qwen_loads_as_a_fast_tokenizer(real_tokenizers):
    tok = real_tokenizers["qwen1.5"]
    assert tok.is_fast
    assert tok("a b", return_offsets_mapping=True)["offset_mapping"] == [(0, 1), (1, 3)]


def test_real_pair_with_few_shot_chat_teacher(real_tokenizers, examples):
    """Llama-2 student (plain, BOS, </s>) and Qwen teacher (3-shot ChatML, <|im_end|>), as in a real run."""
    student, teacher = real_tokenizers["llama2"], real_tokenizers["qwen1.5"]
    collator = DistillCollator.for_task("qed", student, teacher, shot_pool=examples)
    batch, features = _batch(collator, examples)
    _check_side(batch.student, [f.student for f in features], student, collator.sides["student"].pad_id)
    _check_side(batch.teacher, [f.teacher for f in features], teacher, collator.sides["teacher"].pad_id)
    im_end = teacher.convert_tokens_to_ids("<|im_end|>")
    for f in features:
        assert f.student.input_ids[0] == student.bos_token_id and f.student.input_ids[-1] == student.eos_token_id
        assert f.teacher.input_ids[-1] == im_end
        assert teacher.decode(f.teacher.input_ids[: f.teacher.answer_start]).endswith("<|im_start|>assistant\n")
        assert teacher.decode(f.teacher.input_ids).count("<|im_start|>assistant") == 4  # 3 shots + the example
    assert collator.sides["teacher"].pad_id == teacher.pad_token_id
    assert collator.sides["student"].pad_id == student.eos_token_id  # no pad token: EOS pads


def test_bos_policy(tiny_metaspace, tiny_byte_level, examples):
    bos = tiny_metaspace.bos_token_id
    collator = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL)
    f = collator.prepare_features(examples[:1])[0]
    assert f.student.input_ids[0] == bos and f.student.input_ids[1] != bos
    assert tiny_byte_level.bos_token_id is None
    no_bos = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL, student=SideConfig(add_bos=False))
    assert bos not in no_bos.prepare_features(examples[:1])[0].student.input_ids
    # A chat template that writes BOS itself gets no second one.
    templated = tiny_metaspace.__class__(tokenizer_object=tiny_metaspace.backend_tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    templated.chat_template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    builder = PromptBuilder(PromptConfig(QA_TEMPLATE, use_chat_template=True), templated)
    chat = DistillCollator(tiny_byte_level, templated, PromptBuilder(PromptConfig(QA_TEMPLATE)), builder)
    ids = chat.prepare_features(examples[:1])[0].teacher.input_ids
    assert ids[0] == bos and ids.count(bos) == 1


def test_tokenizer_that_appends_eos_itself(tiny_adds_eos, tiny_byte_level, examples):
    eos = tiny_adds_eos.eos_token_id
    assert tiny_adds_eos("x")["input_ids"][-1] == eos
    collator = DistillCollator.for_task("qed", tiny_adds_eos, tiny_byte_level, shot_pool=POOL)
    batch, features = _batch(collator, examples)
    for f in features:
        assert f.student.input_ids.count(eos) == 1 and f.student.input_ids[-1] == eos
    _check_side(batch.student, [f.student for f in features], tiny_adds_eos, collator.sides["student"].pad_id)


def test_eos_policy(tiny_metaspace, tiny_byte_level, examples):
    off = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL, student=SideConfig(append_eos=False))
    batch, features = _batch(off, examples)
    for f in features:
        assert not f.student.has_eos and len(f.student.answer_offsets) == f.student.answer_length
        assert f.student.input_ids[-1] != tiny_metaspace.eos_token_id
    _check_side(batch.student, [f.student for f in features], tiny_metaspace, off.sides["student"].pad_id)
    custom = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL, student=SideConfig(eos_token="<pad>"))
    assert custom.prepare_features(examples[:1])[0].student.input_ids[-1] == tiny_metaspace.pad_token_id
    with pytest.raises(ValueError, match="not a token"):
        DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL, student=SideConfig(eos_token="<nope>"))


def test_left_truncation_keeps_bos_and_the_whole_answer(tiny_metaspace, tiny_byte_level, examples):
    full = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL).prepare_features(examples)
    limit = 40
    short = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL, student=SideConfig(max_length=limit))
    prepared = short.prepare(examples)
    assert prepared.report.num_kept == len(examples)
    assert prepared.report.truncated["student"] == sum(len(f.student.input_ids) > limit for f in full) > 0
    for long, cut in zip(full, prepared.features):
        a, b = long.student, cut.student
        answer = a.input_ids[a.answer_start :]
        assert b.input_ids[b.answer_start :] == answer and b.answer_offsets == a.answer_offsets
        assert len(b.input_ids) == min(len(a.input_ids), limit)
        assert b.input_ids[0] == tiny_metaspace.bos_token_id
        kept = b.answer_start - 1
        assert b.input_ids[1 : b.answer_start] == a.input_ids[a.answer_start - kept : a.answer_start]
        assert b.prompt_tokens_dropped == len(a.input_ids) - len(b.input_ids)
        assert cut.teacher == long.teacher
    batch = short.collate(prepared.features)
    _check_side(batch.student, [f.student for f in prepared.features], tiny_metaspace, short.sides["student"].pad_id)
    assert batch.student.input_ids.shape[1] <= limit


def test_over_long_answers_are_dropped_and_counted(tiny_metaspace, tiny_byte_level, example_factory):
    examples = example_factory(6)
    long = "the cat sat on the mat " * 30
    examples[2] = dataclasses.replace(examples[2], target=long, references=[long])
    collator = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL, student=SideConfig(max_length=64))
    with pytest.warns(UserWarning, match=r"dropped 1 of 6 examples .*student: answer does not fit max_length=64"):
        prepared = collator.prepare(examples)
    assert prepared.report.dropped_ids == ["ex2"] and prepared.report.num_kept == 5
    assert prepared.report.dropped == {"student: answer does not fit max_length=64 with min_prompt_tokens=1": 1}
    assert [f.example_id for f in prepared.features] == ["ex0", "ex1", "ex3", "ex4", "ex5"]
    # The teacher fits, yet the pair goes: both sides always hold the same examples.
    assert all(len(f.student.input_ids) <= 64 for f in prepared.features)
    with pytest.raises(ValueError, match="no example fits"), pytest.warns(UserWarning):
        collator.prepare([examples[2]])


def test_min_prompt_tokens(tiny_metaspace, tiny_byte_level, examples):
    lengths = [len(f.student.answer_offsets) + 1 for f in DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL).prepare_features(examples)]
    limit = max(lengths) + 3  # the longest answer leaves room for 3 prompt tokens (BOS counted)
    loose = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL, student=SideConfig(max_length=limit, min_prompt_tokens=3))
    assert loose.prepare(examples).report.num_kept == len(examples)
    strict = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=POOL, student=SideConfig(max_length=limit, min_prompt_tokens=4))
    with pytest.warns(UserWarning, match="dropped"):
        report = strict.prepare(examples).report
    assert report.num_kept == len(examples) - sum(n == max(lengths) for n in lengths)
    with pytest.raises(ValueError, match="min_prompt_tokens"):
        SideConfig(min_prompt_tokens=0)


def test_boundary_fallback_is_counted(real_tokenizers, tiny_byte_level, examples):
    """A prompt ending in a space merges with the answer's first word in byte-level BPE: counted and warned."""
    gpt2 = real_tokenizers["gpt2"]
    config = PromptConfig("Question: {question}\nAnswer: ", answer_prefix="")
    collator = DistillCollator(gpt2, tiny_byte_level, PromptBuilder(config), PromptBuilder(default_prompt("qed", "teacher"), tiny_byte_level, POOL))
    with pytest.warns(UserWarning, match="straddles"):
        prepared = collator.prepare(examples)
    assert prepared.report.boundary_fallbacks == {"student": len(examples), "teacher": 0}
    batch = collator.collate(prepared.features)
    _check_side(batch.student, [f.student for f in prepared.features], gpt2, collator.sides["student"].pad_id)


def test_collate_pads_without_changing_rows(tiny_metaspace, tiny_byte_level, examples):
    collator = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=examples)
    features = collator.prepare_features(examples)
    together = collator.collate(features)
    for b, f in enumerate(features):
        alone = collator.collate([f])
        for side in ("student", "teacher"):
            n = len(getattr(f, side).input_ids)
            for attribute in ("input_ids", "attention_mask", "answer_mask", "labels"):
                assert torch.equal(getattr(getattr(together, side), attribute)[b, :n], getattr(getattr(alone, side), attribute)[0])
    with pytest.raises(ValueError, match="no features"):
        collator.collate([])


def test_dataloader_use(tiny_metaspace, tiny_byte_level, examples):
    collator = DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=examples)
    loader = DataLoader(collator.prepare_features(examples), batch_size=5, collate_fn=collator)
    batches = list(loader)
    assert [len(b) for b in batches] == [5, 5, 2]
    assert sum((b.example_ids for b in batches), []) == [e.id for e in examples]
    assert all(b.alignment is None for b in batches)


def test_preparation_is_deterministic(tiny_metaspace, tiny_byte_level, examples):
    make = lambda: DistillCollator.for_task("qed", tiny_metaspace, tiny_byte_level, shot_pool=examples)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make().prepare_features(examples) == make().prepare_features(examples)


def test_slow_tokenizer_is_refused(tiny_byte_level):
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="not a fast tokenizer"):
        DistillCollator(Slow(), tiny_byte_level, PromptBuilder(PromptConfig(QA_TEMPLATE)), PromptBuilder(PromptConfig(QA_TEMPLATE)))


def test_alignment_covers_every_answer_token_including_the_end_token(real_tokenizers, example_factory):
    """The groups of each example partition exactly the answer positions of the batch (EOS included)."""
    examples = example_factory(12)
    collator = DistillCollator.for_task("qed", real_tokenizers["gpt2"], real_tokenizers["llama2"],
                                        shot_pool=examples, alignment=True)
    features = collator.prepare_features(examples)
    batch = collator.collate(features)
    assert batch.alignment is not None
    s_len, t_len = batch.student.answer_lengths, batch.teacher.answer_lengths
    assert torch.equal((batch.alignment.student_group >= 0).sum(1), s_len)
    assert torch.equal((batch.alignment.teacher_group >= 0).sum(1), t_len)
    # both sides end with the appended end token: it is a group of its own on both sides
    for b in range(len(batch)):
        last = int(batch.alignment.num_groups[b]) - 1
        assert int(batch.alignment.student_group[b, int(s_len[b]) - 1]) == last
        assert int(batch.alignment.teacher_group[b, int(t_len[b]) - 1]) == last
        assert int((batch.alignment.student_group[b] == last).sum()) == 1
