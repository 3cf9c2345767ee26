"""Teacher-side benchmarks: chunked teacher logits, training from a teacher cache, cache size, ULD's top-k error.

Real models (Gemma-3-270m teacher, 262,144-token vocabulary; SmolLM2-135M-Instruct student), float32 (CPUs
without native bf16 emulate it ~70x slower), 2 threads. ``CTKD_CACHE`` points at converted GGUF models.

``teacher-side``
    Peak memory increase and time of the teacher side of one MultiLevelOT (paper preset) step: the teacher
    forward at the answer positions plus its ranked top-k signal, **chunked** (:class:`HeadLogits`: logits of
    ``--chunk-size`` positions at a time from hidden states and the head) against **unchunked** (the full
    (B, L, V) answer logits). Inputs: B=4, T=512 random tokens, the last A positions are the answer (A from
    ``--answer-lens``). Memory: one fresh process per case, resident memory sampled every millisecond during
    the call, minus resident memory before it. Time: one process, both paths in turn, round after round; the
    ratio is taken per round (the machine is shared and its speed drifts) and its median reported.
``throughput``
    ``ctkd distill`` (:func:`ctkd.train.run.run_distillation`) with a live teacher against the same run with
    ``teacher.cache`` written by ``ctkd cache-teacher`` (:func:`ctkd.teacher.cache.write_teacher_cache`): same
    config, seed and batches (one epoch over ``--train-limit`` QED examples, the default config's prompts),
    evaluation off. Throughput: student answer tokens / training seconds; live and cached runs alternate.
    Also the cache's size per teacher answer token.
``uld-error``
    ULD from a top-K teacher signal (what a cache stores for it) against exact ULD, on QED batches of the same
    pair: relative error of the loss and of its gradient, and the mean teacher mass outside the top-K.

Run::

    CTKD_CACHE=/tmp/exp/cache python benchmarks/bench_teacher.py all --out benchmarks/results/teacher.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TEACHER = "gemma-3-270m"
STUDENT = "smollm2-135m-instruct"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakSampler:
    """Samples resident memory in a thread (torch releases the GIL in its kernels) and keeps the maximum."""

    def __init__(self, period: float = 0.001) -> None:
        self.period, self.peak, self._stop = period, 0, threading.Event()

    def __enter__(self) -> "PeakSampler":
        self.base = rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.period)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def increase(self) -> int:
        return self.peak - self.base


def _load(name: str, role: str):
    from ctkd.models import load_model

    return load_model(name, role=role, dtype="float32")


# ------------------------------------------------------------------------------------------------------------
# 1. teacher side, chunked vs unchunked
# ------------------------------------------------------------------------------------------------------------
def _teacher_batch(teacher, args, answer_len: int):
    import torch

    from ctkd.types import IGNORE_INDEX, DistillBatch, TokenizedSide

    gen = torch.Generator().manual_seed(0)
    b, t = args.batch, args.seq_len
    ids = torch.randint(0, teacher.vocab_size, (b, t), generator=gen)
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[:, t - 1 - answer_len:t - 1] = True
    labels = torch.where(mask, torch.roll(ids, -1, 1), torch.full_like(ids, IGNORE_INDEX))
    side = TokenizedSide(ids, torch.ones_like(ids), mask, labels)
    return DistillBatch(student=side, teacher=side, example_ids=[str(i) for i in range(b)])


def _teacher_side_fn(mode: str, teacher, batch, chunk_size: int):
    import torch

    from ctkd.losses import build_loss
    from ctkd.teacher import LiveTeacher

    loss = build_loss("multilevel_ot")  # paper preset: k = 50, sequence ranking, temperatures 1 and 2
    live = LiveTeacher(teacher.model, teacher.vocab_size, chunk_size=chunk_size, chunked=mode == "chunked")

    def run():
        with torch.no_grad():
            out = live.outputs_for(loss, batch)
            return loss.teacher_signal(out.for_loss, out.mask)
    return run


def teacher_side_memory(mode: str, answer_len: int, args) -> dict:
    """Child process: peak resident-memory increase of one teacher side (after a warm-up call)."""
    import gc

    import torch

    torch.set_num_threads(args.threads)
    teacher = _load(TEACHER, "teacher")
    batch = _teacher_batch(teacher, args, answer_len)
    if mode == "forward":
        from ctkd.forward import answer_forward

        def run():
            with torch.no_grad():
                return answer_forward(teacher.model, batch.teacher, teacher.vocab_size, logits=False, hidden=True)
    else:
        run = _teacher_side_fn(mode, teacher, batch, args.chunk_size)
    run()  # warm-up: allocator pools, lazy initialisation
    gc.collect()
    with PeakSampler() as sampler:
        run()
    return {"mode": mode, "answer_len": answer_len, "peak_increase": sampler.increase,
            "logits_bytes": args.batch * answer_len * teacher.vocab_size * 4}


def teacher_side_time(answer_len: int, args) -> dict:
    """Child process: both paths in turn, round after round; also checks that they agree."""
    import torch

    torch.set_num_threads(args.threads)
    teacher = _load(TEACHER, "teacher")
    batch = _teacher_batch(teacher, args, answer_len)
    runs = {mode: _teacher_side_fn(mode, teacher, batch, args.chunk_size) for mode in ("unchunked", "chunked")}
    times: dict[str, list[float]] = {mode: [] for mode in runs}
    signals = {}
    for rep in range(args.repeats + 1):  # round 0 warms up
        for mode, run in runs.items():
            start = time.perf_counter()
            signals[mode] = run()
            if rep:
                times[mode].append(time.perf_counter() - start)
    a, b = signals["chunked"], signals["unchunked"]
    valid = a.valid
    diff = max(float((a.logp_token - b.logp_token)[valid].abs().max()), float((a.logp_sd - b.logp_sd)[valid].abs().max()))
    ratios = [c / u for c, u in zip(times["chunked"], times["unchunked"])]
    return {"answer_len": answer_len, "unchunked_s": statistics.median(times["unchunked"]),
            "chunked_s": statistics.median(times["chunked"]), "time_ratio": statistics.median(ratios),
            "ratios": ratios, "same_ids": bool(torch.equal(a.ids, b.ids)), "max_abs_logp_diff": diff}


def bench_teacher_side(args, child) -> list[dict]:
    rows = []
    for answer_len in args.answer_lens:
        row = child(["--child", "side-time", "--answer-len", str(answer_len)],
                    f"teacher side timing, A={answer_len}, {args.repeats} rounds ...")
        for mode in ("forward", "unchunked", "chunked"):
            mem = child(["--child", "side-memory", "--mode", mode, "--answer-len", str(answer_len)],
                        f"teacher side peak memory, {mode}, A={answer_len} ...")
            row[f"{mode}_peak"] = mem["peak_increase"]
            row["logits_bytes"] = mem["logits_bytes"]
        row["memory_ratio"] = row["chunked_peak"] / row["unchunked_peak"]
        rows.append(row)
    print(f"\nTeacher side of one step (Gemma-3-270m forward + MultiLevelOT paper signal), B={args.batch}, "
          f"T={args.seq_len}, float32, {args.threads} threads, chunk_size={args.chunk_size or 'auto'}")
    header = ("| A   | logits MB | forward +MB | unchunked +MB | chunked +MB | mem ratio | unchunked s | chunked s |"
              " time ratio | max abs diff |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['answer_len']:<3} | {r['logits_bytes'] / 2**20:9.0f} | {r['forward_peak'] / 2**20:11.0f} | "
              f"{r['unchunked_peak'] / 2**20:13.0f} | {r['chunked_peak'] / 2**20:11.0f} | {r['memory_ratio']:9.3f} | "
              f"{r['unchunked_s']:11.2f} | {r['chunked_s']:9.2f} | {r['time_ratio']:10.3f} | "
              f"{r['max_abs_logp_diff']:12.2e} |")
    print("+MB: peak resident-memory increase during the call (forward: the teacher forward alone, hidden states "
          "only).\nmem ratio = chunked / unchunked increase; time ratio = median over rounds of chunked / unchunked.")
    return rows


# ------------------------------------------------------------------------------------------------------------
# 2./3. training throughput, live teacher vs cache; cache size
# ------------------------------------------------------------------------------------------------------------
def _throughput_config(args, out_dir: Path, cache: Path | None, sft: bool = False):
    from ctkd.cli.distill import default_config_path
    from ctkd.config import load_config

    overrides = [f"teacher.name={args.teacher}", f"student.name={STUDENT}", "teacher.dtype=float32",
                 "student.dtype=float32", "optim.bf16=false", f"data.train_limit={args.train_limit}",
                 "optim.epochs=1", f"optim.batch_size={args.train_batch}", "eval.before=false", "eval.after=false",
                 f"output.dir={out_dir}", "output.save_steps=100000", "output.report_to=[]",
                 "output.overwrite=true", f"teacher.chunk_size={args.chunk_size}"]
    if args.teacher_shots is not None:
        overrides.append(f"data.teacher_prompt.num_shots={args.teacher_shots}")
    if cache is not None:
        overrides.append(f"teacher.cache={cache}")
    if sft:  # the same batches with no distillation term: the student step alone, the bound of any cache
        overrides += ["loss.method=ce", "loss.params={}"]
    return load_config(default_config_path(), overrides)


def throughput_child(kind: str, args) -> dict:
    """Child process: one `ctkd distill` run (live or cached); answer tokens per training second."""
    import torch

    from ctkd.train import step as step_module
    from ctkd.train.run import run_distillation

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    config = _throughput_config(args, work / f"run-{kind}", work / "cache" if kind == "cache" else None,
                                sft=kind == "sft")
    counted = {"tokens": 0}
    original = step_module.DistillStep.__call__

    def counting(self, *a, **kw):  # student answer tokens actually trained on
        out = original(self, *a, **kw)
        counted["tokens"] += out.num_tokens
        return out

    step_module.DistillStep.__call__ = counting
    summary = run_distillation(config, progress=False)
    tokens = counted["tokens"]
    return {"kind": kind, "train_s": summary.seconds["train"], "steps": summary.steps, "answer_tokens": tokens,
            "tokens_per_s": tokens / summary.seconds["train"], "last_loss": summary.last_loss}


def write_cache_child(args) -> dict:
    import torch

    from ctkd.teacher.cache import write_teacher_cache

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    config = _throughput_config(args, work / "run-cache", None)
    summary = write_teacher_cache(config, work / "cache", progress=False)
    out = {"cache_s": summary.seconds, "bytes": summary.bytes, "answer_tokens": summary.answer_tokens,
           "bytes_per_answer_token": summary.bytes_per_answer_token, "signals": summary.signals}
    if args.uld_topk:
        config.loss.method, config.loss.params = "uld", {}
        uld = write_teacher_cache(config, work / "cache-uld", topk=args.uld_topk, progress=False)
        out["uld_bytes_per_answer_token"] = uld.bytes_per_answer_token
        out["uld_signals"] = uld.signals
    return out


LABELS = {"live": "live teacher", "cache": "cached teacher", "sft": "no teacher, loss.method=ce"}


def bench_throughput(args, child) -> dict:
    work = Path(args.work)
    cache = child(["--child", "write-cache"], f"ctkd cache-teacher over {args.train_limit} examples ...")
    kinds = ("live", "cache", "sft") if args.sft else ("live", "cache")
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for rnd in range(args.rounds):
        for kind in kinds:
            runs[kind].append(child(["--child", "distill", "--kind", kind],
                                    f"ctkd distill ({LABELS[kind]}), round {rnd + 1} of {args.rounds} ..."))
    ratios = [c["tokens_per_s"] / live["tokens_per_s"] for live, c in zip(runs["live"], runs["cache"])]
    result = {"cache": cache, "runs": runs, "speedups": ratios, "speedup": statistics.median(ratios)}
    if args.sft:  # no cache can beat training without a teacher: (teacher + student) / student
        bounds = [s["tokens_per_s"] / live["tokens_per_s"] for live, s in zip(runs["live"], runs["sft"])]
        result |= {"bounds": bounds, "bound": statistics.median(bounds)}
    shots = args.teacher_shots if args.teacher_shots is not None else "1 (default config)"
    print(f"\nTraining throughput, ctkd distill {args.teacher} -> {STUDENT}, MultiLevelOT paper, one epoch over "
          f"{args.train_limit} QED examples, teacher shots {shots}, batch {args.train_batch}, float32, "
          f"{args.threads} threads")
    if args.sft:
        print("| round | live tok/s | cache tok/s | speedup | no teacher (ce) tok/s | bound |")
        print("|---|---|---|---|---|---|")
        for i, (live, c, s) in enumerate(zip(runs["live"], runs["cache"], runs["sft"])):
            print(f"| {i + 1} | {live['tokens_per_s']:.1f} | {c['tokens_per_s']:.1f} | {ratios[i]:.2f} "
                  f"| {s['tokens_per_s']:.1f} | {result['bounds'][i]:.2f} |")
    else:
        print("| round | live tok/s | cache tok/s | speedup |")
        print("|---|---|---|---|")
        for i, (live, c) in enumerate(zip(runs["live"], runs["cache"])):
            print(f"| {i + 1} | {live['tokens_per_s']:.1f} | {c['tokens_per_s']:.1f} | {ratios[i]:.2f} |")
    print(f"answer tokens per epoch: {runs['live'][0]['answer_tokens']}; ctkd cache-teacher: {cache['cache_s']:.0f} s "
          f"for {cache['answer_tokens']} teacher answer tokens")
    print(f"cache size: {cache['bytes_per_answer_token']:.0f} bytes per teacher answer token ({cache['signals']})")
    if "uld_bytes_per_answer_token" in cache:
        print(f"ULD cache size: {cache['uld_bytes_per_answer_token']:.0f} bytes per teacher answer token "
              f"({cache['uld_signals']})")
    return result


# ------------------------------------------------------------------------------------------------------------
# 4. ULD from a top-k signal vs exact
# ------------------------------------------------------------------------------------------------------------
def uld_error(args) -> list[dict]:
    import torch

    from ctkd.cli.distill import default_config_path
    from ctkd.config import load_config
    from ctkd.forward import answer_forward
    from ctkd.losses import build_loss
    from ctkd.losses._vocab import topk_log_probs
    from ctkd.teacher import LiveTeacher
    from ctkd.train.run import build_collator, load_train_examples

    torch.set_num_threads(args.threads)
    config = load_config(default_config_path(), [f"data.train_limit={args.uld_examples}"])
    student, teacher = _load(STUDENT, "student"), _load(TEACHER, "teacher")
    examples = load_train_examples(config)
    collator = build_collator(config, student.tokenizer, teacher.tokenizer, examples)
    features = collator.prepare(examples).features
    live = LiveTeacher(teacher.model, teacher.vocab_size, chunk_size=args.chunk_size)
    loss = build_loss("uld")
    rows = {k: {"loss_rel": [], "grad_rel": [], "tail": [], "bound_ok": True} for k in args.uld_ks}
    for start in range(0, len(features), args.train_batch):
        batch = collator.collate(features[start:start + args.train_batch])
        with torch.no_grad():
            s_out = answer_forward(student.model, batch.student, student.vocab_size)
        logits = s_out.logits.detach().requires_grad_()
        t_out = live.head_outputs(batch)
        exact = loss(logits, t_out.signal, s_out.mask, t_out.mask)
        (g_exact,) = torch.autograd.grad(exact.loss, logits)
        for k in args.uld_ks:
            top = topk_log_probs(t_out.signal, t_out.mask, k)
            approx = loss(logits, top, s_out.mask, None)
            (g_approx,) = torch.autograd.grad(approx.loss, logits)
            tail = top.tail[top.valid]
            rows[k]["loss_rel"].append(abs(float(approx.loss - exact.loss)) / float(exact.loss))
            rows[k]["grad_rel"].append(float((g_approx - g_exact).norm() / g_exact.norm()))
            rows[k]["tail"].append(float(tail.mean()))
            rows[k]["bound_ok"] &= abs(float(approx.loss - exact.loss)) <= 2 * float(tail.max()) + 1e-6
    out = [{"k": k, "loss_rel_mean": statistics.mean(r["loss_rel"]), "loss_rel_max": max(r["loss_rel"]),
            "grad_rel_mean": statistics.mean(r["grad_rel"]), "tail_mean": statistics.mean(r["tail"]),
            "bound_ok": r["bound_ok"], "batches": len(r["loss_rel"])} for k, r in rows.items()]
    return out


# ------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=["teacher-side", "throughput", "uld-error", "all"])
    parser.add_argument("--teacher", default=TEACHER,
                        help="teacher of the throughput runs (e.g. qwen2.5-coder-0.5b-instruct, larger than the student)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--answer-lens", type=int, nargs="+", default=[128, 256, 511])
    parser.add_argument("--chunk-size", type=int, default=0, help="positions per chunk (0: automatic)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=48)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--teacher-shots", type=int, default=None,
                        help="teacher prompt shots (default: the default config's, 1; QED's task default is 3)")
    parser.add_argument("--sft", action="store_true",
                        help="also time the same batches with loss.method=ce and no teacher: the bound of a cache")
    parser.add_argument("--uld-topk", type=int, default=256, help="K of the ULD cache whose size is reported")
    parser.add_argument("--uld-ks", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--uld-examples", type=int, default=16)
    parser.add_argument("--work", default=None, help="folder for runs and caches (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--answer-len", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    children = {
        "side-memory": lambda: teacher_side_memory(args.mode, args.answer_len, args),
        "side-time": lambda: teacher_side_time(args.answer_len, args),
        "write-cache": lambda: write_cache_child(args),
        "distill": lambda: throughput_child(args.kind, args),
        "uld-error": lambda: uld_error(args),
    }
    if args.child:
        print("\n" + json.dumps(children[args.child]()))
        return 0

    temp = None
    if args.work is None:
        temp = tempfile.TemporaryDirectory(prefix="ctkd-bench-teacher-")
        args.work = temp.name
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    forwarded = (["--teacher-shots", str(args.teacher_shots)] if args.teacher_shots is not None else []) + ["--teacher", args.teacher, "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--chunk-size", str(args.chunk_size),
                 "--repeats", str(args.repeats), "--threads", str(args.threads), "--train-limit",
                 str(args.train_limit), "--train-batch", str(args.train_batch), "--uld-topk", str(args.uld_topk),
                 "--uld-examples", str(args.uld_examples), "--work", args.work, "--uld-ks",
                 *map(str, args.uld_ks)]

    def child(extra: list[str], what: str):
        print(what, file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, *extra, *forwarded], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
            raise SystemExit(f"benchmark child failed: {what}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    results = {}
    if args.what in ("teacher-side", "all"):
        results["teacher_side"] = bench_teacher_side(args, child)
    if args.what in ("uld-error", "all"):
        results["uld_error"] = child(["--child", "uld-error"], "ULD top-K error ...")
        uld_print(results["uld_error"], args)
    if args.what in ("throughput", "all"):
        results["throughput"] = bench_throughput(args, child)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k not in ("child", "mode", "kind", "answer_len", "out")}
        args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    if temp is not None:
        temp.cleanup()
    return 0


def uld_print(rows: list[dict], args) -> None:
    print(f"\nULD from the teacher's top-K vs exact ({TEACHER} -> {STUDENT}, {args.uld_examples} QED examples)")
    print("| K | loss rel. error (mean / max) | grad rel. error (mean) | teacher mass outside top-K (mean) |"
          " |error| <= 2 max R |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['loss_rel_mean']:.2e} / {r['loss_rel_max']:.2e} | {r['grad_rel_mean']:.2e} | "
              f"{r['tail_mean']:.4f} | {r['bound_ok']} |")


if __name__ == "__main__":
    sys.exit(main())
