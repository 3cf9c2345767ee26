"""``ctkd generate``: the data file it writes (read back by the jsonl reader, taken by ``ctkd distill`` as
``data.targets``), atomic completion and resuming, the empty-answer policy, and the one-line error exits."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny_cli import JSONL_COUNTS, QED_COUNTS

import ctkd.generate as generate_module
from ctkd.cli.main import main
from ctkd.config import load_config
from ctkd.data import Example, PromptBuilder, default_prompt, load_task
from ctkd.eval import GeneratedBatch, generate_answers
from ctkd.generate import GenerationSettingsError, generate_targets
from ctkd.models import load_model
from ctkd.train.run import load_examples

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW = 6


def _generate(capsys, *argv) -> tuple[int, str, str]:
    code = main(["generate", *map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_generate_writes_the_teachers_few_shot_answers_as_targets(cli_dirs, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    code, text, err = _generate(capsys, cli_dirs["teacher"], "--task", "qed", "--data-dir", cli_dirs["qed"],
                                "--out", out, "--max-new-tokens", MAX_NEW)
    assert code == 0, err
    assert _files(tmp_path) == ["answers.jsonl", "answers.jsonl.report.json"]  # no partial or temporary file left

    # The answers computed here directly: the teacher's default few-shot prompt (plain: its tokenizer has no chat
    # template), shots from the train split, greedy decoding.
    train = load_task("qed", "train", cli_dirs["qed"])
    teacher = load_model(cli_dirs["teacher"], role="teacher")
    builder = PromptBuilder(default_prompt("qed", "teacher"), teacher.tokenizer, train)
    prompts = [builder.render(ex) for ex in train]
    assert all(prompt.count("Answer:") == 4 for prompt in prompts)  # 3 shots + the example
    answers = generate_answers(teacher.model, teacher.tokenizer, prompts, max_new_tokens=MAX_NEW, progress=False)
    kept = [(ex, answer) for ex, answer in zip(train, answers) if answer]
    assert kept, "the tiny teacher answers nothing; the test needs another seed"

    written = load_task("jsonl", "train", out)
    assert [ex.id for ex in written] == [ex.id for ex, _ in kept]
    for ex, (original, answer) in zip(written, kept):
        assert ex.target == answer
        assert (ex.task, ex.fields, ex.references) == (original.task, original.fields, original.references)
    report = json.loads((tmp_path / "answers.jsonl.report.json").read_text())
    empty = [ex.id for ex, answer in zip(train, answers) if not answer]
    assert report["empty_ids"] == empty and report["written"] == len(kept) and report["examples"] == len(train)
    assert report["settings"]["run"]["role"] == "teacher" and report["settings"]["run"]["split"] == "train"
    assert f"wrote {len(kept)} examples to {out}" in text


def test_distill_trains_on_the_generated_targets(cli_dirs, tmp_path, capsys):
    """The unlabeled setting end to end: generate with the config's teacher, distil on its answers for one step,
    then `ctkd eval RUN` reproduces the run's own after-training score."""
    run = tmp_path / "run"
    targets = tmp_path / "teacher-answers.jsonl"
    config = {
        "student": {"name": str(cli_dirs["student"])},
        "teacher": {"name": str(cli_dirs["teacher"])},
        "data": {"task": "jsonl", "data_dir": str(cli_dirs["jsonl"]), "targets": str(targets),
                 "student_max_length": 96, "teacher_max_length": 128},
        "loss": {"method": "multilevel_ot", "params": {"top_k": 20}},
        "optim": {"learning_rate": 1e-3, "max_steps": 1, "batch_size": 2},
        "eval": {"before": False, "limit": 3, "max_new_tokens": 5, "batch_size": 2},
        "output": {"dir": str(run), "logging_steps": 1, "save_steps": 1, "report_to": []},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    code, _, err = _generate(capsys, "--config", config_path, "--out", targets)  # MODEL: the config's teacher
    assert code == 0, err
    generated = {ex.id: ex.target for ex in load_task("jsonl", "train", targets)}
    report = json.loads(targets.with_name(targets.name + ".report.json").read_text())
    assert report["settings"]["run"]["model"] == str(cli_dirs["teacher"].resolve())
    assert len(generated) + len(report["empty_ids"]) == JSONL_COUNTS["train"] and generated

    train, _ = load_examples(load_config(config_path))
    assert {ex.id: ex.target for ex in train} == generated  # empty answers are left out of training

    assert main(["distill", str(config_path), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["train_examples"] == len(generated)
    capsys.readouterr()

    code = main(["eval", str(run), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    mine = json.loads((run / "eval" / "jsonl-validation-student" / "report.json").read_text())
    after = json.loads((run / "eval" / "after" / "report.json").read_text())
    assert mine["n"] == after["n"] == 3
    assert mine["score"] == pytest.approx(summary["after"])
    mine_rows = (run / "eval" / "jsonl-validation-student" / "predictions.jsonl").read_text().splitlines()
    after_rows = (run / "eval" / "after" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(r)["prediction"] for r in mine_rows] == [json.loads(r)["prediction"] for r in after_rows]


def _jsonl_args(cli_dirs, out, *extra):
    return (cli_dirs["teacher"], "--task", "jsonl", "--data-dir", cli_dirs["jsonl"], "--out", out,
            "--max-new-tokens", MAX_NEW, "--batch-size", 2, *extra)


def test_an_interrupted_run_leaves_only_the_partial_and_resumes_to_the_same_file(cli_dirs, tmp_path, capsys,
                                                                                 monkeypatch):
    whole = tmp_path / "whole" / "answers.jsonl"
    assert _generate(capsys, *_jsonl_args(cli_dirs, whole))[0] == 0

    original = generate_module.iter_generate

    def one_batch_then_interrupt(*args, **kwargs):
        for batch in original(*args, **kwargs):
            yield batch
            raise KeyboardInterrupt

    monkeypatch.setattr(generate_module, "iter_generate", one_batch_then_interrupt)
    out = tmp_path / "cut" / "answers.jsonl"
    code, _, err = _generate(capsys, *_jsonl_args(cli_dirs, out))
    assert code == 130 and "answers.jsonl.partial" in err and "rerun the same command" in err
    assert _files(out.parent) == ["answers.jsonl.partial"]
    lines = (out.parent / "answers.jsonl.partial").read_text().splitlines()
    assert json.loads(lines[0])["header"]["format"] == generate_module.PARTIAL_FORMAT and len(lines) == 1 + 2
    monkeypatch.undo()

    code, _, err = _generate(capsys, *_jsonl_args(cli_dirs, out, "--max-new-tokens", 9))
    assert code == 2 and "max_new_tokens: saved 6, now 9" in err and "--restart" in err
    code, text, err = _generate(capsys, *_jsonl_args(cli_dirs, out))
    assert code == 0, err
    assert f"({JSONL_COUNTS['train'] - 2} generated now, 2 resumed from a partial file)" in text
    assert out.read_bytes() == whole.read_bytes()
    assert _files(out.parent) == ["answers.jsonl", "answers.jsonl.report.json"]


def test_an_existing_output_is_replaced_only_with_overwrite(cli_dirs, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    assert _generate(capsys, *_jsonl_args(cli_dirs, out))[0] == 0
    before = out.read_bytes()
    code, _, err = _generate(capsys, *_jsonl_args(cli_dirs, out, "--max-new-tokens", 2))
    assert code == 2 and "--overwrite" in err and out.read_bytes() == before
    code, _, err = _generate(capsys, *_jsonl_args(cli_dirs, out, "--max-new-tokens", 2, "--overwrite"))
    assert code == 0, err
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert report["settings"]["max_new_tokens"] == 2


class _ScriptedAnswers:
    """Stands in for iter_generate: answers ``answers[prompt]`` in batches, the first prompt of the first batch
    with ``max_new_tokens`` tokens and the others with one; raises KeyboardInterrupt after ``interrupt_after``
    batches."""

    def __init__(self, answers: dict[str, str], interrupt_after=None):
        self.answers = answers
        self.interrupt_after = interrupt_after

    def __call__(self, model, tokenizer, prompts, *, batch_size, max_new_tokens, **kwargs):
        for number, start in enumerate(range(0, len(prompts), batch_size)):
            if number == self.interrupt_after:
                raise KeyboardInterrupt
            indices = list(range(start, min(start + batch_size, len(prompts))))
            counts = [max_new_tokens if i == 0 else 1 for i in indices]
            yield GeneratedBatch(indices, [self.answers[prompts[i]] for i in indices], counts)


def _examples(count):
    return [Example(f"e{i}", "qed", {"context": f"c{i}", "question": f"q{i}"}, f"gold {i}", [f"gold {i}"])
            for i in range(count)]


MODEL = torch.nn.Linear(1, 1)
"""generate_targets only reads the model's parameters and config here (iter_generate is scripted)."""


def test_empty_answers_are_left_out_and_listed(tmp_path, monkeypatch):
    answers = {"p0": "first", "p1": "", "p2": "third", "p3": ""}
    monkeypatch.setattr(generate_module, "iter_generate", _ScriptedAnswers(answers))
    out = tmp_path / "answers.jsonl"
    result = generate_targets(MODEL, None, _examples(4), [f"p{i}" for i in range(4)], out, batch_size=3,
                              max_new_tokens=4, progress=False)
    assert (result.examples, result.written, result.empty_ids) == (4, 2, ["e1", "e3"])
    assert result.at_max_new_tokens == 1 and result.mean_new_tokens == pytest.approx((4 + 1 + 1 + 1) / 4)
    read = load_task("jsonl", "train", out)
    assert [(ex.id, ex.target, ex.references) for ex in read] == [("e0", "first", ["gold 0"]),
                                                                 ("e2", "third", ["gold 2"])]
    assert json.loads(result.report_path.read_text())["empty_ids"] == ["e1", "e3"]


def test_all_empty_answers_write_nothing_and_keep_the_partial(tmp_path, monkeypatch):
    monkeypatch.setattr(generate_module, "iter_generate", _ScriptedAnswers({"p0": "", "p1": ""}))
    out = tmp_path / "answers.jsonl"
    with pytest.raises(ValueError, match="all 2 generated answers are empty"):
        generate_targets(MODEL, None, _examples(2), ["p0", "p1"], out, progress=False)
    assert _files(tmp_path) == ["answers.jsonl.partial"]


def test_a_partial_is_resumed_only_with_the_same_settings_and_prompts(tmp_path, monkeypatch):
    out = tmp_path / "answers.jsonl"
    examples, prompts = _examples(2), ["p0", "p1"]
    monkeypatch.setattr(generate_module, "iter_generate", _ScriptedAnswers({"p0": "a", "p1": "b"}, interrupt_after=1))
    with pytest.raises(KeyboardInterrupt):
        generate_targets(MODEL, None, examples, prompts, out, batch_size=1, progress=False, settings={"role": "t"})
    monkeypatch.setattr(generate_module, "iter_generate", _ScriptedAnswers({"p0": "a", "p1": "b"}))
    with pytest.raises(GenerationSettingsError, match="max_new_tokens: saved 150, now 7"):
        generate_targets(MODEL, None, examples, prompts, out, max_new_tokens=7, settings={"role": "t"})
    with pytest.raises(GenerationSettingsError, match="run.role: saved 't', now 's'"):
        generate_targets(MODEL, None, examples, prompts, out, settings={"role": "s"})
    with pytest.raises(GenerationSettingsError, match="saved prompt of example 'e0' differs"):
        generate_targets(MODEL, None, examples, ["changed", "p1"], out, settings={"role": "t"})
    result = generate_targets(MODEL, None, examples, prompts, out, progress=False, settings={"role": "t"})
    assert (result.resumed, result.generated) == (1, 1)
    assert [ex.target for ex in load_task("jsonl", "train", out)] == ["a", "b"]


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/no-model", "--task", "qed"], "model path not found"),
    (["{teacher}", "--task", "squad"], "unknown task 'squad'"),
    (["{teacher}", "--task", "qed", "--data-dir", "{tmp}/nowhere"], "nowhere not found"),
    (["--task", "qed"], "no MODEL given"),
    (["{teacher}", "--config", "{tmp}/missing.yaml"], "missing.yaml' not found"),
])
def test_errors_print_one_line_and_exit_2(cli_dirs, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, teacher=cli_dirs["teacher"]) for a in argv]
    code, _, err = _generate(capsys, *argv, "--out", tmp_path / "answers.jsonl")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("ctkd generate: error: ") and message in err, err
    assert _files(tmp_path) == []


def test_the_split_of_a_config_and_its_limit_are_the_defaults(cli_dirs, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"teacher": {"name": str(cli_dirs["teacher"])},
                                      "data": {"task": "qed", "data_dir": str(cli_dirs["qed"]), "train_limit": 4}}))
    out = tmp_path / "answers.jsonl"
    code, text, err = _generate(capsys, "--config", config, "--out", out, "--max-new-tokens", 3)
    assert code == 0, err
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert report["examples"] == 4 < QED_COUNTS["train"] and report["settings"]["run"]["split"] == "train"
