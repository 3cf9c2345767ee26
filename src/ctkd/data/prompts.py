"""Prompts: each model gets its own, as in the paper.

The student gets a zero-shot plain prompt (``Context: ...\\nQuestion: ...\\nAnswer:`` for the QA tasks,
``Dialogue: ...\\nSummary:`` for DialogSum); the teacher a few-shot prompt, rendered with its own chat
template when its tokenizer has one. :class:`PromptBuilder.render` returns the exact text after which
the answer text (:meth:`PromptBuilder.answer_text`: answer prefix + target) follows.

Policies
--------
Templates
    ``PromptConfig.template`` is a :meth:`str.format` template over :attr:`Example.fields`
    (``{context}``, ``{question}``, ``{title}``, ``{dialogue}``, ``{prompt}``); literal braces are
    written ``{{`` and ``}}``. A field the example lacks is an error naming the template and the
    fields the example has.
Plain rendering (no chat template, or ``use_chat_template=False``)::

    <instruction><sep><shot 1 body><prefix><shot 1 target><sep>...<sep><example body>

    where ``<sep>`` is ``shot_separator`` and empty parts are left out.
Chat rendering
    The instruction and each shot body are user turns, each shot target the following assistant
    turn, the example body the last user turn; the instruction opens the first user (or system)
    turn, separated by ``shot_separator``. Rendered with
    ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``. A
    ``jsonl`` chat example (field ``messages``) with the default template ``{prompt}`` replays its
    real turns instead of one user turn.
Answer prefix
    The text between the prompt and the target. ``answer_prefix=None`` (automatic) means: with a
    chat template, the text the template itself puts between its generation prompt and the
    assistant content (found by rendering a probe conversation, :func:`chat_turn_format`; ``""`` for
    ChatML, ``" "`` for Llama-2-chat); in plain mode, ``" "`` after a prompt that does not end in
    whitespace (``Answer:`` then `` Paris``), ``""`` after one that does. A string overrides both.
Few-shot sampling
    Shots come from the training split given as ``shot_pool``, drawn with :class:`random.Random`
    seeded by a string (stable across processes, unaffected by ``PYTHONHASHSEED``). The example
    itself is never a shot (excluded by id). ``shot_selection="fixed"`` draws one set of
    ``num_shots + 1`` candidates for the whole run and uses the first ``num_shots`` that are not the
    example (so almost every prompt shares the same shots: comparable prompts, cacheable prefixes);
    ``"per_example"`` draws a fresh set per example, seeded by ``(seed, example id)``.
    ``num_shots=0`` gives a zero-shot prompt.
"""

from __future__ import annotations

import json
import random
import string
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ctkd.data.examples import Example

ROLES = ("student", "teacher")
SHOT_SELECTIONS = ("fixed", "per_example")
DEFAULT_SHOT_SEPARATOR = "\n\n"
CHAT_PROBE_QUESTION = "ctkd probe question"
CHAT_PROBE_ANSWER = "ctkdprobeanswer"
"""Contents of the probe conversation used to read a chat template's answer prefix and end of turn."""

QA_TEMPLATE = "Context: {context}\nQuestion: {question}\nAnswer:"
SUMMARY_TEMPLATE = "Dialogue: {dialogue}\nSummary:"
RAW_PROMPT_TEMPLATE = "{prompt}"


@dataclass(frozen=True)
class PromptConfig:
    """How one model's prompt is written for one task.

    Attributes:
        template: :meth:`str.format` template over the example's fields, e.g. :data:`QA_TEMPLATE`.
        instruction: a line placed before everything else (empty: none).
        num_shots: number of solved training examples shown before the example (0: zero-shot).
        use_chat_template: render with the tokenizer's chat template when it has one (plain text
            otherwise).
        seed: seed of the shot sampling.
        answer_prefix: text between the prompt and the target; ``None`` = automatic (see the module
            docstring).
        shot_separator: text between the instruction, the shots and the example in plain mode, and
            between the instruction and the first turn in chat mode.
        shot_selection: ``"fixed"`` (one set of shots for all examples) or ``"per_example"``.
    """

    template: str
    instruction: str = ""
    num_shots: int = 0
    use_chat_template: bool = False
    seed: int = 0
    answer_prefix: str | None = None
    shot_separator: str = DEFAULT_SHOT_SEPARATOR
    shot_selection: str = "fixed"

    def __post_init__(self) -> None:
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as err:
            raise ValueError(f"prompt template {self.template!r} is not a valid format string: {err}") from err
        for _, name, _, _ in parsed:
            if name is not None and (name == "" or name.isdigit()):
                raise ValueError(
                    f"prompt template {self.template!r} has a positional field {{{name}}}; "
                    "use named fields such as {context} or {question}"
                )
        if not isinstance(self.num_shots, int) or self.num_shots < 0:
            raise ValueError(f"num_shots must be a non-negative integer, got {self.num_shots!r}")
        if self.shot_selection not in SHOT_SELECTIONS:
            raise ValueError(f"shot_selection must be one of {SHOT_SELECTIONS}, got {self.shot_selection!r}")

    @property
    def field_names(self) -> tuple[str, ...]:
        """Names of the example fields the template uses, in order of first use."""
        names = (name for _, name, _, _ in string.Formatter().parse(self.template) if name)
        return tuple(dict.fromkeys(name.split(".")[0].split("[")[0] for name in names))


