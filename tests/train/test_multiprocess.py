"""Two processes (accelerate launch, gloo on CPU) give the same training as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _config(tmp_path, pair_dirs, name, batch_size):
    config = {
        "student": {"name": str(pair_dirs / "student")},
        "teacher": {"name": str(pair_dirs / "teacher")},
        "data": {"task": "jsonl", "data_dir": str(pair_dirs / "same_length"), "student_max_length": 96,
                 "teacher_max_length": 128},
        "loss": {"method": "multilevel_ot", "params": {"top_k": 20}},
        # SGD: Adam's first steps amplify float-summation noise in near-zero gradients into sign flips
        "optim": {"optimizer": "sgd", "learning_rate": 1e-2, "max_steps": 3, "batch_size": batch_size, "scheduler": "constant",
                  "warmup_ratio": 0.0},
        "eval": {"before": False, "after": False},
        "output": {"dir": str(tmp_path / name), "logging_steps": 1, "save_steps": 0, "report_to": []},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           **(env_extra or {})}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, pair_dirs):
    import json

    # answers of identical length on both sides, so per-process means weight exactly like one big batch
    folder = pair_dirs / "same_length"
    folder.mkdir(exist_ok=True)
    for split, count in (("train", 12), ("validation", 2)):
        rows = [{"id": f"{split}{i}", "prompt": f"Context: item {i} is blue.\nQuestion: what colour?\nAnswer:",
                 "response": "blue"} for i in range(count)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    one = _config(tmp_path, pair_dirs, "one", batch_size=4)
    two = _config(tmp_path, pair_dirs, "two", batch_size=2)
    _run([sys.executable, "-m", "ctkd", "distill", str(one), "--no-progress"])
    # on a machine without GPUs, `--multi_gpu` makes accelerate start the processes with torchrun (MULTI_CPU, gloo)
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
          "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ctkd", "distill", str(two), "--no-progress"])

    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "one" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "student" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)
    logs_one = [json.loads(x) for x in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    logs_two = [json.loads(x) for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in logs_one) == sum("loss" in r for r in logs_two) == 3
