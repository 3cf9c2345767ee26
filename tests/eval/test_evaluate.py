"""run_evaluation: the files it writes, atomic completion, and resuming an interrupted run."""

from __future__ import annotations

import json
import os
import re

import pytest

from ctkd.eval import evaluate as evaluate_module
from ctkd.eval.evaluate import atomic_write_text, read_partial_rows, run_evaluation
from ctkd.eval.generation import generate_answers
from ctkd.eval.report import evaluate_predictions, load_report

PROMPTS = [
    "Question: Where did the cat sit?\nAnswer:",
    "Hi",
    "Dialogue: #Person1#: Hello there.\nSummary:",
    "The quick brown fox",
    "Once upon a time",
]
IDS = ["q1", "q2", "q3", "q4", "q5"]
MAX_NEW = 4


def _references(model, tokenizer):
    """References that make the scores non-trivial: some answers right, some half right, some wrong."""
    answers = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=MAX_NEW, progress=False)
    return [[answers[0]], [answers[1] + " extra words"], ["nothing alike"], [answers[3], "other"], ["x"]]


def _run(model, tokenizer, references, out_dir, **kwargs):
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("max_new_tokens", MAX_NEW)
    return run_evaluation(
        model, tokenizer, PROMPTS, references, IDS, metric="qed", out_dir=out_dir, progress=False, **kwargs
    )


def _files(path):
    return sorted(p.name for p in path.iterdir())


class _FailAfter:
    """Wraps ``model.generate`` to raise on call number ``fail_on`` (1-based), counting prompts seen."""

    def __init__(self, model, fail_on: int | None):
        self.original = model.generate
        self.fail_on = fail_on
        self.prompts_seen = 0
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise RuntimeError("simulated crash")
        self.prompts_seen += kwargs["input_ids"].shape[0]
        return self.original(*args, **kwargs)


@pytest.fixture
def patch_generate(tiny_model, monkeypatch):
    def install(fail_on: int | None) -> _FailAfter:
        wrapper = _FailAfter(tiny_model, fail_on)
        monkeypatch.setattr(tiny_model, "generate", wrapper)
        return wrapper

    return install


def test_complete_run_writes_both_files_in_input_order(tiny_model, tiny_tokenizer, tmp_path):
    references = _references(tiny_model, tiny_tokenizer)
    report = _run(tiny_model, tiny_tokenizer, references, tmp_path, settings={"method": "sft"})
    assert _files(tmp_path) == ["predictions.jsonl", "report.json"]  # no partial or temporary files left

    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == IDS
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["references"] for r in rows] == references
    expected = evaluate_predictions("qed", [r["prediction"] for r in rows], references, IDS)
    assert [r["score"] for r in rows] == pytest.approx(expected.per_example)
    assert rows[0]["score"] == 100.0 and rows[2]["score"] == 0.0 and 0 < rows[1]["score"] < 100

    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["complete"] is True
    assert summary["metric"] == "token_f1" and summary["task"] == "qed" and summary["n"] == 5
    assert summary["score"] == pytest.approx(expected.score) == pytest.approx(report.score)
    assert summary["settings"]["max_new_tokens"] == MAX_NEW and summary["settings"]["run"] == {"method": "sft"}
    assert summary["timing"]["examples_generated"] == 5 and summary["timing"]["examples_resumed"] == 0

    loaded = load_report(tmp_path)
    assert loaded.score == pytest.approx(report.score) and loaded.per_example == pytest.approx(report.per_example)
    assert loaded.ids == IDS


def test_interrupted_run_leaves_only_a_partial_and_resumes_where_it_stopped(
    tiny_model, tiny_tokenizer, tmp_path, patch_generate
):
    references = _references(tiny_model, tiny_tokenizer)
    uninterrupted = _run(tiny_model, tiny_tokenizer, references, tmp_path / "full")
    full_rows = (tmp_path / "full" / "predictions.jsonl").read_text()

    out = tmp_path / "resumed"
    patch_generate(fail_on=2)  # the first batch of 2 succeeds, the second crashes
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tiny_model, tiny_tokenizer, references, out)
    assert _files(out) == ["predictions.jsonl.partial"]  # nothing that looks finished
    assert len(read_partial_rows(out)) == 2
    with pytest.raises(FileNotFoundError, match="has not finished"):
        load_report(out)

    counter = patch_generate(fail_on=None)
    report = _run(tiny_model, tiny_tokenizer, references, out)
    assert counter.prompts_seen == 3  # only the examples missing from the partial file
    assert (out / "predictions.jsonl").read_text() == full_rows
    assert report.per_example == uninterrupted.per_example
    summary = json.loads((out / "report.json").read_text())
    assert summary["timing"]["examples_resumed"] == 2 and summary["timing"]["examples_generated"] == 3
    assert _files(out) == ["predictions.jsonl", "report.json"]


