"""The ``moe-teach`` command line.

Each sub-command lives in the module that owns its idea; this file only wires them up.
A sub-command module provides ``configure_parser(parser)`` and ``run(args) -> int``.
Modules are imported lazily so ``moe-teach --help`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> (module, one-line help)
SUBCOMMANDS = {
    "bench": ("moe_teach.bench", "time the dispatch paths against dense feed-forwards"),
    "exercises": ("moe_teach.exercises", "build exercises/ from solutions/"),
    "check": ("moe_teach.grading", "run a learner's exercise notebook and print a scorecard"),
    "train": ("moe_teach.training", "train the small MoE language model outside a notebook"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-teach", description="Mixture-of-Experts course tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        module = importlib.import_module(module_name)
        module.configure_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
