"""Task readers: QED, DialogSum, FairytaleQA in their original formats, and a generic JSONL format.

Every reader takes the task's folder (laid out as the original data sets ship, see below) and a split
(``train`` or ``validation``) and returns a list of :class:`~ctkd.data.examples.Example` in a
deterministic order (file order; FairytaleQA: stories sorted by file name, then file order).
Use :func:`load_task`, the one public entry point.

Folder layouts and how rows become examples
-------------------------------------------
``qed``: ``qed-{train,validation}.jsonlines``, one JSON object per line (google-research-datasets/QED).
    fields ``title`` (``title_text``), ``context`` (``paragraph_text``), ``question`` (``question_text``);
    every annotation of ``original_nq_answers`` (a list of spans ``{start, end, string}``) is one
    reference: its span strings joined with :data:`QED_SPAN_SEPARATOR`; target = first reference.
    id = ``example_id``.
``dialogsum``: ``dialogsum.{train,validation}.jsonl`` (cylnlp/dialogsum). field ``dialogue``;
    references ``summary``, or ``summary1``, ``summary2``, ... (the official test set has three);
    target = first. id = ``fname``.
``fairytaleqa``: ``questions/{train,val}/<story>-questions.csv`` and
    ``section-stories/{train,val}/<story>-story.csv`` (uci-soe/FairytaleQAData, data-by-train-split).
    fields ``title`` (story name), ``context`` (the sections named by ``cor_section``, e.g. ``3`` or
    ``3,4``, joined with a newline in the order named), ``question``; references ``answer1`` and
    ``answer4`` where non-empty; target = the first of them. id = ``<story>-<row>`` (row = 1-based data
    row; ``question_id`` repeats within some files so it cannot serve as an id).
``jsonl``: ``data_dir`` is a ``.jsonl`` file (used whatever the split) or a folder holding
    ``train.jsonl`` / ``validation.jsonl``. Each line is one of

    - ``{"prompt": str, "response": str, "references"?: [str], "id"?: str}``: field ``prompt``;
      target = ``response``; references default to ``[response]``;
    - ``{"messages": [{"role", "content"}, ...], "references"?: [...], "id"?: str}``: the last
      ``assistant`` message is the target, the messages before it the prompt (messages after it are
      ignored). Field ``prompt`` holds them as plain text (the content alone for a single user turn,
      else ``Role: content`` lines followed by ``Assistant:``), field ``messages`` holds them as JSON
      so a chat-template prompt can replay the real turns;
    - a serialised example ``{"id", "task", "fields", "target", "references"?}``, as written by
      :func:`~ctkd.data.examples.write_examples_jsonl` and by ``ctkd generate`` (teacher answers
      replacing the targets, gold references kept). The row keeps its ``task``.

    id defaults to ``<file stem>-<line>``; a repeated id is a malformed row.

Malformed rows are skipped and counted with one warning per file; an empty split is an error
(see :mod:`ctkd.data.examples`). A missing folder or file raises :class:`FileNotFoundError` naming the
path and what was expected there.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from ctkd.data.examples import (
    Example,
    MalformedRow,
    SkipLog,
    dedupe,
    ensure_nonempty,
    require_text,
)

SPLITS = ("train", "validation")
"""Split names every reader accepts."""

QED_SPAN_SEPARATOR = ", "
"""Joins the spans of a multi-span QED annotation into one reference (SQuAD-style F1 ignores it)."""

FAIRYTALEQA_SECTION_SEPARATOR = "\n"
"""Joins the story sections named by a multi-section ``cor_section`` into one context."""

FAIRYTALEQA_REFERENCE_COLUMNS = ("answer1", "answer4")
"""The two independent reference answers of a FairytaleQA question (the first is the target)."""

FAIRYTALEQA_SPLIT_FOLDER = {"train": "train", "validation": "val"}

Reader = Callable[[Path, str], list[Example]]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected {what} there")
    return path


def _read_json_lines(path: Path, log: SkipLog, parse: Callable[[dict, int], Example]) -> list[Example]:
    """Parse every non-blank line of a JSON-lines file with ``parse(row, line_number)``."""
    examples: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            log.rows_read += 1
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise MalformedRow(f"expected a JSON object, got {type(row).__name__}")
                examples.append(parse(row, line_number))
            except json.JSONDecodeError as err:
                log.skip(line_number, f"invalid JSON ({err.msg})")
            except MalformedRow as err:
                log.skip(line_number, str(err))
    return examples


# --------------------------------------------------------------------------------------------- QED


def qed_references(annotations: object) -> list[str]:
    """One reference per annotation of ``original_nq_answers``: its span strings joined.

    Accepts the original layout (a list of annotations, each a list of ``{start, end, string}``)
    and, for hub copies, annotations given as one span dict or as a dict of lists.
    """
    if not isinstance(annotations, list):
        raise MalformedRow("field 'original_nq_answers' is not a list")
    references = []
    for annotation in annotations:
        if isinstance(annotation, dict):
            strings = annotation.get("string")
            spans = [{"string": s} for s in strings] if isinstance(strings, list) else [annotation]
        elif isinstance(annotation, list):
            spans = annotation
        else:
            raise MalformedRow(f"an answer annotation is {type(annotation).__name__}, expected a list of spans")
        parts = [span.get("string", "").strip() for span in spans if isinstance(span, dict)]
        text = QED_SPAN_SEPARATOR.join(p for p in parts if p)
        if text:
            references.append(text)
    if not references:
        raise MalformedRow("no non-empty answer in 'original_nq_answers'")
    return dedupe(references)


def qed_example(row: dict, fallback_id: str) -> Example:
    """An :class:`Example` from one QED row (original keys; ``question`` accepted for hub copies)."""
    question_key = "question_text" if "question_text" in row else "question"
    references = qed_references(row.get("original_nq_answers"))
    fields = {
        "title": (row.get("title_text") or "").strip(),
        "context": require_text(row, "paragraph_text"),
        "question": require_text(row, question_key),
    }
    example_id = row.get("example_id")
    return Example(
        id=str(example_id) if example_id is not None else fallback_id,
        task="qed",
        fields=fields,
        target=references[0],
        references=references,
    )


def read_qed(data_dir: Path, split: str) -> list[Example]:
    """QED from ``qed-<split>.jsonlines`` (see the module docstring)."""
    path = _require_file(data_dir / f"qed-{split}.jsonlines", f"the QED {split} split (JSON lines, original format)")
    log = SkipLog(path)
    examples = _read_json_lines(path, log, lambda row, line: qed_example(row, f"qed-{split}-{line}"))
    log.warn()
    ensure_nonempty(examples, [path], [log])
    return examples


# ------------------------------------------------------------------------------------- DialogSum

_NUMBERED_SUMMARY = re.compile(r"^summary(\d+)$")


def dialogsum_example(row: dict, fallback_id: str) -> Example:
    """An :class:`Example` from one DialogSum row: ``summary``, or ``summary1..n`` as references."""
    dialogue = require_text(row, "dialogue")
    if "summary" in row:
        references = [require_text(row, "summary")]
    else:
        numbered = sorted(
            (int(m.group(1)), key) for key in row if (m := _NUMBERED_SUMMARY.match(key)) is not None
        )
        references = [row[key].strip() for _, key in numbered if isinstance(row[key], str) and row[key].strip()]
        if not references:
            raise MalformedRow("no non-empty 'summary' or 'summary1', 'summary2', ... field")
    references = dedupe(references)
    example_id = row.get("fname", row.get("id"))
    return Example(
        id=str(example_id) if example_id is not None else fallback_id,
        task="dialogsum",
        fields={"dialogue": dialogue},
        target=references[0],
        references=references,
    )


def read_dialogsum(data_dir: Path, split: str) -> list[Example]:
    """DialogSum from ``dialogsum.<split>.jsonl`` (see the module docstring)."""
    path = _require_file(data_dir / f"dialogsum.{split}.jsonl", f"the DialogSum {split} split (JSON lines)")
    log = SkipLog(path)
    examples = _read_json_lines(path, log, lambda row, line: dialogsum_example(row, f"dialogsum-{split}-{line}"))
    log.warn()
    ensure_nonempty(examples, [path], [log])
    return examples


# ----------------------------------------------------------------------------------- FairytaleQA


def fairytaleqa_example(row: dict, context: str, title: str, example_id: str) -> Example:
    """An :class:`Example` from one FairytaleQA question row and its story context.

    References are the non-empty columns of :data:`FAIRYTALEQA_REFERENCE_COLUMNS` (``answer2`` stands in
    for ``answer4`` in hub copies, which renumber the second reference).
    """
    question = require_text(row, "question")
    columns = FAIRYTALEQA_REFERENCE_COLUMNS if "answer4" in row else ("answer1", "answer2")
    references = dedupe(
        value.strip() for key in columns if isinstance(value := row.get(key), str) and value.strip()
    )
    if not references:
        raise MalformedRow(f"no non-empty answer in {' or '.join(repr(c) for c in columns)}")
    return Example(
        id=example_id,
        task="fairytaleqa",
        fields={"title": title, "context": context, "question": question},
        target=references[0],
        references=references,
    )


def _read_story_sections(path: Path) -> dict[str, str]:
    """Section number (as written, stripped) -> text, from a ``<story>-story.csv``."""
    log = SkipLog(path)
    sections: dict[str, str] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"section", "text"} <= set(reader.fieldnames):
            raise MalformedRow(f"story file {path.name} lacks the 'section' and 'text' columns")
        for row in reader:
            log.rows_read += 1
            section, text = (row.get("section") or "").strip(), (row.get("text") or "").strip()
            if not section or not text:
                log.skip(reader.line_num, "empty 'section' or 'text'")
                continue
            sections[section] = text
    log.warn()
    return sections


def _story_context(cor_section: str, sections: dict[str, str]) -> str:
    names = [name.strip() for name in cor_section.split(",") if name.strip()]
    if not names:
        raise MalformedRow("empty 'cor_section'")
    missing = [name for name in names if name not in sections]
    if missing:
        raise MalformedRow(f"cor_section {cor_section!r} names section(s) {missing} absent from the story file")
    return FAIRYTALEQA_SECTION_SEPARATOR.join(sections[name] for name in names)


def read_fairytaleqa(data_dir: Path, split: str) -> list[Example]:
    """FairytaleQA: question CSVs joined with their story sections (see the module docstring)."""
    folder = FAIRYTALEQA_SPLIT_FOLDER[split]
    questions_dir = data_dir / "questions" / folder
    stories_dir = data_dir / "section-stories" / folder
    for path, what in ((questions_dir, "<story>-questions.csv files"), (stories_dir, "<story>-story.csv files")):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} not found: expected the FairytaleQA {split} {what} there")
    question_files = sorted(questions_dir.glob("*-questions.csv"))
    if not question_files:
        raise FileNotFoundError(f"no *-questions.csv file in {questions_dir}: expected the FairytaleQA {split} questions")

    examples: list[Example] = []
    logs: list[SkipLog] = []
    for question_file in question_files:
        story = question_file.name[: -len("-questions.csv")]
        log = SkipLog(question_file)
        logs.append(log)
        story_file = stories_dir / f"{story}-story.csv"
        sections: dict[str, str] | None = None
        story_error = f"story file {story_file} not found"
        if story_file.is_file():
            try:
                sections = _read_story_sections(story_file)
            except (MalformedRow, csv.Error, UnicodeDecodeError) as err:
                story_error = f"unreadable story file {story_file} ({err})"
        with question_file.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            row_index = 0
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:
                    log.rows_read += 1
                    log.skip(reader.line_num, f"unreadable CSV row ({err})")
                    continue
                row_index += 1
                log.rows_read += 1
                try:
                    if None in row or any(value is None for value in row.values()):
                        raise MalformedRow("wrong number of columns")
                    if sections is None:
                        raise MalformedRow(story_error)
                    context = _story_context(row.get("cor_section") or "", sections)
                    examples.append(fairytaleqa_example(row, context, story, f"{story}-{row_index}"))
                except MalformedRow as err:
                    log.skip(reader.line_num, str(err))
        log.warn()
    ensure_nonempty(examples, question_files, logs)
    return examples


# ----------------------------------------------------------------------------------------- JSONL

JSONL_FILES = {"train": "train.jsonl", "validation": "validation.jsonl"}


def _role_label(role: str) -> str:
    return role[:1].upper() + role[1:]


def _messages_prompt(messages: list[dict]) -> str:
    """Plain-text form of the prompt turns of a chat row (see the module docstring)."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    lines = [f"{_role_label(m['role'])}: {m['content']}" for m in messages]
    return "\n".join(lines + [f"{_role_label('assistant')}:"])


