"""Tiny model folders and data folders for the ``ctkd eval`` / ``ctkd generate`` tests (built once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import byte_level_tokenizer, metaspace_tokenizer, tiny_gemma3, tiny_llama
from tiny_cli import ANSWERS, JSONL_COUNTS, QED_COUNTS, qed_row


@pytest.fixture(scope="session")
def cli_dirs(tmp_path_factory) -> dict[str, Path]:
    """``student`` (byte-level BPE with a ChatML template, tiny Llama), ``teacher`` (SentencePiece-like, tiny
    Gemma-3), ``jsonl`` (train.jsonl / validation.jsonl of prompt/response rows) and ``qed`` (original layout)."""
    root = tmp_path_factory.mktemp("cli")
    s_tok, t_tok = byte_level_tokenizer(), metaspace_tokenizer()
    for name, tok, model in (("student", s_tok, tiny_llama(len(s_tok))), ("teacher", t_tok, tiny_gemma3(len(t_tok)))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    jsonl = root / "jsonl"
    jsonl.mkdir()
    for split, count in JSONL_COUNTS.items():
        rows = [{"id": f"{split}{i}", "prompt": f"Context: The cat sat on the mat {i}.\nQuestion: who sat?\nAnswer:",
                 "response": ANSWERS[i % len(ANSWERS)]} for i in range(count)]
        (jsonl / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    qed = root / "qed"
    qed.mkdir()
    for split, count in QED_COUNTS.items():
        (qed / f"qed-{split}.jsonlines").write_text("".join(json.dumps(qed_row(split, i)) + "\n" for i in range(count)))
    return {"student": root / "student", "teacher": root / "teacher", "jsonl": jsonl, "qed": qed}


@pytest.fixture
def one_thread():
    """Tiny models generate several times faster on one thread than on two contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