def _student(template: str) -> PromptConfig:
    return PromptConfig(template=template)


def _teacher(template: str, instruction: str, num_shots: int) -> PromptConfig:
    return PromptConfig(template=template, instruction=instruction, num_shots=num_shots, use_chat_template=True)


DEFAULT_PROMPTS: dict[str, dict[str, PromptConfig]] = {
    "qed": {
        "student": _student(QA_TEMPLATE),
        "teacher": _teacher(QA_TEMPLATE, "Answer the question with a short span copied from the context.", 3),
    },
    "fairytaleqa": {
        "student": _student(QA_TEMPLATE),
        "teacher": _teacher(QA_TEMPLATE, "Answer the question about the story in one short sentence.", 3),
    },
    "dialogsum": {
        "student": _student(SUMMARY_TEMPLATE),
        "teacher": _teacher(
            SUMMARY_TEMPLATE,
            "Summarize the dialogue in one to three sentences, calling the speakers #Person1# and #Person2#.",
            2,
        ),
    },
    "jsonl": {
        "student": _student(RAW_PROMPT_TEMPLATE),
        "teacher": PromptConfig(template=RAW_PROMPT_TEMPLATE, use_chat_template=True),
    },
}
"""Per task and role (``student``, ``teacher``): the default :class:`PromptConfig`.

Student: the paper's zero-shot plain prompts. Teacher: the same body, an instruction line, a few
shots (3 for the QA tasks; 2 for DialogSum, whose dialogues are long), its chat template when it has
one. Change one with :func:`dataclasses.replace`.
"""


def default_prompt(task: str, role: str) -> PromptConfig:
    """``DEFAULT_PROMPTS[task][role]`` with an error that lists the valid names."""
    if task not in DEFAULT_PROMPTS:
        raise ValueError(f"no default prompt for task {task!r}; known: {', '.join(DEFAULT_PROMPTS)}")
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return DEFAULT_PROMPTS[task][role]


@dataclass(frozen=True)
class ChatTurnFormat:
    """What a chat template writes around an assistant answer.

    Attributes:
        answer_prefix: text between the generation prompt (``add_generation_prompt=True``) and the
            assistant content, e.g. ``""`` (ChatML) or ``" "`` (Llama-2-chat).
        end_of_turn: the special token that closes the assistant turn (``<|im_end|>``,
            ``<end_of_turn>``, ``</s>``), or ``None`` when the template writes none.
    """

    answer_prefix: str
    end_of_turn: str | None


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(i for i, token in decoder.items() if getattr(token, "special", False))
    return ids


def chat_turn_format(tokenizer: Any) -> ChatTurnFormat:
    """Read the answer prefix and end-of-turn token of ``tokenizer``'s chat template.

    Renders a one-turn probe conversation with and without its assistant answer: the answer prefix
    is what lies between the generation prompt and the answer; the end of turn is the first special
    token after the answer. Templates whose full rendering does not start with the generation prompt
    get prefix ``""`` (with a warning).
    """
    user = [{"role": "user", "content": CHAT_PROBE_QUESTION}]
    try:
        generation = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": CHAT_PROBE_ANSWER}], tokenize=False, add_generation_prompt=False
        )
    except Exception as err:  # templates raise arbitrary errors (jinja, raise_exception)
        raise ValueError(
            f"the chat template of {type(tokenizer).__name__} failed on a user/assistant conversation ({err}); "
            "set use_chat_template=False for this model"
        ) from err
    at = full.rfind(CHAT_PROBE_ANSWER)
    if at < 0:
        raise ValueError("the chat template drops the assistant message content; set use_chat_template=False")
    if full.startswith(generation) and at >= len(generation):
        prefix = full[len(generation) : at]
    else:
        warnings.warn(
            "the chat template's rendering of an answered conversation does not start with its generation "
            "prompt; using an empty answer prefix (set answer_prefix to override)",
            stacklevel=2,
        )
        prefix = ""
    suffix = full[at + len(CHAT_PROBE_ANSWER) :]
    special = _special_ids(tokenizer)
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    end = next((i for i in suffix_ids if i in special), None)
    return ChatTurnFormat(prefix, None if end is None else tokenizer.convert_ids_to_tokens(end))


