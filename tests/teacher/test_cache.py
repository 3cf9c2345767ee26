"""The teacher cache: cached vs live losses, identity checks, interruption and resumption, the commands."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny import byte_level_tokenizer, metaspace_tokenizer, tiny_gemma3, tiny_llama

from ctkd.cli.main import main
from ctkd.config import load_config
from ctkd.losses import build_loss
from ctkd.losses._vocab import TeacherRequest, TopKLogProbs
from ctkd.models import load_model
from ctkd.teacher import LiveTeacher
from ctkd.teacher import cache as cache_module
from ctkd.teacher.cache import CacheError, CachedTeacher, side_keys, teacher_key, write_teacher_cache
from ctkd.train.run import build_collator, load_train_examples
from ctkd.train.step import DistillStep
from ctkd.types import RankedTopK

TOL = 1e-5
ANSWERS = ["the cat", "Paris", "in 1901", "on the mat", "two dogs", "blue", "a red hat and a green coat"]


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    s_tok, t_tok = byte_level_tokenizer(), metaspace_tokenizer()
    for name, tok, model in (("student", s_tok, tiny_llama(len(s_tok))), ("teacher", t_tok, tiny_gemma3(len(t_tok)))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    data = root / "data"
    data.mkdir()
    for split, count in (("train", 10), ("validation", 4)):
        rows = [{"id": f"{split}{i}", "prompt": f"Context: The cat sat on the mat {i}.\nQuestion: who sat?\nAnswer:",
                 "response": ANSWERS[i % len(ANSWERS)]} for i in range(count)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def make_config(tmp_path, pair_dirs, name="config.yaml", **sections):
    config = {
        "student": {"name": str(pair_dirs / "student")},
        "teacher": {"name": str(pair_dirs / "teacher"), "chunk_size": 3},
        "data": {"task": "jsonl", "data_dir": str(pair_dirs / "data"), "student_max_length": 96,
                 "teacher_max_length": 160, "teacher_prompt": {"num_shots": 2}},
        "loss": {"method": "multilevel_ot", "params": {"top_k": 20}},
        "optim": {"learning_rate": 1e-3, "max_steps": 2, "batch_size": 3},
        "eval": {"before": False, "after": False},
        "output": {"dir": str(tmp_path / "run"), "logging_steps": 1, "report_to": []},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def models(pair_dirs):
    return (load_model(pair_dirs / "student", role="student"), load_model(pair_dirs / "teacher", role="teacher"))


def batches(config, models, batch_size=3):
    student, teacher = models
    examples = load_train_examples(config)
    collator = build_collator(config, student.tokenizer, teacher.tokenizer, examples)
    features = collator.prepare(examples).features
    return [collator.collate(features[i:i + batch_size]) for i in range(0, len(features), batch_size)]


def step_losses(config, models, signal, loss):
    student, _ = models
    step = DistillStep(loss, ce_weight=0.0, kd_weight=1.0, student_vocab_size=student.vocab_size)
    out = []
    for batch in batches(config, models):
        result = step(student.model, signal, batch)
        (grad,) = torch.autograd.grad(result.loss, student.model.lm_head.weight)
        out.append((result.loss.detach(), grad))
    return out


@pytest.mark.parametrize("params", [
    {"top_k": 20},
    {"top_k": 15, "ranking": "token"},
    {"top_k": 20, "normalize": "std", "tau_sd": 1.5},
    {"top_k": 20, "sd_weight": 0.0},
], ids=["paper", "token-ranking", "std-normalize", "one-temperature"])
def test_cached_multilevel_ot_equals_the_live_teacher(tmp_path, pair_dirs, models, params):
    config = load_config(make_config(tmp_path, pair_dirs, loss={"method": "multilevel_ot", "params": params}))
    summary = write_teacher_cache(config, tmp_path / "cache", shard_size=4, batch_size=4, progress=False,
                                  teacher=models[1])
    assert summary.examples == 10 and summary.shards_written == 3 and summary.bytes > 0
    cached = CachedTeacher.open(tmp_path / "cache", config=config)
    loss = build_loss("multilevel_ot", **params)
    live = step_losses(config, models, LiveTeacher(models[1].model, models[1].vocab_size, chunked=False), loss)
    got = step_losses(config, models, cached, loss)
    for (l_live, g_live), (l_got, g_got) in zip(live, got):
        torch.testing.assert_close(l_got, l_live, atol=TOL, rtol=0)
        torch.testing.assert_close(g_got, g_live, atol=TOL, rtol=0)


def test_a_larger_cached_top_k_serves_a_smaller_one_exactly(tmp_path, pair_dirs, models):
    config = load_config(make_config(tmp_path, pair_dirs, loss={"method": "multilevel_ot", "params": {"top_k": 30}}))
    write_teacher_cache(config, tmp_path / "cache", progress=False, teacher=models[1])
    small = build_loss("multilevel_ot", top_k=12)
    cached = CachedTeacher.open(tmp_path / "cache", config=config)
    live = LiveTeacher(models[1].model, models[1].vocab_size)
    for (l_live, _), (l_got, _) in zip(step_losses(config, models, live, small),
                                      step_losses(config, models, cached, small)):
        torch.testing.assert_close(l_got, l_live, atol=TOL, rtol=0)
    # but not a larger one, another temperature, or batch ranking
    for loss, match in ((build_loss("multilevel_ot", top_k=40), "keeps 30 columns"),
                        (build_loss("multilevel_ot", top_k=12, tau_sd=3.0), "temperature"),
                        (build_loss("multilevel_ot", preset="reference"), "ranking='batch'"),
                        (build_loss("uld"), "holds ranked_topk"),
                        (build_loss("ce"), "full logits")):
        with pytest.raises(CacheError, match=match):
            cached.check(loss=loss)


def test_uld_from_a_top_k_cache_is_exact_with_every_column_and_bounded_otherwise(tmp_path, pair_dirs, models):
    """ULD from top-k: the top-k terms are exact; the tail term of both the exact and the approximate value lies in
    [|R - S|, R + S] (R, S: teacher and student mass outside the top k), so they differ by at most 2 R per pair."""
    vocab = models[1].vocab_size
    config = load_config(make_config(tmp_path, pair_dirs, loss={"method": "uld", "params": {}}))
    loss = build_loss("uld")
    live = step_losses(config, models, LiveTeacher(models[1].model, vocab, chunked=False), loss)
    write_teacher_cache(config, tmp_path / "full", topk=vocab, progress=False, teacher=models[1])
    for (l_live, g_live), (l_got, g_got) in zip(live, step_losses(config, models, CachedTeacher.open(tmp_path / "full"),
                                                                  loss)):
        torch.testing.assert_close(l_got, l_live, atol=TOL, rtol=0)
        torch.testing.assert_close(g_got, g_live, atol=TOL, rtol=0)
    k = 5
    write_teacher_cache(config, tmp_path / "top5", topk=k, progress=False, teacher=models[1])
    cached = CachedTeacher.open(tmp_path / "top5", config=config)
    approx = step_losses(config, models, cached, loss)
    for batch, (l_live, _), (l_got, _) in zip(batches(config, models), live, approx):
        signal = cached.outputs_for(loss, batch).signal
        assert isinstance(signal, TopKLogProbs) and signal.top_k == k
        tail = signal.tail[signal.valid]
        assert 0 < float(tail.mean()) < 1
        s_len = batch.student.answer_lengths
        pairs_tail = sum(float(signal.tail[b, :min(int(s_len[b]), int(signal.valid[b].sum()))].sum())
                         for b in range(len(batch)))
        pairs = sum(min(int(s_len[b]), int(signal.valid[b].sum())) for b in range(len(batch)))
        assert abs(float(l_got) - float(l_live)) <= 2 * pairs_tail / pairs + TOL
        assert not torch.isclose(l_got, l_live, atol=1e-4)  # an approximation indeed


def test_mismatched_configs_are_errors_naming_the_mismatch(tmp_path, pair_dirs, models):
    path = make_config(tmp_path, pair_dirs)
    config = load_config(path)
    write_teacher_cache(config, tmp_path / "cache", progress=False, teacher=models[1])
    CachedTeacher.open(tmp_path / "cache", config=config)  # matches
    cases = [
        (["teacher.name=gemma-3-270m"], "teacher.name"),
        (["teacher.dtype=bfloat16"], "teacher.dtype"),
        (["data.teacher_prompt.num_shots=1"], "num_shots"),
        (["data.teacher_max_length=150"], "max_length"),
        (["data.train_limit=6"], "train_limit"),
    ]
    for overrides, match in cases:
        with pytest.raises(CacheError, match=match):
            CachedTeacher.open(tmp_path / "cache", config=load_config(path, overrides))
    # a data file that changed
    data = tmp_path / "data"
    data.mkdir()
    rows = (pair_dirs / "data" / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(rows[:-1] + [rows[-1].replace("mat", "rug")]) + "\n")
    (data / "validation.jsonl").write_text((pair_dirs / "data" / "validation.jsonl").read_text())
    with pytest.raises(CacheError, match="data file train.jsonl changed"):
        CachedTeacher.open(tmp_path / "cache", config=load_config(path, [f"data.data_dir={data}"]))
    # a batch whose teacher tokenization is not the cached one
    cached = CachedTeacher.open(tmp_path / "cache", config=config)
    batch = batches(config, models)[0]
    batch.teacher.input_ids[0, 0] += 1
    with pytest.raises(CacheError, match="another teacher tokenization"):
        cached.outputs_for(build_loss("multilevel_ot", top_k=20), batch)
    batch.example_ids[1] = "nowhere"
    batch.teacher.input_ids[0, 0] -= 1
    with pytest.raises(CacheError, match="'nowhere' is not in the cache"):
        cached.outputs_for(build_loss("multilevel_ot", top_k=20), batch)


def test_keys_of_features_and_of_collated_batches_agree(tmp_path, pair_dirs, models):
    config = load_config(make_config(tmp_path, pair_dirs))
    student, teacher = models
    examples = load_train_examples(config)
    collator = build_collator(config, student.tokenizer, teacher.tokenizer, examples)
    features = collator.prepare(examples).features[:5]
    keys = [teacher_key(f.teacher.input_ids, f.teacher.answer_start, f.teacher.answer_length) for f in features]
    assert side_keys(collator.collate(features).teacher) == keys
    assert len(set(keys)) == len(keys)


def test_an_interrupted_cache_is_incomplete_then_resumes(tmp_path, pair_dirs, models, monkeypatch):
    config = load_config(make_config(tmp_path, pair_dirs))
    original = cache_module.save_file
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(cache_module, "save_file", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        write_teacher_cache(config, tmp_path / "cache", shard_size=4, progress=False, teacher=models[1])
    monkeypatch.setattr(cache_module, "save_file", original)
    assert not (tmp_path / "cache" / "index.json").exists()
    with pytest.raises(CacheError, match=r"incomplete \(1 of 3 shards"):
        CachedTeacher.open(tmp_path / "cache", config=config)
    # other settings cannot resume it
    with pytest.raises(CacheError, match="other settings"):
        write_teacher_cache(config, tmp_path / "cache", shard_size=5, progress=False, teacher=models[1])
    summary = write_teacher_cache(config, tmp_path / "cache", shard_size=4, progress=False, teacher=models[1])
    assert summary.shards_written == 2
    fresh = write_teacher_cache(config, tmp_path / "fresh", shard_size=4, progress=False, teacher=models[1])
    assert fresh.bytes == summary.bytes and fresh.answer_tokens == summary.answer_tokens
    resumed, whole = CachedTeacher.open(tmp_path / "cache", config=config), CachedTeacher.open(tmp_path / "fresh")
    loss = build_loss("multilevel_ot", top_k=20)
    for batch in batches(config, models):
        a, b = resumed.outputs_for(loss, batch).signal, whole.outputs_for(loss, batch).signal
        assert isinstance(a, RankedTopK) and torch.equal(a.ids, b.ids)
        torch.testing.assert_close(a.logp_token, b.logp_token, atol=TOL, rtol=0)
    # a complete cache is left alone; --overwrite rewrites it with other settings
    assert write_teacher_cache(config, tmp_path / "cache", shard_size=4, progress=False,
                               teacher=models[1]).shards_written == 0
    assert write_teacher_cache(config, tmp_path / "cache", shard_size=5, overwrite=True, progress=False,
                               teacher=models[1]).shards_written == 2
    # files are safetensors and JSON only (never pickle)
    names = {p.suffix for p in (tmp_path / "cache").iterdir() if p.is_file()}
    assert names == {".json", ".safetensors"}


def test_losses_that_need_full_logits_cannot_be_cached(tmp_path, pair_dirs, models):
    for method, params, match in (("ce", {}, "'ce' reads the teacher's full logits"),
                                  ("mined", {}, "'mined' reads the teacher's full logits"),
                                  ("multilevel_ot", {"preset": "reference"}, "ranking='batch'")):
        config = load_config(make_config(tmp_path, pair_dirs, loss={"method": method, "params": params}))
        with pytest.raises(CacheError, match=match):
            write_teacher_cache(config, tmp_path / "c", progress=False, teacher=models[1])
    with pytest.raises(CacheError, match="not a teacher cache"):
        CachedTeacher.open(tmp_path / "nowhere")


def test_requests_round_trip_and_serving_rules():
    ranked = TeacherRequest("ranked_topk", 50, (1.0, 2.0), "sequence", "none")
    assert TeacherRequest.from_dict(json.loads(json.dumps(ranked.to_dict()))) == ranked
    assert TeacherRequest("ranked_topk", 20, (1.0, 2.0), "sequence").served_by(ranked) is None
    assert TeacherRequest("ranked_topk", 20, (1.0,), "sequence").served_by(ranked) is None
    assert "ranking=token" in TeacherRequest("ranked_topk", 20, (1.0,), "token").served_by(ranked)
    assert "top_k=60" in TeacherRequest("ranked_topk", 60, (1.0,), "sequence").served_by(ranked)
    assert TeacherRequest("topk", 0, (1.0,)).served_by(TeacherRequest("topk", 8, (1.0,))) is None


def test_cli_cache_teacher_then_distill_from_the_cache(tmp_path, pair_dirs, capsys):
    path = make_config(tmp_path, pair_dirs)
    cache = tmp_path / "cache"
    assert main(["cache-teacher", str(path), "--out", str(cache), "--no-progress", "--topk", "8"]) == 0
    out = capsys.readouterr().out
    assert "bytes per answer token" in out and "teacher.cache=" in out
    assert main(["distill", str(path), f"teacher.cache={cache}", "--no-progress"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any("sd" in row for row in log)
    # ULD from the same cache's top-8
    uld = make_config(tmp_path, pair_dirs, name="uld.yaml", loss={"method": "uld", "params": {}})
    assert main(["distill", str(uld), f"teacher.cache={cache}", f"output.dir={tmp_path / 'run-uld'}",
                 "--no-progress"]) == 0
    # a cache that does not match: an error, exit code 2, naming the mismatch
    assert main(["distill", str(path), f"teacher.cache={cache}", "data.teacher_prompt.num_shots=0",
                 f"output.dir={tmp_path / 'run2'}", "--no-progress"]) == 2
    assert "num_shots" in capsys.readouterr().err
    assert main(["cache-teacher", str(path), "--no-progress"]) == 2
    assert "--out" in capsys.readouterr().err
