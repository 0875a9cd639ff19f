"""The ``implicitdiff`` command: one subcommand per experiment of the paper.

``implicitdiff --help`` lists them; ``implicitdiff <experiment> --help`` gives each one's options.
Every run writes ``results.json`` and its figures (PNG) into its output folder (default
``results/<experiment>/``) and prints a short table.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

from implicitdiff.experiments import EXPERIMENTS
from implicitdiff.experiments._common import add_common_arguments, output_folder


def _command_name(module_name: str) -> str:
    return module_name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per experiment."""
    parser = argparse.ArgumentParser(
        prog="implicitdiff",
        description="Run the experiments of 'Efficient and Modular Implicit Differentiation' "
        "(Blondel et al., 2021) with implicitdiff. Data come from scikit-learn's bundled sets "
        "or are generated; nothing is downloaded.",
    )
    commands = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for module_name in EXPERIMENTS:
        module = importlib.import_module(f"implicitdiff.experiments.{module_name}")
        name = _command_name(module_name)
        sub = commands.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        add_common_arguments(sub, name)
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the chosen experiment, print its table."""
    options = build_parser().parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    folder = output_folder(options)
    start = time.perf_counter()
    summary = options._module.run(options)
    elapsed = time.perf_counter() - start
    print(summary["table"])
    print(f"\n{options.experiment}: done in {elapsed:.1f} s; results in {folder}/")
    for path in summary.get("files", []):
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
