"""Greedy generation of answers for evaluation, as in the paper's protocol.

Protocol: greedy decoding, at most 150 new tokens, output cut at the first newline. Prompts are
sorted by token length (longest first, so an out-of-memory error shows up in the first batch) and
batched with LEFT padding, so every row's last prompt token sits in the last column and the new
tokens of all rows line up; the answers come back in the caller's order.

Special tokens. A prompt may already start with the tokenizer's BOS (a chat template renders it as
text, e.g. ``"<s>[INST] ..."`` or ``"<bos><start_of_turn>..."``), and letting the tokenizer add its
own would give two. So prompts are always tokenized with ``add_special_tokens=False`` and the
tokenizer's *leading* special tokens (its BOS, found by :func:`special_prefix_ids`) are then put in
front unless the prompt's ids already begin with them (``add_special_tokens=None``, the default;
``True`` / ``False`` force it). Special tokens a tokenizer appends (an EOS some tokenizers add at the
end) are never added: a prompt that ends with EOS asks the model to stop before it starts.

Stopping. ``model.generate`` stops a row at any of :func:`stop_token_ids` (the tokenizer's EOS, the
model's generation-config EOS and chat end-of-turn tokens such as ``<|im_end|>``) and, with
``stop_at_newline``, at the first generated token whose text contains ``"\\n"``
(:class:`NewlineStoppingCriteria`); the batch ends when every row has stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

DEFAULT_MAX_NEW_TOKENS = 150
"""The paper's limit on generated tokens per answer."""

END_OF_TURN_TOKENS: tuple[str, ...] = (
    "<|im_end|>",  # ChatML (SmolLM2-Instruct, Qwen2.5-Instruct)
    "<end_of_turn>",  # Gemma
    "<|eot_id|>",  # Llama 3
    "<|end|>",  # Phi-3
    "<|endoftext|>",  # GPT-2 / Qwen end of document
)
"""Token strings that end a turn in common chat formats; those a tokenizer has also stop generation."""


@dataclass
class GeneratedBatch:
    """Answers for one batch of prompts.

    Attributes:
        indices: position of each prompt in the caller's list.
        texts: the answers (new tokens only, special tokens skipped, cut at the first newline when
            asked, stripped), in the order of ``indices``.
        num_new_tokens: generated tokens of each answer up to and including the token that stopped it
            (EOS or the newline token), at most ``max_new_tokens``.
    """

    indices: list[int]
    texts: list[str]
    num_new_tokens: list[int]


class NewlineStoppingCriteria(StoppingCriteria):
    """Marks a row finished when its last token's text contains a newline.

    Each distinct token id is decoded once and remembered, so a step costs one dictionary look-up
    per row. ``model.generate`` AND-s the result into its running ``unfinished`` flags, so a row
    stays finished once its newline has been produced, and the loop ends when all rows are.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._has_newline: dict[int, bool] = {}

    def token_has_newline(self, token_id: int) -> bool:
        known = self._has_newline.get(token_id)
        if known is None:
            known = "\n" in self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._has_newline[token_id] = known
        return known

    def __call__(self, input_ids: Tensor, scores: Tensor | None, **kwargs) -> Tensor:
        """input_ids: (B, T) long, prompt + tokens so far. Returns (B,) bool, True where a row is done."""
        last = input_ids[:, -1].tolist()
        return torch.tensor([self.token_has_newline(t) for t in last], dtype=torch.bool, device=input_ids.device)


def special_prefix_ids(tokenizer) -> list[int]:
    """The special token ids the tokenizer puts before a text (its BOS), ``[]`` when none.

    Found by encoding a probe text with and without special tokens and taking what comes before the
    plain encoding.

    Raises:
        ValueError: when the plain encoding is not found inside the one with special tokens.
    """
    probe = "Answer: yes"
    with_special = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    raise ValueError(
        f"cannot tell which special tokens {type(tokenizer).__name__} adds: {probe!r} encodes to "
        f"{plain} without and {with_special} with special tokens; pass add_special_tokens=True or "
        "False explicitly"
    )


def _as_id_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def stop_token_ids(model, tokenizer, end_of_turn_tokens: Sequence[str] = END_OF_TURN_TOKENS) -> list[int]:
    """Token ids that end an answer: tokenizer EOS, model generation-config EOS, end-of-turn tokens.

    Only end-of-turn strings the tokenizer knows as a single token are used. Order: first seen first.
    """
    ids = _as_id_list(tokenizer.eos_token_id)
    generation_config = getattr(model, "generation_config", None)
    ids += _as_id_list(getattr(generation_config, "eos_token_id", None))
    for token in end_of_turn_tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        # A missing token maps to None or to the unknown token, whose text differs from `token`.
        if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
            continue
        ids.append(int(token_id))
    return list(dict.fromkeys(ids))


def _pad_token_id(model, tokenizer, stop_ids: list[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    model_pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if model_pad is not None:
        return int(model_pad)
    if stop_ids:
        # Padding sits left of the prompt under the attention mask and after a finished answer;
        # reusing EOS there is the usual choice for tokenizers without a pad token.
        return stop_ids[0]
    raise ValueError(
        f"{type(tokenizer).__name__} has neither a pad nor an EOS token, so batches cannot be padded "
        "and answers cannot end; set tokenizer.pad_token and tokenizer.eos_token"
    )


def encode_prompts(tokenizer, prompts: Sequence[str], *, add_special_tokens: bool | None = None) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's leading special tokens exactly once.

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompts: the prompt texts.
        add_special_tokens: ``None`` (default) puts :func:`special_prefix_ids` in front of a prompt
            unless its ids already start with them; ``True`` always puts them; ``False`` never does.

    Raises:
        ValueError: when a prompt encodes to no tokens at all (nothing to condition on).
    """
    prompts = list(prompts)
    if not prompts:
        return []
    plain = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    prefix = [] if add_special_tokens is False else special_prefix_ids(tokenizer)
    encoded = []
    for index, ids in enumerate(plain):
        ids = list(ids)
        if prefix and (add_special_tokens or ids[: len(prefix)] != prefix):
            ids = prefix + ids
        if not ids:
            raise ValueError(
                f"prompt {index} ({prompts[index]!r}) encodes to no tokens and the tokenizer adds no BOS; "
                "give every example a non-empty prompt"
            )
        encoded.append(ids)
    return encoded


