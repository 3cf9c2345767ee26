"""Compare distillation methods on one config: the same pair, data, prompts, trainer and evaluation, one method
changed at a time (issue "MinED and DSKD": a comparison is a config change).

Each method is one ``ctkd distill`` run in its own process and folder (``ROOT/<method>``), started from the same
config with ``loss.method=<method>`` (and ``loss.params.preset=<preset>`` for ``multilevel_ot:reference``). The
student is evaluated before training once (in the first run; the same student for all), after training in every
run. Prints a table (score after, change over the untrained student, change over ``ce`` = SFT, losses, time) and
writes the results as JSON and a bar chart.

Run:  python benchmarks/compare_methods.py [--config CONFIG.yaml] [--methods ce multilevel_ot uld mined dskd]
          [--root runs/compare] [--out results.json] [section.key=value ...]

With no config the built-in default (Gemma-3-270m -> SmolLM2-135M-Instruct, 120 QED examples, 40 evaluated):
about 6 minutes per method on 2 CPU cores once the models are converted. One seed and a small evaluation set
give noisy differences: read the table as "every method runs end to end on the pair", not as a ranking, unless
the config trains and evaluates on the full data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_METHODS = ["ce", "multilevel_ot", "uld", "mined", "dskd"]


def run_method(method: str, args: argparse.Namespace, first: bool) -> dict:
    name, _, preset = method.partition(":")
    out_dir = Path(args.root) / method.replace(":", "-")
    command = [sys.executable, "-m", "ctkd", "distill"] + ([args.config] if args.config else []) + [
        f"loss.method={name}", f"output.dir={out_dir}", "output.overwrite=true",
        f"eval.before={'true' if first else 'false'}", *args.overrides, "--no-progress"]
    if preset:
        command.insert(-1, f"loss.params.preset={preset}")
    print(f"[{method}] {' '.join(command[2:])}", file=sys.stderr, flush=True)
    tick = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - tick
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        return {"method": method, "ok": False, "wall_s": wall, "error": proc.stderr.strip().splitlines()[-1:]}
    summary = json.loads((out_dir / "summary.json").read_text())
    return {**summary, "method": method, "loss_method": summary["method"], "ok": True, "wall_s": wall}


def table(rows: list[dict]) -> str:
    done = [r for r in rows if r["ok"]]
    before = next((r["before"] for r in done if r.get("before") is not None), None)
    sft = next((r["after"] for r in done if r["method"] == "ce"), None)
    metric = done[0]["metric"] if done else "score"
    lines = [f"| method | {metric} after (%) | vs untrained | vs ce (SFT) | loss first -> last | steps | train s "
             "| s/step |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['method']} | failed: {' '.join(r['error'])} | | | | | | |")
            continue
        vs_before = "" if before is None else f"{r['after'] - before:+.2f}"
        vs_sft = "" if sft is None else f"{r['after'] - sft:+.2f}"
        train = r["seconds"].get("train", 0.0)
        lines.append(f"| {r['method']} | {r['after']:.2f} | {vs_before} | {vs_sft} | {r['first_loss']:.4f} -> "
                     f"{r['last_loss']:.4f} | {r['steps']} | {train:.0f} | {train / max(r['steps'], 1):.1f} |")
    if before is not None:
        lines.append(f"untrained student: {before:.2f} on {done[0]['eval_examples']} examples")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["ok"]]
    if not done:
        return
    before = next((r["before"] for r in done if r.get("before") is not None), None)
    fig, ax = plt.subplots(figsize=(1.4 * len(done) + 2, 4))
    bars = ax.bar([r["method"] for r in done], [r["after"] for r in done], color="tab:blue")
    ax.bar_label(bars, fmt="%.1f")
    if before is not None:
        ax.axhline(before, color="grey", linestyle="--", label=f"untrained ({before:.1f})")
        ax.legend(loc="lower right")
    ax.set_ylabel(f"{done[0]['metric']} (%)")
    ax.set_title(f"{done[0]['teacher']} -> {done[0]['student']}, {done[0]['task']}, "
                 f"{done[0]['train_examples']} training / {done[0]['eval_examples']} eval examples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="a ctkd distill config (default: the built-in default)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                        help="registered loss names, method:preset for a preset (multilevel_ot:reference)")
    parser.add_argument("--root", default="runs/compare", help="one run folder per method under this folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="bar chart of the scores (default: ROOT/scores.png)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every run")
    args = parser.parse_args(argv)
    rows = [run_method(method, args, first=i == 0) for i, method in enumerate(args.methods)]
    print(table(rows))
    plot_path = args.plot or Path(args.root) / "scores.png"
    plot(rows, plot_path)
    print(f"chart: {plot_path}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "runs": rows},
                                       indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
