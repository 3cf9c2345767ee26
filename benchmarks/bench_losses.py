"""Loss benchmark: forward + backward wall time and peak memory of every loss, against a floor.

Setting (issue "Foundation"): B=4, T=256 with the last 128 positions being the answer, student vocabulary
49,152, teacher vocabularies 151,936 and 262,144, float32, 2 threads.

The floor is what no method can beat: ``ce`` forward+backward on the student's answer rows plus one
``logsumexp`` over the teacher's answer rows (no gradient). Each time is reported as a ratio to the floor
measured in the same run; memory as the peak RSS increase during the call, as a ratio to the size of the two
logit tensors. Times come from one process per vocabulary that runs the cases in turn, round after round (the
ratio of each run to the floor run just before it; the machine is shared and its speed drifts); peak memory
from a fresh process per case, so peaks do not leak between cases.

Run:  python benchmarks/bench_losses.py [--repeats 3] [--threads 2] [--out benchmarks/results/losses.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES: dict[str, tuple[str, dict]] = {
    "floor": ("floor", {}),
    "ce": ("ce", {}),
    "uld": ("uld", {}),
    "multilevel_ot (paper)": ("multilevel_ot", {}),
    "multilevel_ot (reference)": ("multilevel_ot", {"preset": "reference"}),
    "mined": ("mined", {}),
    "dskd": ("dskd", {}),
}

STUDENT_HIDDEN, TEACHER_HIDDEN = 576, 640
"""Hidden sizes of SmolLM2-135M and Gemma-3-270m, for the methods that read hidden states (dskd)."""


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _inputs(vt: int, args: argparse.Namespace):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, t, a, vs = args.batch, args.seq_len, args.answer_len, args.student_vocab
    student = torch.empty(b, t, vs).normal_(0, 3).requires_grad_()  # in place: no transient copies
    teacher = torch.empty(b, t, vt).normal_(0, 3)
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[:, t - a - 1:t - 1] = True  # shifted: the logits before each of the last `a` tokens
    labels = torch.full((b, t), -100)
    labels[mask] = torch.randint(0, vs, (int(mask.sum()),))
    return student, teacher, mask, labels


def _step_fn(case: str, student, teacher, mask, labels):
    """A callable running one forward + backward of ``case``."""
    import torch
    import torch.nn.functional as F

    from ctkd.losses import build_loss

    name, params = CASES[case]
    if name == "floor":
        def step():
            loss = F.cross_entropy(student[mask], labels[mask])
            loss.backward()
            with torch.no_grad():
                torch.logsumexp(teacher[mask], dim=-1)
            return loss
        return step
    extras: dict = {"labels": labels}
    gen = torch.Generator().manual_seed(1)
    if name == "mined":  # a random teacher->student vocabulary map; answers aligned one-to-one
        params = {**params, "vocab_map": torch.randint(0, student.shape[-1], (teacher.shape[-1],), generator=gen)}
        lengths = mask.sum(1)
        extras["mined_alignment"] = torch.arange(int(lengths.max())).expand(len(lengths), -1).clone()
    if name == "dskd":  # hidden states and heads of the two models' sizes; the student's get gradients
        params = {**params, "student_hidden_size": STUDENT_HIDDEN, "teacher_hidden_size": TEACHER_HIDDEN}
        b, t = mask.shape
        extras["student_hidden"] = torch.randn(b, t, STUDENT_HIDDEN, generator=gen).requires_grad_()
        extras["teacher_hidden"] = torch.randn(b, t, TEACHER_HIDDEN, generator=gen)
        extras["student_head"] = (torch.randn(student.shape[-1], STUDENT_HIDDEN, generator=gen) * 0.02).requires_grad_()
        extras["teacher_head"] = torch.randn(teacher.shape[-1], TEACHER_HIDDEN, generator=gen) * 0.02
    loss_fn = build_loss(name, **params)

    def step():
        out = loss_fn(student, teacher, mask, mask, **extras)
        out.loss.backward()
        return out.loss
    return step


def time_cases(vt: int, cases: list[str], args: argparse.Namespace) -> list[dict]:
    """Child process: every case timed in turn, repeat after repeat, so each ratio to the floor is taken
    between runs seconds apart (the machine is shared and its speed drifts)."""
    student, teacher, mask, labels = _inputs(vt, args)
    steps = {case: _step_fn(case, student, teacher, mask, labels) for case in cases}
    times: dict[str, list[float]] = {case: [] for case in cases}
    for rep in range(args.repeats + 1):  # the first round warms up allocator and kernels
        for case in cases:
            student.grad = None
            start = time.perf_counter()
            steps[case]()
            if rep:
                times[case].append(time.perf_counter() - start)
    rows = []
    for case in cases:
        ratios = sorted(t / f for t, f in zip(times[case], times["floor"]))
        ordered = sorted(times[case])
        rows.append({"case": case, "vt": vt, "seconds": ordered[len(ordered) // 2],
                     "time_ratio": ratios[len(ratios) // 2], "times": times[case]})
    return rows


def peak_memory(case: str, vt: int, args: argparse.Namespace) -> dict:
    """Child process: peak RSS increase of one forward + backward (after a warm-up run)."""
    student, teacher, mask, labels = _inputs(vt, args)
    step = _step_fn(case, student, teacher, mask, labels)
    base = _maxrss_bytes()
    for _ in range(2):
        student.grad = None
        step()
    return {"case": case, "vt": vt, "peak_bytes": max(0, _maxrss_bytes() - base),
            "tensors_bytes": student.numel() * 4 + teacher.numel() * 4}



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--answer-len", type=int, default=128)
    parser.add_argument("--student-vocab", type=int, default=49_152)
    parser.add_argument("--teacher-vocabs", type=int, nargs="+", default=[151_936, 262_144])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--child", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--vt", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "time":
        print(json.dumps(time_cases(args.vt, args.cases, args)))
        return 0
    if args.child == "memory":
        print(json.dumps(peak_memory(args.case, args.vt, args)))
        return 0

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    forwarded = ["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--answer-len", str(args.answer_len),
                 "--student-vocab", str(args.student_vocab), "--repeats", str(args.repeats),
                 "--threads", str(args.threads)]
    cases = ["floor"] + [c for c in args.cases if c != "floor"]

    def child(extra: list[str], what: str):
        print(what, file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, *extra, *forwarded], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"benchmark child failed: {what}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    results = []
    for vt in args.teacher_vocabs:
        timed = child(["--child", "time", "--vt", str(vt), "--cases", *cases],
                      f"timing {len(cases)} cases, teacher vocabulary {vt:,}, {args.repeats} rounds ...")
        for row in timed:
            mem = child(["--child", "memory", "--case", row["case"], "--vt", str(vt)],
                        f"peak memory of {row['case']}, teacher vocabulary {vt:,} ...")
            row.update(peak_bytes=mem["peak_bytes"], tensors_bytes=mem["tensors_bytes"],
                       memory_ratio=mem["peak_bytes"] / mem["tensors_bytes"])
            results.append(row)

    print(f"\nLoss forward+backward, B={args.batch}, T={args.seq_len}, answer={args.answer_len}, "
          f"Vs={args.student_vocab:,}, float32, {args.threads} threads, median of {args.repeats} interleaved rounds")
    header = f"| {'loss':<26} | {'Vt':>8} | {'time (s)':>8} | {'x floor':>7} | {'peak +MB':>8} | {'x logits':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in results:
        print(f"| {r['case']:<26} | {r['vt']:>8,} | {r['seconds']:>8.3f} | {r['time_ratio']:>7.2f} | "
              f"{r['peak_bytes'] / 2**20:>8.0f} | {r['memory_ratio']:>8.2f} |")
    print("\nx floor: median over rounds of time / floor time in the same round (floor: ce fwd+bwd on the student's\n"
          "answer rows + logsumexp over the teacher's answer rows). x logits: peak RSS increase during the call /\n"
          "bytes of the two (B, T, V) logit tensors, measured in a separate process per case.")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": {k: (str(v) if isinstance(v, Path) else v)
                                                     for k, v in vars(args).items()}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
