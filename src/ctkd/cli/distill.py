"""``ctkd distill [CONFIG.yaml] [section.key=value ...] [--resume]``: run a distillation.

Without a config file it runs the built-in default (``ctkd/resources/configs/default.yaml``): Gemma-3-270m
teaching SmolLM2-135M-Instruct with MultiLevelOT on a QED subset shipped with ctkd, evaluated before and after.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

HELP = "distil a teacher into a student with a different tokenizer (no argument: the built-in default run)"


def default_config_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("ctkd.resources").joinpath("configs", "default.yaml")))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (default: the built-in default run)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="dotted overrides, e.g. optim.learning_rate=2e-5 loss.params.top_k=20")
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in output.dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from ctkd.config import ConfigError, load_config

    config_path = args.config
    overrides = list(args.overrides)
    if config_path is not None and "=" in config_path and not Path(config_path).exists():
        overrides.insert(0, config_path)  # `ctkd distill optim.epochs=1`: overrides on the default
        config_path = None
    if config_path is None:
        config_path = default_config_path()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path, overrides)
    except ConfigError as err:
        print(f"ctkd distill: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config.to_yaml())
        return 0
    from ctkd.train.run import run_distillation

    try:
        summary = run_distillation(config, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"ctkd distill: interrupted; {config.output.dir} is not a finished run (no summary.json): add --resume "
              "to the same command to continue from its last checkpoint", file=sys.stderr)
        return 130
    except (OSError, ValueError) as err:  # ConfigError, FileNotFoundError, a data or model error: no traceback
        if os.environ.get("CTKD_TRACEBACK"):
            raise
        print(f"ctkd distill: error: {' '.join(str(err).split())}", file=sys.stderr)
        if not isinstance(err, (ConfigError, FileNotFoundError)):
            print("(set CTKD_TRACEBACK=1 to see where it was raised)", file=sys.stderr)
        return 2
    print()
    print(summary.table())
    return 0
