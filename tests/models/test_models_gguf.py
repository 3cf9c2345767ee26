"""GGUF conversion and the converted-model cache, on tiny GGUF files written in-process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ctkd.models import (
    CACHE_ENV,
    GgufSource,
    convert_gguf,
    converted_dir,
    default_cache_root,
    describe_vocab,
    load_gguf_model,
    load_model,
    normalised_token_texts,
    plain_model,
)
from ctkd.models import gguf_cache
from ctkd.models.gguf_cache import CONVERSION_MARKER, is_complete, materialise, read_marker, source_for_file


def _ids(tokenizer) -> torch.Tensor:
    return tokenizer(" the cat in a hat", return_tensors="pt").input_ids


def test_first_load_converts_second_uses_cache(tiny_gguf: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_model(tiny_gguf, cache_dir=cache_root)
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert first.source == "gguf"
    assert first.path == converted_dir(cache_root, "tiny-llama", sha) == cache_root / "models" / f"tiny-llama-{sha[:12]}"
    assert first.gguf_path == tiny_gguf
    marker = read_marker(first.path)
    assert (marker["gguf_sha256"], marker["name"], marker["tie_word_embeddings"]) == (sha, "tiny-llama", True)
    assert marker["max_logit_difference"] <= gguf_cache.VERIFY_ATOL

    def no_gguf_load(*args, **kwargs):
        raise AssertionError("a cached model must not be read from the GGUF again")

    monkeypatch.setattr(gguf_cache, "load_gguf_model", no_gguf_load)
    second = load_model(tiny_gguf, cache_dir=cache_root, role="teacher")
    assert (second.source, second.path) == ("cache", first.path)
    ids = _ids(second.tokenizer)
    torch.testing.assert_close(second.model(input_ids=ids).logits, first.model(input_ids=ids).logits)


def test_converted_model_matches_gguf_logits_and_is_trainable(tiny_gguf: Path, cache_root: Path) -> None:
    reference, reference_tokenizer = load_gguf_model(tiny_gguf)
    assert getattr(reference, "hf_quantizer", None) is not None  # what makes it untrainable/unsaveable

    loaded = load_model(tiny_gguf, cache_dir=cache_root)
    assert getattr(loaded.model, "hf_quantizer", None) is None
    assert not hasattr(loaded.model.config, "quantization_config")
    ids = _ids(loaded.tokenizer)
    assert torch.equal(ids, _ids(reference_tokenizer))  # the tokenizer survives the save and reload
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=1e-5)

    out = loaded.model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = [p.grad for p in loaded.model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert loaded.model.get_input_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("tied", [True, False])
def test_tied_embeddings_stay_tied(tmp_path: Path, tiny: SimpleNamespace, cache_root: Path, tied: bool) -> None:
    gguf = tiny.write_gguf(tmp_path / f"tied-{tied}.gguf", tied=tied)
    model = load_model(gguf, cache_dir=cache_root).model
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert model.config.tie_word_embeddings is tied
    assert (head is embed) is tied
    if not tied:
        assert not torch.equal(head, embed)


def test_plain_model_copies_every_weight(tiny_gguf: Path) -> None:
    reference, _ = load_gguf_model(tiny_gguf)
    plain = plain_model(reference)
    ref_state, plain_state = reference.state_dict(), plain.state_dict()
    assert ref_state.keys() == plain_state.keys()
    for key in ref_state:
        assert torch.equal(ref_state[key], plain_state[key]), key


def test_interrupted_conversion_leaves_nothing_that_looks_complete(
    tiny_gguf: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash() -> dict:  # called after weights and tokenizer are written, before the marker
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(gguf_cache, "_versions", crash)
    with pytest.raises(KeyboardInterrupt):
        load_model(tiny_gguf, cache_dir=cache_root)
    models = cache_root / "models"
    assert list(models.iterdir()) == []  # neither the target nor a partial folder is left
    monkeypatch.undo()
    assert load_model(tiny_gguf, cache_dir=cache_root).source == "gguf"


def test_a_killed_conversion_is_never_taken_for_a_cache_hit(tiny_gguf: Path, cache_root: Path) -> None:
    source = source_for_file(tiny_gguf)
    target = converted_dir(cache_root, "tiny-llama", source.sha256)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # as if something else wrote half a folder there
    assert not is_complete(target)
    with pytest.raises(FileExistsError, match=f"{CONVERSION_MARKER}.*delete it"):
        load_model(tiny_gguf, cache_dir=cache_root)


def test_changed_gguf_content_gets_a_new_cache_folder(tmp_path: Path, tiny: SimpleNamespace, cache_root: Path) -> None:
    gguf = tmp_path / "model.gguf"
    first = load_model(tiny.write_gguf(gguf, seed=0), cache_dir=cache_root)
    second = load_model(tiny.write_gguf(gguf, seed=1), cache_dir=cache_root)
    assert second.source == "gguf" and second.path != first.path
    assert sorted(p.name for p in (cache_root / "models").iterdir()) == sorted([first.path.name, second.path.name])


def test_cache_root_from_argument_env_and_default(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_root = tmp_path / "from-env"
    monkeypatch.setenv(CACHE_ENV, str(env_root))
    assert default_cache_root() == env_root
    assert load_model(tiny_gguf).path.parent == env_root / "models"

    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "ctkd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "ctkd"


def test_materialise_rejects_a_wrong_join(tmp_path: Path) -> None:
    source = GgufSource(
        file_name="joined.gguf", sha256="0" * 64, assemble=lambda target: target.write_bytes(b"not what was promised")
    )
    with pytest.raises(ValueError, match="joined GGUF joined.gguf has SHA-256 .* expected 0000"):
        materialise(source, tmp_path)
    assert list((tmp_path / "gguf").iterdir()) == []


def test_materialise_reuses_a_good_join(tmp_path: Path) -> None:
    payload = b"gguf bytes"
    calls = []

    def assemble(target: Path) -> None:
        calls.append(target)
        target.write_bytes(payload)

    source = GgufSource(file_name="j.gguf", sha256=hashlib.sha256(payload).hexdigest(), assemble=assemble)
    assert materialise(source, tmp_path).read_bytes() == payload
    assert materialise(source, tmp_path) == tmp_path / "gguf" / "j.gguf"
    assert len(calls) == 1


def test_convert_gguf_is_idempotent(tiny_gguf: Path, cache_root: Path) -> None:
    source = source_for_file(tiny_gguf)
    target = converted_dir(cache_root, "x", source.sha256)
    done = convert_gguf(source, target, name="x", cache_root=cache_root)
    again = convert_gguf(source, target, name="x", cache_root=cache_root)
    assert (done.converted, again.converted) == (True, False)
    assert json.loads((target / CONVERSION_MARKER).read_text())["format"] == gguf_cache.CONVERSION_FORMAT


def test_llama_cpp_placeholders_are_outside_the_policy_vocabulary(
    tmp_path: Path, tiny: SimpleNamespace, cache_root: Path
) -> None:
    placeholders = 9
    gguf = tiny.write_gguf(tmp_path / "padded.gguf", placeholders=placeholders)
    loaded = load_model(gguf, cache_dir=cache_root)
    assert len(loaded.tokenizer) == loaded.embedding_rows == tiny.gguf_vocab + placeholders
    assert loaded.vocab_size == tiny.gguf_vocab
    facts = describe_vocab(loaded.tokenizer)
    assert (facts.length, facts.vocab_size) == (tiny.gguf_vocab + placeholders, tiny.gguf_vocab)
    texts = normalised_token_texts(loaded.tokenizer)
    assert max(texts) == tiny.gguf_vocab - 1 and not any(t.startswith("[PAD") for t in texts.values())
    # No text produces a placeholder id: the pre-tokenizer splits "[PAD270]" into pieces.
    ids = loaded.tokenizer(f"[PAD{tiny.gguf_vocab}]").input_ids
    assert max(ids) < tiny.gguf_vocab
