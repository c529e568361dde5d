"""The ``pdserve`` command. ``pdserve serve`` runs the HTTP server."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from pydantic import ValidationError

from app.errors import PdserveError


def _serve(args: argparse.Namespace) -> int:
    from app.factory import create_app
    from app.server import build_server
    from app.settings import Settings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "model_repo": args.model_repo}.items() if v}
    try:
        settings = Settings(**overrides)
        app = create_app(settings)
    except ValidationError as exc:
        print(f"pdserve: invalid settings: {exc}", file=sys.stderr)
        return 2
    except PdserveError as exc:
        print(f"pdserve: {exc.message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_server(app, settings).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdserve", description="Serve and prepare PaddlePaddle image models.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model repository over HTTP")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; PDSERVE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; PDSERVE_PORT)")
    serve.add_argument("--model-repo", type=Path, help="model repository (default model_repo; PDSERVE_MODEL_REPO)")
    serve.set_defaults(func=_serve)
    from app.pipeline.commands import register

    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from app.pipeline.commands import ensure_legacy_format

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
