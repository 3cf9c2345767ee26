"""Task readers: counts on the shared data, row semantics on hand-written files, malformed rows."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest

from ctkd.data import (
    SPLITS,
    TASKS,
    EmptyDatasetError,
    Example,
    MalformedRowWarning,
    builtin_data_dir,
    load_task,
    write_examples_jsonl,
)
from ctkd.data.readers import QED_SPAN_SEPARATOR

# The counts of shared/data/README.md. Every raw row of these files is valid, so these are both the
# raw row counts and the counts that survive validation: the tests also assert no row is skipped.
EXPECTED_COUNTS = {
    ("qed", "train"): 1006,
    ("qed", "validation"): 136,
    ("dialogsum", "train"): 500,
    ("dialogsum", "validation"): 401,
    ("fairytaleqa", "train"): 8548,
    ("fairytaleqa", "validation"): 1025,
}
FAIRYTALEQA_STORIES = {"train": 232, "validation": 23}


def _load_strict(task: str, split: str, data_dir) -> list[Example]:
    """load_task with malformed-row warnings turned into errors (none is expected on the shared data)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", MalformedRowWarning)
        return load_task(task, split, data_dir)


@pytest.mark.parametrize(("task", "split"), sorted(EXPECTED_COUNTS))
def test_shared_counts(shared_dir: Path, task: str, split: str):
    examples = _load_strict(task, split, shared_dir / "data" / task)
    assert len(examples) == EXPECTED_COUNTS[task, split]
    assert len({e.id for e in examples}) == len(examples), "ids must be unique within a split"
    for e in examples:
        assert e.task == task
        assert e.target and e.target == e.target.strip()
        assert e.references and e.references[0] == e.target
        assert all(r.strip() for r in e.references)
    if task == "fairytaleqa":
        stories = {e.fields["title"] for e in examples}
        assert len(stories) == FAIRYTALEQA_STORIES[split]


def _raw_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_qed_references_are_the_annotations(shared_dir: Path):
    """Each reference is one annotation's spans joined; the spans are paragraph substrings (an independent check)."""
    path = shared_dir / "data" / "qed" / "qed-validation.jsonlines"
    rows = [json.loads(line) for line in _raw_lines(path)]
    examples = load_task("qed", "validation", path.parent)
    multi_span = 0
    for row, example in zip(rows, examples, strict=True):
        assert example.id == str(row["example_id"])
        assert example.fields["context"] == row["paragraph_text"].strip()
        assert example.fields["question"] == row["question_text"].strip()
        expected = list(dict.fromkeys(
            QED_SPAN_SEPARATOR.join(span["string"].strip() for span in annotation)
            for annotation in row["original_nq_answers"]
        ))
        assert example.references == expected
        for annotation in row["original_nq_answers"]:
            multi_span += len(annotation) > 1
            for span in annotation:
                assert span["string"] in example.fields["context"]
    assert multi_span > 0, "the validation split has multi-span annotations; the join must be exercised"


def test_dialogsum_validation_has_three_references(shared_dir: Path):
    examples = load_task("dialogsum", "validation", shared_dir / "data" / "dialogsum")
    rows = [json.loads(line) for line in _raw_lines(shared_dir / "data" / "dialogsum" / "dialogsum.validation.jsonl")]
    for row, example in zip(rows, examples, strict=True):
        assert example.references == list(dict.fromkeys(row[f"summary{i}"].strip() for i in (1, 2, 3)))
        assert example.fields == {"dialogue": row["dialogue"].strip()}


def test_fairytaleqa_multi_section_context(shared_dir: Path):
    """A question whose cor_section names two sections gets both texts, in order, joined by a newline."""
    root = shared_dir / "data" / "fairytaleqa"
    question_file = root / "questions" / "val" / sorted(p.name for p in (root / "questions" / "val").iterdir())[0]
    story = question_file.name[: -len("-questions.csv")]
    with (root / "section-stories" / "val" / f"{story}-story.csv").open(encoding="utf-8", newline="") as handle:
        sections = {row["section"]: row["text"].strip() for row in csv.DictReader(handle)}
    with question_file.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    examples = {e.id: e for e in load_task("fairytaleqa", "validation", root) if e.fields["title"] == story}
    assert len(examples) == len(rows)
    checked = 0
    for index, row in enumerate(rows, start=1):
        example = examples[f"{story}-{index}"]
        names = [n.strip() for n in row["cor_section"].split(",")]
        assert example.fields["context"] == "\n".join(sections[n] for n in names)
        assert example.references == list(dict.fromkeys(a.strip() for a in (row["answer1"], row["answer4"]) if a.strip()))
        checked += len(names) > 1
    assert checked > 0, f"{question_file} should hold a multi-section question"


