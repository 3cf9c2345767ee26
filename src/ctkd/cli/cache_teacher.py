"""``ctkd cache-teacher [CONFIG.yaml] [section.key=value ...] --out DIR``: run the teacher once, store its signal.

Uses the same config as ``ctkd distill`` (teacher, data, prompts, loss) and stores, for every training example,
what the configured loss reads from the teacher (see :mod:`ctkd.teacher.cache`). Then train with
``ctkd distill CONFIG.yaml teacher.cache=DIR``. Resumable: rerun the same command after an interruption.

Example::

    ctkd cache-teacher configs/qed.yaml --out caches/qed-gemma
    ctkd distill configs/qed.yaml teacher.cache=caches/qed-gemma
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HELP = "run the teacher once over the training split and store its signal for training (teacher.cache=DIR)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ctkd.teacher.cache import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, DEFAULT_ULD_TOP_K

    parser.add_argument("config", nargs="?", help="YAML config, as for ctkd distill (default: the built-in one)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides")
    parser.add_argument("--out", help="cache folder (default: teacher.cache of the config)")
    parser.add_argument("--topk", type=int, default=0,
                        help=f"also store each position's top-K teacher log-probabilities (ULD; a uld config stores "
                             f"{DEFAULT_ULD_TOP_K} by default)")
    parser.add_argument("--topk-temperature", type=float, default=1.0, help="temperature of those (default 1)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="examples per teacher forward")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="examples per shard file")
    parser.add_argument("--device", help="where the teacher runs (default: cuda when available, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace a cache written with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ctkd.cli.distill import default_config_path
    from ctkd.config import ConfigError, load_config

    config_path = args.config
    overrides = list(args.overrides)
    if config_path is not None and "=" in config_path and not Path(config_path).exists():
        overrides.insert(0, config_path)
        config_path = None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path or default_config_path(), overrides)
        out = args.out or config.teacher.cache
        if not out:
            raise ConfigError("no cache folder: pass --out DIR (or set teacher.cache in the config)")
        from ctkd.teacher.cache import write_teacher_cache

        summary = write_teacher_cache(config, out, topk=args.topk, topk_temperature=args.topk_temperature,
                                      batch_size=args.batch_size, shard_size=args.shard_size, device=args.device,
                                      overwrite=args.overwrite, progress=not args.no_progress)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"ctkd cache-teacher: {err}", file=sys.stderr)
        return 2
    print(summary.table())
    print(f"train with: ctkd distill {args.config or ''} teacher.cache={out}".replace("  ", " "))
    return 0
