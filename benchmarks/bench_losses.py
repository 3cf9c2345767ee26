"""Loss benchmark: forward + backward wall time and peak memory of every loss, against a floor.

Setting (issue "Foundation"): B=4, T=256 with the last 128 positions being the answer, student vocabulary
49,152, teacher vocabularies 151,936 and 262,144, float32, 2 threads.

The floor is what no method can beat: ``ce`` forward+backward on the student's answer rows plus one
``logsumexp`` over the teacher's answer rows (no gradient). Each time is reported as a ratio to the floor
measured in the same run; memory as the peak RSS increase during the call, as a ratio to the size of the two
logit tensors. Each (loss, vocabulary) case runs in a fresh subprocess so peaks do not leak between cases.

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
}


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(case: str, vt: int, args: argparse.Namespace) -> dict:
    """Runs inside a fresh subprocess: builds inputs in place, times forward+backward, reads the peak RSS."""
    import torch
    import torch.nn.functional as F

    from ctkd.losses import build_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, t, a, vs = args.batch, args.seq_len, args.answer_len, args.student_vocab
    student = torch.empty(b, t, vs).normal_(0, 3).requires_grad_()
    teacher = torch.empty(b, t, vt).normal_(0, 3)
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[:, t - a - 1:t - 1] = True  # shifted: the logits before each of the last `a` tokens
    labels = torch.full((b, t), -100)
    labels[mask] = torch.randint(0, vs, (int(mask.sum()),))
    name, params = CASES[case]

    if name == "floor":
        def step():
            rows = student[mask]
            loss = F.cross_entropy(rows, labels[mask])
            loss.backward()
            with torch.no_grad():
                torch.logsumexp(teacher[mask], dim=-1)
            return loss
    else:
        loss_fn = build_loss(name, **params)

        def step():
            out = loss_fn(student, teacher, mask, mask, labels=labels)
            out.loss.backward()
            return out.loss

    base = _maxrss_bytes()
    times = []
    for _ in range(args.repeats + 1):  # the first run warms up allocator and kernels
        student.grad = None
        start = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - start)
    peak = _maxrss_bytes() - base
    times = sorted(times[1:])
    return {"case": case, "vt": vt, "seconds": times[len(times) // 2], "peak_bytes": max(0, peak),
            "value": float(value), "tensors_bytes": student.numel() * 4 + teacher.numel() * 4}


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
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--vt", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:  # child process
        print(json.dumps(run_case(args.case, args.vt, args)))
        return 0

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    forwarded = ["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--answer-len", str(args.answer_len),
                 "--student-vocab", str(args.student_vocab), "--repeats", str(args.repeats),
                 "--threads", str(args.threads)]
    cases = ["floor"] + [c for c in args.cases if c != "floor"]
    results = []
    total = len(cases) * len(args.teacher_vocabs)
    done = 0
    for vt in args.teacher_vocabs:
        for case in cases:
            done += 1
            print(f"[{done}/{total}] {case}, teacher vocabulary {vt:,} ...", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, __file__, "--case", case, "--vt", str(vt), *forwarded],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"benchmark case {case!r} (Vt={vt}) failed")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print(f"\nLoss forward+backward, B={args.batch}, T={args.seq_len}, answer={args.answer_len}, "
          f"Vs={args.student_vocab:,}, float32, {args.threads} threads, median of {args.repeats}")
    header = f"| {'loss':<26} | {'Vt':>8} | {'time (s)':>8} | {'x floor':>7} | {'peak +MB':>8} | {'x logits':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    floors = {r["vt"]: r["seconds"] for r in results if r["case"] == "floor"}
    for r in results:
        r["time_ratio"] = r["seconds"] / floors[r["vt"]]
        r["memory_ratio"] = r["peak_bytes"] / r["tensors_bytes"]
        print(f"| {r['case']:<26} | {r['vt']:>8,} | {r['seconds']:>8.3f} | {r['time_ratio']:>7.2f} | "
              f"{r['peak_bytes'] / 2**20:>8.0f} | {r['memory_ratio']:>8.2f} |")
    print("\nx floor: time / (ce fwd+bwd on student answer rows + logsumexp over teacher answer rows), same run.\n"
          "x logits: peak RSS increase during the call / bytes of the two (B, T, V) logit tensors.")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
