"""``ctkd eval``: the report it writes, the prompts of each role, run folders and their config, reuse and resume,
``--compare``, and the one-line error exits."""

from __future__ import annotations

import json
import shutil

import pytest
from tiny_cli import QED_COUNTS, qed_row

from ctkd.cli.main import main
from ctkd.config import load_config
from ctkd.data import load_task
from ctkd.eval import evaluate as evaluate_module
from ctkd.eval.metrics import token_f1

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW = 6
"""New tokens per answer in these tests (tiny random models babble; short answers keep the tests fast)."""


def _eval(capsys, *argv) -> tuple[int, str, str]:
    code = main(["eval", *map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def _report(folder) -> dict:
    return json.loads((folder / "report.json").read_text())


def _qed_args(cli_dirs, out, *extra):
    return (cli_dirs["student"], "--task", "qed", "--data-dir", cli_dirs["qed"], "--out", out,
            "--max-new-tokens", MAX_NEW, *extra)


def test_eval_scores_the_students_zero_shot_answers_and_writes_the_report(cli_dirs, tmp_path, capsys):
    code, out, err = _eval(capsys, *_qed_args(cli_dirs, tmp_path / "first"))
    assert code == 0, err
    report = _report(tmp_path / "first")
    assert report["complete"] is True and report["metric"] == "token_f1" and report["n"] == QED_COUNTS["validation"]
    assert report["settings"]["max_new_tokens"] == MAX_NEW and report["settings"]["stop_at_newline"] is True
    assert report["settings"]["run"]["role"] == "student" and report["settings"]["run"]["split"] == "validation"
    examples = load_task("qed", "validation", cli_dirs["qed"])
    rows = _rows(tmp_path / "first")
    assert [r["id"] for r in rows] == [ex.id for ex in examples]
    # the paper's zero-shot plain student prompt, written out by hand
    assert [r["prompt"] for r in rows] == [
        f"Context: {ex.fields['context']}\nQuestion: {ex.fields['question']}\nAnswer:" for ex in examples]
    assert all(r["prediction"] and "\n" not in r["prediction"] for r in rows)
    assert "token_f1" in out and f"| {report['score']:.2f} |" in out and "report.json" in out

    # Same prompts, references replaced by the model's own answers (two of three): those score 100, and the
    # score is the mean of the per-example token F1 recomputed here.
    data = tmp_path / "qed-own-answers"
    data.mkdir()
    shutil.copy(cli_dirs["qed"] / "qed-train.jsonlines", data)
    own = [qed_row("validation", i) for i in range(QED_COUNTS["validation"])]
    references = [rows[0]["prediction"], rows[1]["prediction"], "zebra quagga"]
    for row, reference in zip(own, references):
        row["original_nq_answers"] = [[{"start": 0, "end": 1, "string": reference}]]
    (data / "qed-validation.jsonlines").write_text("".join(json.dumps(r) + "\n" for r in own))
    code, out, err = _eval(capsys, cli_dirs["student"], "--task", "qed", "--data-dir", data, "--out",
                           tmp_path / "second", "--max-new-tokens", MAX_NEW)
    assert code == 0, err
    second = _rows(tmp_path / "second")
    assert [r["prediction"] for r in second] == [r["prediction"] for r in rows]
    expected = [100.0 * token_f1(r["prediction"], [ref]) for r, ref in zip(rows, references)]
    assert expected[:2] == [100.0, 100.0]
    assert [r["score"] for r in second] == pytest.approx(expected)
    assert _report(tmp_path / "second")["score"] == pytest.approx(sum(expected) / len(expected))


def test_teacher_role_gives_the_few_shot_chat_prompt_with_shots_from_the_train_split(cli_dirs, tmp_path, capsys):
    code, _, err = _eval(capsys, *_qed_args(cli_dirs, tmp_path / "t", "--role", "teacher"))
    assert code == 0, err
    train = {ex.id: ex for ex in load_task("qed", "train", cli_dirs["qed"])}
    for row, example in zip(_rows(tmp_path / "t"), load_task("qed", "validation", cli_dirs["qed"])):
        prompt = row["prompt"]
        # ChatML (the student tokenizer's template): instruction in the first user turn, 3 shots, then the example
        assert prompt.startswith("<|im_start|>user\nAnswer the question with a short span copied from the context.")
        assert prompt.endswith(f"Question: {example.fields['question']}\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
        assert prompt.count("<|im_start|>user") == 4 and prompt.count("<|im_start|>assistant") == 4
        shots = [ex for ex in train.values() if ex.fields["context"] in prompt]
        assert len(shots) == 3
        for shot in shots:
            assert f"<|im_start|>assistant\n{shot.target}<|im_end|>" in prompt
    assert _report(tmp_path / "t")["settings"]["run"]["prompt"]["num_shots"] == 3


def _run_folder(tmp_path, cli_dirs, **eval_settings):
    """A finished-looking `ctkd distill` folder: its resolved config.yaml and a student/ model folder."""
    run = tmp_path / "run"
    run.mkdir()
    config = load_config(None, [
        f"student.name={cli_dirs['student']}", f"teacher.name={cli_dirs['teacher']}", "data.task=jsonl",
        f"data.data_dir={cli_dirs['jsonl']}", "data.student_prompt.instruction=Answer briefly.",
        *[f"eval.{key}={value}" for key, value in eval_settings.items()], f"output.dir={run}"])
    config.save(run / "config.yaml")
    shutil.copytree(cli_dirs["student"], run / "student")
    return run


def test_a_run_folder_is_evaluated_with_its_student_and_its_config(cli_dirs, tmp_path, capsys):
    run = _run_folder(tmp_path, cli_dirs, limit=2, max_new_tokens=5, batch_size=1)
    code, out, err = _eval(capsys, run)
    assert code == 0, err
    folder = run / "eval" / "jsonl-validation-student"
    report = _report(folder)
    assert report["n"] == 2 and report["metric"] == "rouge_lsum"  # the config's task (jsonl) and eval.limit
    assert report["settings"]["max_new_tokens"] == 5 and report["settings"]["batch_size"] == 1
    assert report["settings"]["run"]["model"] == str((run / "student").resolve())
    validation = load_task("jsonl", "validation", cli_dirs["jsonl"])
    # the config's student prompt override
    expected = [f"Answer briefly.\n\n{ex.fields['prompt']}" for ex in validation[:2]]
    assert [r["prompt"] for r in _rows(folder)] == expected
    assert "run on jsonl validation (2 examples)" in out

    # flags override the config
    code, _, err = _eval(capsys, run, "--limit", 3, "--max-new-tokens", 4, "--out", tmp_path / "flags")
    assert code == 0, err
    report = _report(tmp_path / "flags")
    assert report["n"] == 3 and report["settings"]["max_new_tokens"] == 4


def test_a_finished_evaluation_is_reported_again_only_with_the_same_settings(cli_dirs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "e"
    assert _eval(capsys, *_qed_args(cli_dirs, out))[0] == 0
    score = _report(out)["score"]

    import ctkd.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model must not be loaded to report a finished evaluation")

    monkeypatch.setattr(ctkd.models, "load_model", no_loading)
    code, text, err = _eval(capsys, *_qed_args(cli_dirs, out, "--plot", tmp_path / "alone.png"))
    assert code == 0 and "already holds this evaluation" in err and f"{score:.2f}" in text
    assert (tmp_path / "alone.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.undo()

    code, _, err = _eval(capsys, *_qed_args(cli_dirs, out, "--max-new-tokens", 3))
    assert code == 2 and "max_new_tokens: saved 6, now 3" in err and "--overwrite" in err
    code, _, err = _eval(capsys, *_qed_args(cli_dirs, out, "--limit", 2))
    assert code == 2 and "examples" in err
    code, _, err = _eval(capsys, *_qed_args(cli_dirs, out, "--max-new-tokens", 3, "--overwrite"))
    assert code == 0, err
    assert _report(out)["settings"]["max_new_tokens"] == 3


def test_an_interrupted_evaluation_exits_130_and_resumes(cli_dirs, tmp_path, capsys, monkeypatch):
    original = evaluate_module.iter_generate

    def one_batch_then_interrupt(*args, **kwargs):
        for batch in original(*args, **kwargs):
            yield batch
            raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "iter_generate", one_batch_then_interrupt)
    out = tmp_path / "e"
    code, _, err = _eval(capsys, *_qed_args(cli_dirs, out, "--batch-size", 1))
    assert code == 130 and "rerun the same command" in err
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl.partial"]
    monkeypatch.undo()

    code, _, err = _eval(capsys, *_qed_args(cli_dirs, out, "--batch-size", 1, "--role", "teacher"))
    assert code == 2 and "run.role: saved 'student', now 'teacher'" in err and "--restart" in err
    code, _, err = _eval(capsys, *_qed_args(cli_dirs, out, "--batch-size", 1))
    assert code == 0, err
    timing = _report(out)["timing"]
    assert timing["examples_resumed"] == 1 and timing["examples_generated"] == QED_COUNTS["validation"] - 1
    assert _eval(capsys, *_qed_args(cli_dirs, tmp_path / "whole", "--batch-size", 1))[0] == 0
    assert [r["prediction"] for r in _rows(out)] == [r["prediction"] for r in _rows(tmp_path / "whole")]


def test_compare_tabulates_and_plots_several_reports(cli_dirs, tmp_path, capsys):
    run = _run_folder(tmp_path, cli_dirs, limit=2, max_new_tokens=4)
    assert _eval(capsys, *_qed_args(cli_dirs, run / "eval" / "after"))[0] == 0  # stands for the run's own eval
    assert _eval(capsys, *_qed_args(cli_dirs, tmp_path / "student"))[0] == 0
    code, out, err = _eval(capsys, *_qed_args(cli_dirs, tmp_path / "teacher", "--role", "teacher",
                                              "--compare", tmp_path / "student", run))
    assert code == 0, err
    png = tmp_path / "teacher" / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| student (teacher prompt)", "| student", "| run/after"]
    for line, folder in zip(table[1:], (tmp_path / "teacher", tmp_path / "student", run / "eval" / "after")):
        assert f"| {_report(folder)['score']:.2f} |" in line
    assert f"plot: {png}" in out


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/no-model", "--task", "qed"], "model path not found"),
    (["no-such-model", "--task", "qed", "--limit", "1"], "unknown model name 'no-such-model'"),
    (["{student}", "--task", "squad"], "unknown task 'squad'"),
    (["{student}", "--task", "dialogsum"], "needs --data-dir"),
    (["{student}", "--task", "qed", "--data-dir", "{tmp}/nowhere"], "nowhere not found"),
    (["{student}", "--metric", "bleu"], "unknown task or metric 'bleu'"),
    (["{student}", "--config", "{tmp}/missing.yaml"], "missing.yaml' not found"),
    (["{student}", "--compare", "{tmp}"], "holds no finished evaluation"),
    (["{tmp}/run-without-student"], "has not finished training"),
])
def test_errors_print_one_line_and_exit_2(cli_dirs, tmp_path, capsys, argv, message):
    unfinished = tmp_path / "run-without-student"
    unfinished.mkdir()
    load_config(None).save(unfinished / "config.yaml")
    argv = [a.format(tmp=tmp_path, student=cli_dirs["student"]) for a in argv]
    code, out, err = _eval(capsys, *argv, "--out", tmp_path / "out")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("ctkd eval: error: ") and message in err, err
    assert not (tmp_path / "out" / "report.json").exists()
