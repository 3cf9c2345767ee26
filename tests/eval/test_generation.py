"""Greedy generation: batched with left padding equals a plain greedy loop, newline cut, order, BOS."""

from __future__ import annotations

import pytest
import torch

from ctkd.eval.generation import (
    encode_prompts,
    generate_answers,
    iter_generate,
    special_prefix_ids,
    stop_token_ids,
)

from .conftest import build_bigram_llama, build_tiny_llama, build_tiny_tokenizer

PROMPTS = [
    "Context: The cat sat on the mat.\nQuestion: Where did the cat sit?\nAnswer:",
    "Hi",
    "Dialogue: #Person1#: Hello there.\nSummary:",
    "The quick brown fox jumps over the lazy dog. A stitch in time",
    "Once upon a time",
    "Question: Who was happy?\nAnswer:",
]


def greedy_reference(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Independent reference: one prompt, no padding, no cache, argmax of the full forward each step."""
    ids = encode_prompts(tokenizer, [prompt])[0]
    eos = set(stop_token_ids(model, tokenizer))
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + new])).logits[0, -1]
            token = int(logits.argmax())
            if token in eos:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_batched_left_padding_matches_unpadded_greedy_loop(tiny_model, tiny_tokenizer):
    max_new = 6
    expected = [greedy_reference(tiny_model, tiny_tokenizer, p, max_new) for p in PROMPTS]
    assert len(set(expected)) == len(expected)  # the model really depends on the prompt
    got = generate_answers(
        tiny_model, tiny_tokenizer, PROMPTS, batch_size=4, max_new_tokens=max_new, stop_at_newline=False, progress=False
    )
    assert got == expected
    one_by_one = [
        generate_answers(
            tiny_model, tiny_tokenizer, [p], max_new_tokens=max_new, stop_at_newline=False, progress=False
        )[0]
        for p in PROMPTS
    ]
    assert one_by_one == expected


def test_model_generation_config_cannot_turn_greedy_off(tiny_tokenizer):
    model = build_tiny_llama(tiny_tokenizer, seed=3)
    expected = [greedy_reference(model, tiny_tokenizer, p, 5) for p in PROMPTS[:3]]
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.3
    model.generation_config.repetition_penalty = 1.8
    model.generation_config.no_repeat_ngram_size = 1
    got = generate_answers(model, tiny_tokenizer, PROMPTS[:3], max_new_tokens=5, stop_at_newline=False, progress=False)
    assert got == expected


def test_tokenizer_and_model_state_are_left_as_found(tiny_model, tiny_tokenizer):
    tiny_tokenizer.padding_side = "right"
    tiny_model.train()
    try:
        generate_answers(tiny_model, tiny_tokenizer, PROMPTS[:3], batch_size=2, max_new_tokens=2, progress=False)
        assert tiny_tokenizer.padding_side == "right"
        assert tiny_model.training
    finally:
        tiny_model.eval()


# ------------------------------------------------------------------------------------------------
# A bigram model whose greedy continuation we choose: newline cut, early stop, EOS, order
# ------------------------------------------------------------------------------------------------


def _tok(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert tokenizer.convert_ids_to_tokens(token_id) == token
    return token_id


@pytest.fixture(scope="module")
def chains():
    """Three prompts whose last tokens start known greedy chains: (tokenizer, bigram model, prompts)."""
    tok = build_tiny_tokenizer()
    newline = _tok(tok, "Ċ")
    eos, im_end = tok.eos_token_id, _tok(tok, "<|im_end|>")
    words = {w: _tok(tok, w) for w in ["Ġthe", "Ġcat", "Ġmat", "Ġon", "x", "y", "z"]}
    prompts = ["Answer:", "Question: Where?", "Summary: Once upon a time a princess"]
    lasts = [encode_prompts(tok, [p])[0][-1] for p in prompts]
    assert len(set(lasts)) == 3
    successor = {
        # prompt 0: " the cat\n on" then EOS -> "the cat" after the newline cut
        lasts[0]: words["Ġthe"], words["Ġthe"]: words["Ġcat"], words["Ġcat"]: newline, newline: words["Ġon"],
        words["Ġon"]: eos,
        # prompt 1: " mat" then the end-of-turn token
        lasts[1]: words["Ġmat"], words["Ġmat"]: im_end,
        # prompt 2: a cycle with no newline and no EOS: runs to max_new_tokens
        lasts[2]: words["x"], words["x"]: words["y"], words["y"]: words["z"], words["z"]: words["x"],
    }  # fmt: skip
    assert len(successor) == 11  # no prompt's last token is also a chain token
    model = build_bigram_llama(tok, successor)
    return tok, model, prompts


def _count_forward_calls(model):
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def test_newline_cut_and_early_stop(chains):
    tok, model, prompts = chains
    calls, handle = _count_forward_calls(model)
    try:
        [batch] = list(iter_generate(model, tok, [prompts[0]], max_new_tokens=10, progress=False))
        # " the", " cat", "\n": three steps, then the newline criterion ends the batch
        assert batch.texts == ["the cat"] and batch.num_new_tokens == [3] and len(calls) == 3
        calls.clear()
        [batch] = list(
            iter_generate(model, tok, [prompts[0]], max_new_tokens=10, stop_at_newline=False, progress=False)
        )
        # without the cut: " the cat\n on" and EOS (5 steps); the text keeps the newline
        assert batch.texts == ["the cat\n on"] and batch.num_new_tokens == [5] and len(calls) == 5
    finally:
        handle.remove()


def test_batch_stops_rows_independently_and_restores_order(chains):
    tok, model, prompts = chains
    max_new = 7
    order = [2, 0, 1, 0]
    calls, handle = _count_forward_calls(model)
    try:
        got = generate_answers(
            model, tok, [prompts[i] for i in order], batch_size=4, max_new_tokens=max_new, progress=False
        )
    finally:
        handle.remove()
    expected = {0: "the cat", 1: "mat", 2: "xyzxyzx"}
    assert got == [expected[i] for i in order]
    assert len(calls) == max_new  # the cycling row keeps the batch going; finished rows are padded
    batches = list(iter_generate(model, tok, prompts, batch_size=3, max_new_tokens=max_new, progress=False))
    assert batches[0].indices == [2, 1, 0]  # longest prompt first
    assert batches[0].num_new_tokens == [max_new, 2, 3]  # cap; " mat" + <|im_end|>; " the cat" + "\n"


def test_bf16_follows_the_same_chains(chains):
    tok, model, prompts = chains
    fp32 = generate_answers(model, tok, prompts, batch_size=2, max_new_tokens=5, progress=False)
    bf16 = generate_answers(model.to(torch.bfloat16), tok, prompts, batch_size=2, max_new_tokens=5, progress=False)
    model.to(torch.float32)
    assert bf16 == fp32 == ["the cat", "mat", "xyzxy"]


def test_stop_ids_include_end_of_turn_tokens(chains):
    tok, model, _ = chains
    ids = stop_token_ids(model, tok)
    assert ids[0] == tok.eos_token_id and _tok(tok, "<|im_end|>") in ids
    assert stop_token_ids(model, tok, end_of_turn_tokens=()) == [tok.eos_token_id]


# ------------------------------------------------------------------------------------------------
# Special tokens: BOS exactly once
# ------------------------------------------------------------------------------------------------


def test_bos_added_once(tiny_tokenizer):
    bos = tiny_tokenizer.bos_token_id
    assert special_prefix_ids(tiny_tokenizer) == [bos]
    plain = tiny_tokenizer("Hello", add_special_tokens=False)["input_ids"]
    a, b = encode_prompts(tiny_tokenizer, ["Hello", "<s>Hello"])
    assert a == [bos, *plain] and b == [bos, *plain]
    assert encode_prompts(tiny_tokenizer, ["Hello"], add_special_tokens=False) == [plain]
    assert encode_prompts(tiny_tokenizer, ["<s>Hello"], add_special_tokens=True) == [[bos, bos, *plain]]


def test_tokenizer_without_bos_and_with_trailing_eos():
    no_bos = build_tiny_tokenizer(add_bos=False)
    assert special_prefix_ids(no_bos) == []
    assert encode_prompts(no_bos, ["Hello"]) == [no_bos("Hello", add_special_tokens=False)["input_ids"]]
    # A tokenizer that also appends EOS: the prompt must not end with it.
    from tokenizers import processors

    eos_tok = build_tiny_tokenizer()
    bos, eos = eos_tok.bos_token_id, eos_tok.eos_token_id
    eos_tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    assert eos_tok("Hi")["input_ids"][-1] == eos
    [ids] = encode_prompts(eos_tok, ["Hi"])
    assert ids[0] == bos and eos not in ids


def test_input_errors_name_the_problem(tiny_model, tiny_tokenizer):
    with pytest.raises(TypeError, match="list of strings"):
        generate_answers(tiny_model, tiny_tokenizer, "Hello", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        generate_answers(tiny_model, tiny_tokenizer, ["Hello"], batch_size=0, progress=False)
    no_bos = build_tiny_tokenizer(add_bos=False)
    with pytest.raises(ValueError, match="prompt 1"):
        encode_prompts(no_bos, ["Hi", ""])
    assert generate_answers(tiny_model, tiny_tokenizer, [], progress=False) == []


@pytest.mark.parametrize(("name", "has_bos"), [("gpt2", False), ("mistral", True), ("qwen1.5", False)])
def test_real_tokenizers_bos_once_and_newline_tokens(shared_dir, name, has_bos):
    from transformers import AutoTokenizer

    from ctkd.eval.generation import NewlineStoppingCriteria

    tok = AutoTokenizer.from_pretrained(shared_dir / "tokenizers" / name)
    prefix = special_prefix_ids(tok)
    assert prefix == ([tok.bos_token_id] if has_bos else [])
    prompt = "Question: who?\nAnswer:"
    [plain] = encode_prompts(tok, [prompt])
    assert plain[: len(prefix)] == prefix and plain.count(tok.bos_token_id) == (1 if has_bos else 0)
    if has_bos:  # a chat template that already wrote "<s>" gets no second one
        [templated] = encode_prompts(tok, [tok.bos_token + "[INST] " + prompt])
        assert templated[0] == tok.bos_token_id and templated.count(tok.bos_token_id) == 1
    # newline is "Ċ" in byte-level BPE and "<0x0A>" with SentencePiece byte fallback: both detected
    criteria = NewlineStoppingCriteria(tok)
    ids = tok("a\nb", add_special_tokens=False)["input_ids"]
    assert [criteria.token_has_newline(i) for i in ids] == [False, True, False]
