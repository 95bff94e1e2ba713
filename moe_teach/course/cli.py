"""The ``moe-teach`` command line.

Each sub-command lives in the module that owns its idea; this file only wires them up.
A sub-command module provides ``configure_parser(parser)`` and ``run(args) -> int``.
A ValueError or TypeError from a sub-command (a bad argument value) is printed as one line,
``moe-teach COMMAND: error: ...``, with exit status 2, like argparse's own errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> (module, one-line help)
SUBCOMMANDS = {
    "bench": ("moe_teach.course.bench", "time the dispatch paths against dense feed-forwards"),
    "exercises": ("moe_teach.course.exercises", "build exercises/ from solutions/"),
    "check": ("moe_teach.course.grading", "run a learner's exercise notebook and print a scorecard"),
    "train": ("moe_teach.lm.train_cli", "train the small MoE language model outside a notebook"),
    "dashboard": ("moe_teach.course.dashboard_app", "serve the lesson-09 routing dashboard as a web page (Voila)"),
    "parallel": ("moe_teach.course.parallel_cli", "run the expert-parallel MoE layer on N local processes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-teach", description="Mixture-of-Experts course tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text,
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    try:
        return int(module.run(args) or 0)
    except (ValueError, TypeError) as error:
        flags = getattr(module, "FLAG_NAMES", {})
        print(f"moe-teach {args.command}: error: {as_flag(str(error), args, flags)}", file=sys.stderr)
        return 2


def as_flag(message: str, args: argparse.Namespace, flags: dict[str, str]) -> str:
    """``"tokens must be ..."`` -> ``"--tokens must be ..."``: name the flag the value came from.

    ``flags`` maps argument names that differ from their flag (``{"num_experts": "--experts"}``);
    a sub-command module may declare it as ``FLAG_NAMES``.
    """
    name, _, rest = message.partition(" ")
    if rest and name in flags:
        return f"{flags[name]} {rest}"
    if rest and name.isidentifier() and hasattr(args, name) and not name.startswith("_"):
        return f"--{name.replace('_', '-')} {rest}"
    return message


if __name__ == "__main__":
    sys.exit(main())
