"""Prompts: exact plain texts, few-shot sampling, chat-template rendering, answer prefixes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ctkd.data import DEFAULT_PROMPTS, Example, PromptBuilder, PromptConfig, chat_turn_format, default_prompt
from ctkd.data.prompts import QA_TEMPLATE, SUMMARY_TEMPLATE

LLAMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'].strip() }} [/INST]"
    "{% else %} {{ m['content'].strip() }} {{ eos_token }}{% endif %}{% endfor %}"
)

QA = Example("q1", "qed", {"title": "T", "context": "The cat sat.", "question": "who sat?"}, "the cat", ["the cat"])


def test_student_prompts_are_the_papers():
    builder = PromptBuilder(default_prompt("qed", "student"))
    assert builder.render(QA) == "Context: The cat sat.\nQuestion: who sat?\nAnswer:"
    assert builder.answer_text(QA) == " the cat"
    dialog = Example("d", "dialogsum", {"dialogue": "#Person1#: hi"}, "They greet.", ["They greet."])
    summary = PromptBuilder(default_prompt("dialogsum", "student"))
    assert summary.render(dialog) + summary.answer_text(dialog) == "Dialogue: #Person1#: hi\nSummary: They greet."


def test_defaults_cover_every_task_and_role():
    for task in ("qed", "dialogsum", "fairytaleqa", "jsonl"):
        student, teacher = DEFAULT_PROMPTS[task]["student"], DEFAULT_PROMPTS[task]["teacher"]
        assert student.num_shots == 0 and not student.use_chat_template and not student.instruction
        assert teacher.use_chat_template
    assert DEFAULT_PROMPTS["qed"]["student"].template == QA_TEMPLATE
    assert DEFAULT_PROMPTS["dialogsum"]["student"].template == SUMMARY_TEMPLATE
    with pytest.raises(ValueError, match="role"):
        default_prompt("qed", "judge")


def test_plain_few_shot_layout(example_factory):
    pool = example_factory(6)
    config = PromptConfig(QA_TEMPLATE, instruction="Answer briefly.", num_shots=2, seed=3)
    builder = PromptBuilder(config, shot_pool=pool)
    shots = builder.shots_for(QA)
    body = lambda e: f"Context: {e.fields['context']}\nQuestion: {e.fields['question']}\nAnswer:"  # noqa: E731
    expected = "\n\n".join(
        ["Answer briefly."] + [body(s) + " " + s.target for s in shots] + [body(QA)]
    )
    assert builder.render(QA) == expected


@pytest.mark.parametrize("selection", ["fixed", "per_example"])
@pytest.mark.parametrize("num_shots", [0, 1, 3])
def test_shots_exclude_the_example_and_are_deterministic(example_factory, selection, num_shots):
    pool = example_factory(8)
    config = PromptConfig(QA_TEMPLATE, num_shots=num_shots, shot_selection=selection, seed=11)
    first, again = PromptBuilder(config, shot_pool=pool), PromptBuilder(config, shot_pool=list(pool))
    for example in pool:
        shots = first.shots_for(example)
        assert len(shots) == num_shots
        assert example.id not in {s.id for s in shots}
        assert len({s.id for s in shots}) == num_shots
        assert [s.id for s in shots] == [s.id for s in again.shots_for(example)]
        assert first.render(example) == again.render(example)
        if num_shots:
            assert example.target not in first.render(example).split("\n\n")[-1]  # the example's body has no answer


def test_the_seed_and_the_selection_change_the_shots(example_factory):
    pool = example_factory(40)
    draws = {
        seed: tuple(s.id for s in PromptBuilder(PromptConfig(QA_TEMPLATE, num_shots=3, seed=seed), shot_pool=pool).shots_for(QA))
        for seed in range(5)
    }
    assert len(set(draws.values())) > 1
    per_example = PromptBuilder(PromptConfig(QA_TEMPLATE, num_shots=3, shot_selection="per_example"), shot_pool=pool)
    assert len({tuple(s.id for s in per_example.shots_for(e)) for e in pool[:10]}) > 1


def test_fixed_shots_are_shared_except_for_a_shot_itself(example_factory):
    pool = example_factory(10)
    builder = PromptBuilder(PromptConfig(QA_TEMPLATE, num_shots=2, seed=0), shot_pool=pool)
    outside = [s.id for s in builder.shots_for(QA)]
    for example in pool:
        ids = [s.id for s in builder.shots_for(example)]
        if example.id in outside:
            assert example.id not in ids and set(outside) - {example.id} <= set(ids)
        else:
            assert ids == outside


def test_not_enough_shots(example_factory):
    pool = example_factory(2)
    with pytest.raises(ValueError, match="shot pool holds 2"):
        PromptBuilder(PromptConfig(QA_TEMPLATE, num_shots=3), shot_pool=pool)
    builder = PromptBuilder(PromptConfig(QA_TEMPLATE, num_shots=2), shot_pool=pool)
    assert len(builder.shots_for(QA)) == 2
    with pytest.raises(ValueError, match="only 1 shots available"):
        builder.shots_for(pool[0])


def test_template_errors():
    with pytest.raises(ValueError, match="needs field 'dialogue'.*has fields"):
        PromptBuilder(PromptConfig(SUMMARY_TEMPLATE)).render(QA)
    with pytest.raises(ValueError, match="positional field"):
        PromptConfig("Context: {}")
    with pytest.raises(ValueError, match="not a valid format string"):
        PromptConfig("Context: {context")
    with pytest.raises(ValueError, match="num_shots"):
        PromptConfig(QA_TEMPLATE, num_shots=-1)
    assert PromptConfig("{title}: {context} {{literal}} {context}").field_names == ("title", "context")


def test_plain_answer_prefix_rules():
    assert PromptBuilder(PromptConfig("{question}\n")).answer_text(QA) == "the cat"
    assert PromptBuilder(PromptConfig("{question} =>")).answer_text(QA) == " the cat"
    assert PromptBuilder(PromptConfig("{question}", answer_prefix=" -> ")).answer_text(QA) == " -> the cat"


def test_chat_rendering_chatml(tiny_byte_level, example_factory):
    pool = example_factory(5)
    config = PromptConfig(QA_TEMPLATE, instruction="Be brief.", num_shots=1, use_chat_template=True, seed=1)
    builder = PromptBuilder(config, tiny_byte_level, pool)
    assert builder.uses_chat_template
    assert builder.chat_format.answer_prefix == "" and builder.end_of_turn == "<|im_end|>"
    (shot,) = builder.shots_for(QA)
    body = lambda e: f"Context: {e.fields['context']}\nQuestion: {e.fields['question']}\nAnswer:"  # noqa: E731
    expected = (
        f"<|im_start|>user\nBe brief.\n\n{body(shot)}<|im_end|>\n"
        f"<|im_start|>assistant\n{shot.target}<|im_end|>\n"
        f"<|im_start|>user\n{body(QA)}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert builder.render(QA) == expected
    assert builder.answer_text(QA) == "the cat"
    plain = PromptBuilder(dataclasses.replace(config, use_chat_template=False), tiny_byte_level, pool)
    assert not plain.uses_chat_template and plain.render(QA).startswith("Be brief.\n\nContext:")


def test_chat_without_template_falls_back_to_plain(tiny_metaspace):
    builder = PromptBuilder(PromptConfig(QA_TEMPLATE, use_chat_template=True), tiny_metaspace)
    assert not builder.uses_chat_template and builder.end_of_turn is None
    assert builder.render(QA).endswith("Answer:")


def test_chat_turn_format_llama2_style(tiny_metaspace):
    tok = tiny_metaspace.__class__(tokenizer_object=tiny_metaspace.backend_tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    fmt = chat_turn_format(tok)
    assert fmt.answer_prefix == " " and fmt.end_of_turn == "</s>"
    rendered = PromptBuilder(PromptConfig("{question}", use_chat_template=True), tok).render(QA)
    assert rendered == "<s>[INST] who sat? [/INST]"


def test_chat_turn_format_real_qwen(real_tokenizers):
    fmt = chat_turn_format(real_tokenizers["qwen1.5"])
    assert fmt.answer_prefix == "" and fmt.end_of_turn == "<|im_end|>"


def test_jsonl_messages_replay_in_chat_mode(tiny_byte_level):
    turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    example = Example("m", "jsonl", {"prompt": "System: S\nUser: U\nAssistant:", "messages": json.dumps(turns)}, "A", ["A"])
    chat = PromptBuilder(DEFAULT_PROMPTS["jsonl"]["teacher"], tiny_byte_level)
    assert chat.render(example) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    plain = PromptBuilder(DEFAULT_PROMPTS["jsonl"]["student"])
    assert plain.render(example) + plain.answer_text(example) == "System: S\nUser: U\nAssistant: A"
