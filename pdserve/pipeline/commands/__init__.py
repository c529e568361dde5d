"""The offline subcommands of ``pdserve``, one module each: ``HELP``, ``add_arguments(parser)``, ``run(args)``.

Adding a command: a module here and its name in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType
from typing import Any

from pdserve.pipeline.commands import (
    bench,
    build_engines,
    calibrate,
    collect_shapes,
    convert,
    evaluate,
    export,
    import_model,
    preprocess,
    quantize,
    tune,
)

# Subcommand name -> module, in the order ``pdserve --help`` lists them.
COMMANDS: dict[str, ModuleType] = {
    "export": export,
    "convert": convert,
    "quantize": quantize,
    "evaluate": evaluate,
    "preprocess": preprocess,
    "calibrate": calibrate,
    "collect-shapes": collect_shapes,
    "build-engines": build_engines,
    "tune": tune,
    "import": import_model,
    "bench": bench,
}

# paddle.jit.save and PTQ need the legacy program format, chosen when Paddle is first imported.
LEGACY_FORMAT_COMMANDS = {"export", "quantize"}


def ensure_legacy_format(argv: list[str]) -> None:
    """Re-run this command with FLAGS_enable_pir_api=0 if it is not set."""
    if argv and argv[0] in LEGACY_FORMAT_COMMANDS and os.environ.get("FLAGS_enable_pir_api") != "0":  # noqa: SIM112
        env = {**os.environ, "FLAGS_enable_pir_api": "0"}
        os.execve(sys.executable, [sys.executable, "-m", "pdserve", *argv], env)


def register(sub: Any) -> None:
    """Add the offline subcommands to the ``pdserve`` parser."""
    for name, module in COMMANDS.items():
        p: argparse.ArgumentParser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.set_defaults(func=module.run)
        module.add_arguments(p)