def fill_template(template: str, example: Example) -> str:
    """``template`` filled with ``example.fields``; a missing field is an error naming both."""
    try:
        return template.format_map(example.fields)
    except KeyError as err:
        raise ValueError(
            f"prompt template {template!r} needs field {err.args[0]!r}, but example {example.id!r} "
            f"(task {example.task!r}) has fields {sorted(example.fields)}; use a template over those fields"
        ) from None


class PromptBuilder:
    """Renders one model's prompt for any example of a task.

    Args:
        config: the prompt's :class:`PromptConfig`.
        tokenizer: the model's tokenizer; needed only for chat-template rendering (``None``: plain).
        shot_pool: examples the shots are drawn from (the training split); needed when
            ``config.num_shots > 0``.
    """

    def __init__(self, config: PromptConfig, tokenizer: Any = None, shot_pool: Sequence[Example] = ()) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.uses_chat_template = bool(
            config.use_chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None)
        )
        self.chat_format: ChatTurnFormat | None = chat_turn_format(tokenizer) if self.uses_chat_template else None
        self.shot_pool = list(shot_pool)
        if config.num_shots > len(self.shot_pool):
            raise ValueError(
                f"num_shots={config.num_shots} but the shot pool holds {len(self.shot_pool)} examples; "
                "pass the training split as shot_pool or lower num_shots"
            )
        self._fixed_candidates = self._draw(f"ctkd-shots/{config.seed}") if config.shot_selection == "fixed" else []

    def _draw(self, seed: str) -> list[int]:
        count = min(len(self.shot_pool), self.config.num_shots + 1)
        return random.Random(seed).sample(range(len(self.shot_pool)), count) if self.config.num_shots else []

    @property
    def end_of_turn(self) -> str | None:
        """The chat template's end-of-turn token, or ``None`` (plain prompts, or a template without one)."""
        return None if self.chat_format is None else self.chat_format.end_of_turn

    def shots_for(self, example: Example) -> list[Example]:
        """The ``num_shots`` solved examples shown before ``example`` (never ``example`` itself)."""
        if not self.config.num_shots:
            return []
        candidates = (
            self._fixed_candidates
            if self.config.shot_selection == "fixed"
            else self._draw(f"ctkd-shots/{self.config.seed}/{example.id}")
        )
        shots = [self.shot_pool[i] for i in candidates if self.shot_pool[i].id != example.id][: self.config.num_shots]
        if len(shots) < self.config.num_shots:
            raise ValueError(
                f"only {len(shots)} shots available for example {example.id!r} (num_shots={self.config.num_shots}, "
                f"shot pool of {len(self.shot_pool)} including the example); lower num_shots"
            )
        return shots

    def answer_prefix_for(self, prompt: str) -> str:
        """The text between ``prompt`` and the target (see the module docstring)."""
        if self.config.answer_prefix is not None:
            return self.config.answer_prefix
        if self.chat_format is not None:
            return self.chat_format.answer_prefix
        return "" if not prompt or prompt[-1].isspace() else " "

    def answer_text(self, example: Example, prompt: str | None = None, target: str | None = None) -> str:
        """Answer prefix + target (``target`` defaults to ``example.target``); follows :meth:`render`."""
        prompt = self.render(example) if prompt is None else prompt
        return self.answer_prefix_for(prompt) + (example.target if target is None else target)

    def render(self, example: Example) -> str:
        """The exact prompt text after which :meth:`answer_text` follows."""
        shots = self.shots_for(example)
        if self.uses_chat_template:
            return self._render_chat(example, shots)
        return self._render_plain(example, shots)

    def _render_plain(self, example: Example, shots: list[Example]) -> str:
        blocks = [self.config.instruction] if self.config.instruction else []
        for shot in shots:
            body = fill_template(self.config.template, shot)
            blocks.append(body + self.answer_prefix_for(body) + shot.target)
        blocks.append(fill_template(self.config.template, example))
        return self.config.shot_separator.join(blocks)

    def _user_turns(self, example: Example) -> list[dict[str, str]]:
        if "messages" in example.fields and self.config.template == RAW_PROMPT_TEMPLATE:
            return json.loads(example.fields["messages"])
        return [{"role": "user", "content": fill_template(self.config.template, example)}]

    def _render_chat(self, example: Example, shots: list[Example]) -> str:
        messages: list[dict[str, str]] = []
        for shot in shots:
            messages += self._user_turns(shot) + [{"role": "assistant", "content": shot.target}]
        messages += self._user_turns(example)
        if self.config.instruction:
            first = next((i for i, m in enumerate(messages) if m["role"] in ("system", "user")), None)
            if first is None:
                messages.insert(0, {"role": "user", "content": self.config.instruction})
            else:
                content = self.config.instruction + self.config.shot_separator + messages[first]["content"]
                messages[first] = {**messages[first], "content": content}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
