"""The ``pdserve`` command. ``pdserve serve`` runs the HTTP server."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from pydantic import ValidationError

from pdserve.errors import PdserveError


def _serve(args: argparse.Namespace) -> int:
    from pdserve.factory import create_app
    from pdserve.request_log import configure_logging
    from pdserve.server import build_server
    from pdserve.settings import Settings

    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    try:
        settings = Settings(**overrides)
        configure_logging(settings.log_level, settings.log_format)
        app = create_app(settings)
    except ValidationError as exc:
        print(f"pdserve: invalid settings: {exc}", file=sys.stderr)
        return 2
    except PdserveError as exc:
        print(f"pdserve: {exc.message}", file=sys.stderr)
        return 2
    build_server(app, settings).run()
    return 0


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per ``Settings`` field, with its description, default and environment variable: the
    settings class is the one source of truth (an option wins over the variable)."""
    from typing import Literal, get_args, get_origin

    from pydantic import SecretStr

    from pdserve.settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    for name, field in Settings.model_fields.items():
        env = f"{prefix}{name}".upper()
        default = "unset" if field.default is None else field.default
        help_text = f"{field.description or ''} (default {default}; {env})".strip()
        kwargs: dict[str, object] = {"dest": name, "default": None, "help": help_text}
        kinds = [t for t in (get_args(field.annotation) or (field.annotation,)) if t is not type(None)]
        kind = kinds[0]
        if get_origin(field.annotation) is Literal:
            kwargs["choices"] = list(get_args(field.annotation))
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is SecretStr:
            kwargs["metavar"] = "SECRET"
            kwargs["help"] = f"{help_text}; prefer the environment variable: options show in ps"
        elif kind in (int, float, Path):
            kwargs["type"] = kind
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdserve", description="Serve and prepare PaddlePaddle image models.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve a model repository over HTTP",
        description="Serve a model repository over HTTP. Every setting is an option and a PDSERVE_* variable.",
    )
    add_settings_arguments(serve)
    serve.set_defaults(func=_serve)
    from pdserve.pipeline.commands import register

    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pdserve.pipeline.commands import ensure_legacy_format

    warnings.filterwarnings("ignore", message="No ccache found")  # Paddle's import, about a build tool
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        result: int = args.func(args)
        return result
    ensure_legacy_format(argv)
    try:
        args.func(args)
    except PdserveError as exc:
        print(f"pdserve {args.command}: error: {exc.message}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