def _string_list(row: dict, key: str) -> list[str] | None:
    if key not in row:
        return None
    value = row[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedRow(f"field {key!r} must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def jsonl_example(row: dict, fallback_id: str) -> Example:
    """An :class:`Example` from one row of the generic JSONL format (three row kinds, see above)."""
    example_id = str(row["id"]) if row.get("id") is not None else fallback_id
    if "fields" in row:
        fields = row["fields"]
        if not isinstance(fields, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
            raise MalformedRow("field 'fields' must map names to strings")
        target = require_text(row, "target")
        references = _string_list(row, "references")
        task = row.get("task") if isinstance(row.get("task"), str) and row.get("task") else "jsonl"
        return Example(example_id, task, dict(fields), target, [target] if references is None else references)
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        ):
            raise MalformedRow("field 'messages' must be a list of {role, content} objects with string values")
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise MalformedRow("no 'assistant' message to use as the target")
        target = messages[last]["content"].strip()
        if not target:
            raise MalformedRow("the last assistant message is empty")
        prompt_turns = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
        if not prompt_turns:
            raise MalformedRow("no message before the last assistant message to use as the prompt")
        references = _string_list(row, "references")
        fields = {"prompt": _messages_prompt(prompt_turns), "messages": json.dumps(prompt_turns, ensure_ascii=False)}
        return Example(example_id, "jsonl", fields, target, [target] if references is None else references)
    if "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise MalformedRow("field 'prompt' is empty or not a string")
        target = require_text(row, "response")
        references = _string_list(row, "references")
        return Example(example_id, "jsonl", {"prompt": prompt}, target, [target] if references is None else references)
    raise MalformedRow("row has none of 'prompt'/'response', 'messages' or 'fields'/'target'")


def read_jsonl_file(path: Path) -> list[Example]:
    """Every example of one generic-format JSONL file (see the module docstring)."""
    _require_file(path, "a JSON-lines file of prompt/response, messages or serialised-example rows")
    log = SkipLog(path)
    seen: set[str] = set()

    def parse(row: dict, line: int) -> Example:
        example = jsonl_example(row, f"{path.stem}-{line}")
        if example.id in seen:
            raise MalformedRow(f"repeated id {example.id!r}")
        seen.add(example.id)
        return example

    examples = _read_json_lines(path, log, parse)
    log.warn()
    ensure_nonempty(examples, [path], [log])
    return examples


def read_jsonl(data_dir: Path, split: str) -> list[Example]:
    """Generic JSONL: ``data_dir`` is a file (any split) or a folder with ``<split>.jsonl``."""
    if data_dir.is_file():
        return read_jsonl_file(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"{data_dir} not found: expected a .jsonl file, or a folder holding {' and '.join(JSONL_FILES.values())}"
        )
    return read_jsonl_file(data_dir / JSONL_FILES[split])


# ----------------------------------------------------------------------------------- entry point

TASKS: dict[str, Reader] = {
    "qed": read_qed,
    "dialogsum": read_dialogsum,
    "fairytaleqa": read_fairytaleqa,
    "jsonl": read_jsonl,
}
"""Task name -> reader ``(data_dir, split) -> list[Example]``."""

HUB_PREFIX = "hf://"
"""A ``data_dir`` starting with this loads the task from the Hugging Face hub (see :mod:`ctkd.data.hub`)."""


def load_task(name: str, split: str, data_dir: str | os.PathLike, *, limit: int | None = None) -> list[Example]:
    """Load one split of a task as a list of examples, in a deterministic order.

    Args:
        name: a key of :data:`TASKS` (``qed``, ``dialogsum``, ``fairytaleqa``, ``jsonl``).
        split: ``train`` or ``validation``.
        data_dir: the task's folder laid out as the original data set ships (for ``jsonl``: a file,
            or a folder with ``train.jsonl``/``validation.jsonl``); ``hf://`` loads the task's default
            hub data set and ``hf://<owner>/<name>`` a given one (needs ``datasets`` and network).
        limit: keep only the first ``limit`` examples (``None``: all).

    Raises:
        FileNotFoundError: the folder or file is missing (the message says what was expected).
        EmptyDatasetError: no usable example in the split.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    _check_split(split)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(data_dir, str) and data_dir.startswith(HUB_PREFIX):
        from ctkd.data.hub import load_hub_task

        examples = load_hub_task(name, split, data_dir[len(HUB_PREFIX):] or None)
    else:
        path = Path(data_dir).expanduser()
        if name != "jsonl" and not path.is_dir():
            where = f" (resolved from {Path.cwd()}: {path.resolve()})" if not path.is_absolute() else ""
            raise FileNotFoundError(f"{path} not found{where}: expected the {name} data folder, laid out as "
                                    "docs/data.md describes; pass its path (--data-dir PATH, or data.data_dir: PATH "
                                    "in a config)")
        examples = TASKS[name](path, split)
    return examples if limit is None else examples[:limit]