def test_limit_keeps_the_first_examples(shared_dir: Path):
    full = load_task("qed", "train", shared_dir / "data" / "qed")
    assert load_task("qed", "train", shared_dir / "data" / "qed", limit=7) == full[:7]
    with pytest.raises(ValueError, match="limit"):
        load_task("qed", "train", shared_dir / "data" / "qed", limit=0)


def test_order_is_deterministic(shared_dir: Path):
    root = shared_dir / "data" / "fairytaleqa"
    assert [e.id for e in load_task("fairytaleqa", "validation", root)] == [
        e.id for e in load_task("fairytaleqa", "validation", root)
    ]


def test_builtin_qed_subset(shared_dir: Path):
    folder = builtin_data_dir("qed")
    assert (folder / "NOTICE").is_file()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000
    for split, count in (("train", 200), ("validation", 40)):
        builtin = _load_strict("qed", split, folder)
        assert len(builtin) == count
        assert builtin == load_task("qed", split, shared_dir / "data" / "qed", limit=count)


def test_builtin_unknown_task():
    with pytest.raises(ValueError, match="no built-in data"):
        builtin_data_dir("dialogsum")


def test_registry_and_argument_errors(tmp_path: Path):
    assert set(TASKS) == {"qed", "dialogsum", "fairytaleqa", "jsonl"}
    assert SPLITS == ("train", "validation")
    with pytest.raises(ValueError, match="unknown task 'squad'"):
        load_task("squad", "train", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_task("qed", "test", tmp_path)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("qed", "qed-train.jsonlines"),
        ("dialogsum", "dialogsum.train.jsonl"),
        ("fairytaleqa", "questions"),
        ("jsonl", "train.jsonl"),
    ],
)
def test_missing_files_name_the_path(tmp_path: Path, task: str, expected: str):
    with pytest.raises(FileNotFoundError, match=expected):
        load_task(task, "train", tmp_path)
    missing = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match="absent"):
        load_task(task, "train", missing)


# ------------------------------------------------------------------------------ malformed rows


def _qed_row(i: int, **overrides) -> dict:
    row = {
        "example_id": i,
        "title_text": "T",
        "question_text": f"q{i}",
        "paragraph_text": "The cat sat on the mat.",
        "original_nq_answers": [[{"start": 0, "end": 7, "string": "The cat"}]],
    }
    row.update(overrides)
    return row


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_qed_malformed_rows_are_skipped_and_counted(tmp_path: Path):
    no_question = _qed_row(2)
    del no_question["question_text"]
    _write_lines(
        tmp_path / "qed-train.jsonlines",
        [
            json.dumps(_qed_row(1)),
            json.dumps(no_question),
            json.dumps(_qed_row(3, original_nq_answers=[[{"start": 0, "end": 0, "string": "  "}]])),
            "{not json",
            "",
            json.dumps([1, 2]),
            json.dumps(_qed_row(6, original_nq_answers=[[{"string": "The"}, {"string": "cat"}], []])),
        ],
    )
    with pytest.warns(MalformedRowWarning) as record:
        examples = load_task("qed", "train", tmp_path)
    assert [e.id for e in examples] == ["1", "6"]
    assert examples[1].references == [f"The{QED_SPAN_SEPARATOR}cat"]
    message = str(record[0].message)
    assert "qed-train.jsonlines" in message and "skipped 4 of 6 rows" in message
    for line in ("line 2", "line 3", "line 4", "line 6"):
        assert line in message