def _left_pad(batch: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(B, W) input ids and attention mask, each row right-aligned (left padding)."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


@contextmanager
def _eval_mode(model):
    """Dropout off while generating; the model's own training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def iter_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop_at_newline: bool = True,
    add_special_tokens: bool | None = None,
    end_of_turn_tokens: Sequence[str] = END_OF_TURN_TOKENS,
    progress: bool = True,
) -> Iterator[GeneratedBatch]:
    """Generate greedy answers batch by batch, longest prompts first.

    Same arguments as :func:`generate_answers`; yields one :class:`GeneratedBatch` per batch, whose
    ``indices`` point into ``prompts``, so a caller can save results as they come (see
    :func:`ctkd.eval.evaluate.run_evaluation`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got one string; wrap it in a list")
    encoded = encode_prompts(tokenizer, prompts, add_special_tokens=add_special_tokens)
    stop_ids = stop_token_ids(model, tokenizer, end_of_turn_tokens)
    pad_id = _pad_token_id(model, tokenizer, stop_ids)
    device = _model_device(model)
    newline_criteria = NewlineStoppingCriteria(tokenizer) if stop_at_newline else None
    # Longest first; ties keep the caller's order (sorted() is stable).
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    stop_set = set(stop_ids)

    with _eval_mode(model), torch.inference_mode(), tqdm(
        total=len(order), desc="generate", unit="ex", disable=not progress
    ) as bar:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            input_ids, attention_mask = _left_pad([encoded[i] for i in indices], pad_id, device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                # Plain greedy decoding whatever the model's generation_config says: no sampling, one
                # beam, no penalties and no minimum length (they would change the argmax sequence).
                do_sample=False,
                num_beams=1,
                repetition_penalty=1.0,
                no_repeat_ngram_size=0,
                min_new_tokens=0,
                pad_token_id=pad_id,
                eos_token_id=stop_ids or None,
                stopping_criteria=StoppingCriteriaList([newline_criteria] if newline_criteria else []),
            )
            new_tokens = output[:, input_ids.shape[1] :].tolist()
            texts, counts = [], []
            for row in new_tokens:
                length = next((j + 1 for j, t in enumerate(row) if t in stop_set), len(row))
                if newline_criteria is not None:
                    newline_at = next(
                        (j + 1 for j, t in enumerate(row[:length]) if newline_criteria.token_has_newline(t)), length
                    )
                    length = min(length, newline_at)
                text = tokenizer.decode(
                    [t for t in row[:length] if t not in stop_set], skip_special_tokens=True
                )
                if stop_at_newline:
                    text = text.split("\n", 1)[0]
                texts.append(text.strip())
                counts.append(length)
            bar.update(len(indices))
            yield GeneratedBatch(indices=list(indices), texts=texts, num_new_tokens=counts)


def generate_answers(
    model,
    tokenizer,
    prompts: list[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop_at_newline: bool = True,
    add_special_tokens: bool | None = None,
    end_of_turn_tokens: Sequence[str] = END_OF_TURN_TOKENS,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to ``prompts``, in the same order.

    Args:
        model: a Hugging Face causal LM (fp32 or bf16, on any device; inputs follow ``model.device``).
        tokenizer: its tokenizer; it is not modified.
        prompts: prompt texts, possibly rendered by a chat template (see the module docstring on BOS).
        batch_size: prompts per ``generate`` call (they are sorted by length first).
        max_new_tokens: most tokens generated per answer (the paper: 150).
        stop_at_newline: stop a row at its first newline and cut the text there (the paper's protocol).
        add_special_tokens: ``None`` adds the tokenizer's BOS unless a prompt already starts with it;
            ``True`` / ``False`` force it.
        end_of_turn_tokens: token strings that also end an answer when the tokenizer has them.
        progress: show a tqdm bar.

    Returns:
        One answer per prompt: the new tokens decoded without special tokens, cut at the first newline
        when ``stop_at_newline``, stripped of surrounding whitespace.
    """
    answers: list[str | None] = [None] * len(prompts)
    for batch in iter_generate(
        model,
        tokenizer,
        prompts,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        stop_at_newline=stop_at_newline,
        add_special_tokens=add_special_tokens,
        end_of_turn_tokens=end_of_turn_tokens,
        progress=progress,
    ):
        for index, text in zip(batch.indices, batch.texts):
            answers[index] = text
    return answers  # type: ignore[return-value]
