"""Slow: the real pair (Gemma-3-270m teacher, 262,144 tokens; SmolLM2-135M student) on QED.

Chunked and unchunked teacher sides, and a cache against the live teacher, give the same MultiLevelOT loss to
1e-5. Uses converted models from ``$CTKD_CACHE`` (converted there on first use: minutes).
Run with ``python -m pytest tests/teacher/test_real.py -m slow``.
"""

from __future__ import annotations

import pytest
import torch

from ctkd.cli.distill import default_config_path
from ctkd.config import load_config
from ctkd.forward import answer_forward
from ctkd.losses import build_loss
from ctkd.models import KNOWN_MODELS, load_model
from ctkd.teacher import LiveTeacher
from ctkd.teacher.cache import CachedTeacher, write_teacher_cache
from ctkd.train.run import build_collator, load_train_examples

pytestmark = pytest.mark.slow

TOL = 1e-5
EXAMPLES = 8


@pytest.fixture(scope="module")
def pair():
    for name in ("gemma-3-270m", "smollm2-135m-instruct"):
        if KNOWN_MODELS[name].locate() is None:
            pytest.skip(f"{name} is not installed: {KNOWN_MODELS[name].pip_install}")
    return load_model("smollm2-135m-instruct", role="student"), load_model("gemma-3-270m", role="teacher")


def test_real_pair_chunked_cached_and_live_agree(pair, tmp_path):
    student, teacher = pair
    config = load_config(default_config_path(), [f"data.train_limit={EXAMPLES}", "teacher.dtype=float32"])
    write_teacher_cache(config, tmp_path / "cache", batch_size=3, progress=False, teacher=teacher)
    cached = CachedTeacher.open(tmp_path / "cache", config=config)
    examples = load_train_examples(config)
    collator = build_collator(config, student.tokenizer, teacher.tokenizer, examples)
    features = collator.prepare(examples).features
    loss = build_loss("multilevel_ot")
    signals = {"unchunked": LiveTeacher(teacher.model, teacher.vocab_size, chunked=False),
               "chunked": LiveTeacher(teacher.model, teacher.vocab_size, chunk_size=16), "cache": cached}
    for start in range(0, len(features), 4):
        batch = collator.collate(features[start:start + 4])
        with torch.no_grad():
            s_out = answer_forward(student.model, batch.student, student.vocab_size)
        values = {}
        for name, signal in signals.items():
            t_out = signal.outputs_for(loss, batch)
            values[name] = loss(s_out.logits, t_out.for_loss, s_out.mask, t_out.mask).loss
        assert torch.isfinite(values["unchunked"]) and values["unchunked"] > 0
        torch.testing.assert_close(values["chunked"], values["unchunked"], atol=TOL, rtol=0)
        torch.testing.assert_close(values["cache"], values["unchunked"], atol=TOL, rtol=0)