def test_all_malformed_is_an_error_naming_the_file(tmp_path: Path):
    _write_lines(tmp_path / "dialogsum.validation.jsonl", [json.dumps({"fname": "a", "dialogue": "x", "summary": ""})])
    with pytest.warns(MalformedRowWarning), pytest.raises(EmptyDatasetError, match="dialogsum.validation.jsonl"):
        load_task("dialogsum", "validation", tmp_path)


def test_empty_file_is_an_error(tmp_path: Path):
    (tmp_path / "qed-validation.jsonlines").write_text("\n", encoding="utf-8")
    with pytest.raises(EmptyDatasetError, match="0 rows read"):
        load_task("qed", "validation", tmp_path)


def test_dialogsum_numbered_summaries(tmp_path: Path):
    rows = [
        {"fname": "t1", "dialogue": "#Person1#: hi", "summary1": "A", "summary2": "", "summary3": "C", "summary10": "J"},
        {"fname": "t2", "dialogue": "#Person1#: hi", "summary": "S", "topic": "x"},
        {"fname": "t3", "dialogue": "  ", "summary": "S"},
    ]
    _write_lines(tmp_path / "dialogsum.train.jsonl", [json.dumps(r) for r in rows])
    with pytest.warns(MalformedRowWarning, match="line 3: field 'dialogue' is empty"):
        examples = load_task("dialogsum", "train", tmp_path)
    assert [(e.id, e.target, e.references) for e in examples] == [("t1", "A", ["A", "C", "J"]), ("t2", "S", ["S"])]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


QUESTION_HEADER = ["question_id", "local-or-sum", "cor_section", "question", "answer1", "answer2", "answer4"]


def test_fairytaleqa_rows(tmp_path: Path):
    _write_csv(tmp_path / "section-stories/train/fox-story.csv", ["section", "text"], [["1", "One."], ["2", "Two, \"quoted\"."], ["3", "Three."]])
    _write_csv(
        tmp_path / "questions/train/fox-questions.csv",
        QUESTION_HEADER,
        [
            ["1", "local", "1", "Q1?", "a1", "", "a4"],
            ["1", "local", "2, 3", "Q2?", "b1", "x", ""],  # repeated question_id: ids use the row number
            ["3", "local", "9", "Q3?", "c1", "", ""],  # section 9 does not exist
            ["4", "local", "1", "Q4?", "", "", ""],  # no answer
            ["5", "local", "1"],  # short row
            ["6", "local", "3", "Q6?", " ", "", "f4"],  # empty answer1: answer4 is the target
        ],
    )
    _write_csv(tmp_path / "questions/train/lonely-questions.csv", QUESTION_HEADER, [["1", "local", "1", "Q?", "a", "", ""]])
    with pytest.warns(MalformedRowWarning) as record:
        examples = load_task("fairytaleqa", "train", tmp_path)
    assert [(e.id, e.fields["context"], e.target, e.references) for e in examples] == [
        ("fox-1", "One.", "a1", ["a1", "a4"]),
        ("fox-2", 'Two, "quoted".\nThree.', "b1", ["b1"]),
        ("fox-6", "Three.", "f4", ["f4"]),
    ]
    messages = " | ".join(str(w.message) for w in record)
    assert "fox-questions.csv" in messages and "skipped 3 of 6 rows" in messages
    assert "section(s) ['9']" in messages and "wrong number of columns" in messages
    assert "lonely-questions.csv" in messages and "lonely-story.csv not found" in messages


# ----------------------------------------------------------------------------------------- JSONL


def test_jsonl_row_kinds(tmp_path: Path):
    rows = [
        {"prompt": "Say hi:", "response": " hi "},
        {"id": "chat", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris"},
            {"role": "user", "content": "ignored"},
        ], "references": ["Paris", "paris"]},
        {"id": "single", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"id": "gen", "task": "qed", "fields": {"context": "c", "question": "q"}, "target": "teacher says", "references": ["gold"]},
    ]
    path = _write_lines(tmp_path / "mine.jsonl", [json.dumps(r) for r in rows])
    examples = load_task("jsonl", "validation", path)
    assert examples[0] == Example("mine-1", "jsonl", {"prompt": "Say hi:"}, "hi", ["hi"])
    chat = examples[1]
    assert chat.target == "Paris" and chat.references == ["Paris", "paris"]
    assert chat.fields["prompt"] == "System: Be brief.\nUser: Capital of France?\nAssistant:"
    assert json.loads(chat.fields["messages"]) == rows[1]["messages"][:2]
    assert examples[2].fields["prompt"] == "2+2?"
    assert examples[3] == Example("gen", "qed", {"context": "c", "question": "q"}, "teacher says", ["gold"])


