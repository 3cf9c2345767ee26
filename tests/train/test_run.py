"""A whole run (config -> models -> eval -> Trainer -> outputs) on tiny models saved as folders."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny import byte_level_tokenizer

from ctkd.cli.main import main
from ctkd.config import ConfigError, load_config
from ctkd.train.run import run_distillation

def write_config(tmp_path, pair_dirs, **sections):
    config = {
        "student": {"name": str(pair_dirs / "student")},
        "teacher": {"name": str(pair_dirs / "teacher")},
        "data": {"task": "jsonl", "data_dir": str(pair_dirs / "data"), "student_max_length": 96,
                 "teacher_max_length": 128},
        "loss": {"method": "multilevel_ot", "params": {"top_k": 20}},
        "optim": {"learning_rate": 1e-3, "max_steps": 3, "batch_size": 2},
        "eval": {"limit": 4, "max_new_tokens": 6, "batch_size": 4},
        "output": {"dir": str(tmp_path / "run"), "logging_steps": 1, "save_steps": 1, "report_to": []},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_run_writes_a_finished_folder(tmp_path, pair_dirs):
    config = load_config(write_config(tmp_path, pair_dirs))
    summary = run_distillation(config, progress=False)
    out = tmp_path / "run"
    for name in ("config.yaml", "summary.json", "README.md", "train_log.jsonl", "training_curves.png",
                 "eval/before/report.json", "eval/after/report.json", "eval/scores.png",
                 "student/model.safetensors", "student/tokenizer.json"):
        assert (out / name).exists(), name
    assert summary.steps == 3 and summary.before is not None and summary.after is not None
    assert json.loads((out / "summary.json").read_text())["complete"] is True
    assert load_config(out / "config.yaml").to_dict() == config.to_dict()
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"had", "sl", "sd", "ce", "kd"} <= set(logged[0])
    from ctkd.models import load_model

    reloaded = load_model(out / "student", role="student")
    assert reloaded.vocab_size == len(byte_level_tokenizer())
    # a finished run is never overwritten by accident
    with pytest.raises(ConfigError, match="finished run"):
        run_distillation(config, progress=False)


def test_an_interrupted_run_is_not_finished_and_resumes(tmp_path, pair_dirs, monkeypatch):
    config = load_config(write_config(tmp_path, pair_dirs, eval={"before": False, "after": False}))
    from ctkd.train import trainer as trainer_module

    original = trainer_module.DistillTrainer.compute_loss
    calls = {"n": 0}

    def crash_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.DistillTrainer, "compute_loss", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_distillation(config, progress=False)
    monkeypatch.setattr(trainer_module.DistillTrainer, "compute_loss", original)
    out = tmp_path / "run"
    assert not (out / "summary.json").exists() and not (out / "student").exists()
    assert (out / "checkpoints" / "checkpoint-2").exists()
    with pytest.raises(ConfigError, match="unfinished run"):
        run_distillation(config, progress=False)
    changed = load_config(write_config(tmp_path, pair_dirs, eval={"before": False, "after": False},
                                       optim={"learning_rate": 5e-3}))
    with pytest.raises(ConfigError, match="learning_rate"):
        run_distillation(changed, resume=True, progress=False)
    summary = run_distillation(config, resume=True, progress=False)
    assert summary.steps == 3 and (out / "summary.json").exists()


def test_cli_distill_with_overrides_and_config_errors(tmp_path, pair_dirs, capsys):
    path = write_config(tmp_path, pair_dirs)
    code = main(["distill", str(path), "optim.max_steps=1", "eval.before=false", "eval.after=false", "--no-progress"])
    assert code == 0
    assert "steps" in capsys.readouterr().out
    assert main(["distill", str(path), "optim.lerning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lerning_rate" in err and "learning_rate" in err
    assert main(["distill", str(path), "loss.method=kl"]) == 2
    assert "registered" in capsys.readouterr().err
    assert main(["distill", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_failed_start_writes_nothing_or_is_started_again(tmp_path, pair_dirs, capsys):
    path = write_config(tmp_path, pair_dirs, eval={"before": False, "after": False})
    out = tmp_path / "run"
    # a wrong data folder fails before any model loads or anything is written
    assert main(["distill", str(path), f"data.data_dir={tmp_path / 'nowhere'}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "not found" in err and "Traceback" not in err
    assert not out.exists()
    # a wrong model name fails after config.yaml is written, before any checkpoint: the fixed command starts again
    assert main(["distill", str(path), f"student.name={tmp_path / 'no-model'}", "--no-progress"]) == 2
    assert "no-model" in capsys.readouterr().err
    assert (out / "config.yaml").exists() and not (out / "summary.json").exists()
    assert main(["distill", str(path), "--no-progress"]) == 0
    assert (out / "summary.json").exists()
    assert load_config(out / "config.yaml").student.name == str(pair_dirs / "student")


def test_cli_distill_interrupted_says_how_to_resume(tmp_path, pair_dirs, capsys, monkeypatch):
    from ctkd.train import run as run_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_distillation", interrupted)
    assert main(["distill", str(write_config(tmp_path, pair_dirs)), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and str(tmp_path / "run") in err


@pytest.mark.parametrize("overrides, match", [
    (["data.train_limit=0"], "data.train_limit must be a positive number"),
    (["eval.limit=-1"], "eval.limit must be a positive number"),
    (["optim.batch_size=two"], "optim.batch_size must be an integer"),
    (["eval.before=maybe"], "eval.before must be true or false"),
    (["student.dtype=fp16"], "student.dtype"),
    (["loss.params.top_k=0"], "top_k"),
    (["data.task=squad"], "data.task"),
    (["nonsense"], "section.key=value"),
    (["loss.params.pairing=span"], "data.alignment"),
])
def test_config_errors_name_the_key_and_the_fix(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_the_shipped_default_config_is_valid():
    from ctkd.cli.distill import default_config_path

    config = load_config(default_config_path())
    assert config.teacher.name == "gemma-3-270m" and config.student.name == "smollm2-135m-instruct"
    assert config.loss.method == "multilevel_ot" and config.data.task == "qed"


@pytest.mark.parametrize("overrides, method, params", [
    (["loss.method=uld"], "uld", {}),  # the default file's `preset: paper` is MultiLevelOT's, not ULD's
    (["loss.method=ce"], "ce", {}),
    (["loss.method=mined", "loss.params.top_k=5"], "mined", {"top_k": 5}),
    (["loss.params={}"], "multilevel_ot", {}),
    (["loss.params.top_k=20"], "multilevel_ot", {"preset": "paper", "top_k": 20}),
    (["loss.method=multilevel_ot", "loss.params.top_k=20"], "multilevel_ot", {"preset": "paper", "top_k": 20}),
])
def test_switching_the_method_by_override_drops_the_files_params(overrides, method, params):
    from ctkd.cli.distill import default_config_path

    config = load_config(default_config_path(), overrides)
    assert (config.loss.method, config.loss.params) == (method, params)


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parents[2] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid(path):
    assert "ctkd distill" in path.read_text().split("\n", 3)[1] + path.read_text()  # says how to run it
    load_config(path)
