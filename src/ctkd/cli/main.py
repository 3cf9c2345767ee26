"""Entry point of the ``ctkd`` command.

Each subcommand lives in its own module ``ctkd.cli.<module>`` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their subcommand
runs, so ``ctkd --help`` stays fast and a broken optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module under ctkd.cli; adding a command is one line here and one module.
COMMANDS: dict[str, str] = {
    "distill": "distill",
    "eval": "evaluate",
    "generate": "generate",
    "inspect": "inspect_pair",
    "cache-teacher": "cache_teacher",
    "bench-losses": "bench_losses",
}


def _available() -> dict[str, object]:
    mods = {}
    for name, module in COMMANDS.items():
        try:
            mods[name] = importlib.import_module(f"ctkd.cli.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"ctkd.cli.{module}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctkd",
        description="Cross-tokenizer knowledge distillation of language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _available().items():
        p = sub.add_parser(name, help=getattr(mod, "HELP", ""), description=getattr(mod, "HELP", ""))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv and "distill" in COMMANDS:
        # `ctkd` alone runs the built-in default distillation when that command exists.
        argv = ["distill"] if "distill" in _available() else ["--help"]
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