def test_torn_last_line_is_generated_again(tiny_model, tiny_tokenizer, tmp_path, patch_generate):
    references = _references(tiny_model, tiny_tokenizer)
    patch_generate(fail_on=2)
    with pytest.raises(RuntimeError):
        _run(tiny_model, tiny_tokenizer, references, tmp_path)
    partial = tmp_path / "predictions.jsonl.partial"
    lines = partial.read_text().splitlines(keepends=True)
    partial.write_text("".join(lines[:-1]) + lines[-1][:25])  # the process died inside the last row
    counter = patch_generate(fail_on=None)
    _run(tiny_model, tiny_tokenizer, references, tmp_path)
    assert counter.prompts_seen == 4
    assert len(load_report(tmp_path).per_example) == 5


def test_partial_from_other_settings_or_prompts_is_refused(tiny_model, tiny_tokenizer, tmp_path, patch_generate):
    references = _references(tiny_model, tiny_tokenizer)
    patch_generate(fail_on=2)
    with pytest.raises(RuntimeError):
        _run(tiny_model, tiny_tokenizer, references, tmp_path)
    counter = patch_generate(fail_on=None)
    with pytest.raises(ValueError, match="max_new_tokens: saved 4, now 5"):
        _run(tiny_model, tiny_tokenizer, references, tmp_path, max_new_tokens=5)
    with pytest.raises(ValueError, match=re.escape("run: saved {}, now {'checkpoint': 'step200'}")):
        _run(tiny_model, tiny_tokenizer, references, tmp_path, settings={"checkpoint": "step200"})
    with pytest.raises(ValueError, match="saved prompt of example"):
        run_evaluation(
            tiny_model, tiny_tokenizer, ["changed", *PROMPTS[1:]], references, IDS,
            metric="qed", out_dir=tmp_path, batch_size=2, max_new_tokens=MAX_NEW, progress=False,
        )  # fmt: skip
    assert counter.prompts_seen == 0
    _run(tiny_model, tiny_tokenizer, references, tmp_path, max_new_tokens=5, resume=False)
    assert counter.prompts_seen == 5


def test_finished_folder_is_not_overwritten_silently(tiny_model, tiny_tokenizer, tmp_path, patch_generate):
    references = _references(tiny_model, tiny_tokenizer)
    _run(tiny_model, tiny_tokenizer, references, tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _run(tiny_model, tiny_tokenizer, references, tmp_path)
    patch_generate(fail_on=1)
    with pytest.raises(RuntimeError):
        _run(tiny_model, tiny_tokenizer, references, tmp_path, overwrite=True)
    # the old result was removed before the new run started: nothing claims to be complete
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "predictions.jsonl").exists()


def test_report_written_last_and_atomically(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    references = _references(tiny_model, tiny_tokenizer)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("report.json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(evaluate_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        _run(tiny_model, tiny_tokenizer, references, tmp_path)
    assert not (tmp_path / "report.json").exists()
    with pytest.raises(FileNotFoundError):
        load_report(tmp_path)
    monkeypatch.setattr(evaluate_module.os, "replace", real_replace)
    report = _run(tiny_model, tiny_tokenizer, references, tmp_path)  # resumes with nothing to generate
    assert json.loads((tmp_path / "report.json").read_text())["timing"]["examples_generated"] == 0
    assert report.n == 5


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    monkeypatch.setattr(evaluate_module.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"


def test_bad_arguments_fail_before_generating(tiny_model, tiny_tokenizer, tmp_path, patch_generate):
    counter = patch_generate(fail_on=None)
    refs = [["a"]] * 5
    with pytest.raises(KeyError, match="unknown task or metric 'bleu'"):
        run_evaluation(tiny_model, tiny_tokenizer, PROMPTS, refs, IDS, metric="bleu", out_dir=tmp_path)
    with pytest.raises(ValueError, match="unique"):
        run_evaluation(
            tiny_model, tiny_tokenizer, PROMPTS, refs, ["a", "b", "a", "c", "d"], metric="qed", out_dir=tmp_path
        )
    with pytest.raises(TypeError, match=r"references\[0\] is the string"):
        run_evaluation(tiny_model, tiny_tokenizer, PROMPTS, ["a"] * 5, IDS, metric="qed", out_dir=tmp_path)
    assert counter.calls == 0