def test_jsonl_malformed_rows(tmp_path: Path):
    rows = [
        {"id": "a", "prompt": "p", "response": "r"},
        {"id": "a", "prompt": "p", "response": "r2"},  # repeated id
        {"prompt": "p"},  # no response
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": "not a list"},
        {"fields": {"x": 1}, "target": "t"},
        {"text": "unknown kind"},
        {"prompt": "p", "response": "r", "references": "not a list"},
    ]
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(r) for r in rows])
    with pytest.warns(MalformedRowWarning, match=r"skipped 7 of 8 rows of .*bad\.jsonl .*line 2: repeated id 'a'"):
        examples = load_task("jsonl", "train", path)
    assert [e.id for e in examples] == ["a"]


def test_jsonl_folder_and_round_trip(tmp_path: Path, shared_dir: Path):
    originals = load_task("fairytaleqa", "validation", shared_dir / "data" / "fairytaleqa", limit=25)
    generated = [Example(e.id, e.task, e.fields, f"generated {i}", e.references) for i, e in enumerate(originals)]
    write_examples_jsonl(generated, tmp_path / "gen" / "validation.jsonl")
    write_examples_jsonl(originals, tmp_path / "gen" / "train.jsonl")
    assert load_task("jsonl", "validation", tmp_path / "gen") == generated
    assert load_task("jsonl", "train", tmp_path / "gen") == originals
    assert not list((tmp_path / "gen").glob("*.tmp"))


# ------------------------------------------------------------------------- hub (offline stand-in)


def test_hub_rows_map_like_local_rows(monkeypatch):
    """The hub path with a stand-in ``datasets`` module: same row parsers, hub column names."""
    import sys
    import types

    hub_rows = {
        "google-research-datasets/qed": [
            {"example_id": 5, "title_text": "T", "question": "q?", "paragraph_text": "P a b.",
             "original_nq_answers": [{"start": [0, 4], "end": [1, 5], "string": ["P", "b"]}]},
        ],
        "knkarthick/dialogsum": [{"id": "d1", "dialogue": "#Person1#: hi", "summary": "S.", "topic": "t"}],
        "WorkInTheDark/FairytaleQA": [
            {"story_name": "fox", "story_section": "Once.", "question": "Who?", "answer1": "a fox", "answer2": ""},
            {"story_name": "fox", "story_section": "Once.", "question": "Who?", "answer1": "", "answer2": ""},
        ],
    }
    calls = []

    def load_dataset(dataset_id, split):
        calls.append((dataset_id, split))
        return hub_rows[dataset_id]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    (qed,) = load_task("qed", "validation", "hf://")
    assert (qed.id, qed.fields["question"], qed.references) == ("5", "q?", [f"P{QED_SPAN_SEPARATOR}b"])
    (dialog,) = load_task("dialogsum", "train", "hf://knkarthick/dialogsum")
    assert (dialog.id, dialog.target) == ("d1", "S.")
    with pytest.warns(MalformedRowWarning, match="skipped 1 of 2 rows of hf://WorkInTheDark/FairytaleQA"):
        (fairy,) = load_task("fairytaleqa", "validation", "hf://")
    assert fairy.fields == {"title": "fox", "context": "Once.", "question": "Who?"} and fairy.references == ["a fox"]
    assert calls == [
        ("google-research-datasets/qed", "validation"),
        ("knkarthick/dialogsum", "train"),
        ("WorkInTheDark/FairytaleQA", "validation"),
    ]


def test_hub_without_datasets_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        load_task("qed", "train", "hf://")
    with pytest.raises(ValueError, match="no hub loader"):
        load_task("jsonl", "train", "hf://")
