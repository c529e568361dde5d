"""``pdserve import PATH --name N``: a model folder as Paddle's tools publish it, into the repository.

PATH holds a program and its weights (``model.pdmodel`` | ``model.json`` | ``inference.pdmodel`` |
``inference.json`` with ``.pdiparams``) and, as PaddleX / PaddleClas / PaddleDetection publish them,
``inference.yml`` or ``infer_cfg.yml``. It becomes ``<repo>/<N>/<next version>/`` (copied, or
linked with ``--link``), and the config the server will derive from it is printed. Nothing is
written when the folder would not load: the config is derived and validated first.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from pdserve.errors import ModelConfigError
from pdserve.model_config import CONFIG_FILE, read_config_file, version_folders
from pdserve.pipeline.errors import PipelineError
from pdserve.repository.published import PUBLISHED_FILES, derive, find_published, load_config, merge
from pdserve.runtime.predictor_config import find_model_files, missing_model_files, program_format

HELP = "put a published model folder (PaddleX, PaddleClas, PaddleDetection, paddle.jit.save) into the repository"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path", type=Path, help="the folder: a program, its .pdiparams, and its inference.yml / infer_cfg.yml"
    )
    p.add_argument("--name", required=True, help="model name: the folder under --model-repo")
    p.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    p.add_argument("--version", type=int, help="version folder to create (default: the next number)")
    p.add_argument("--link", action="store_true", help="symlink the folder instead of copying it")


def _check(path: Path, model_dir: Path) -> dict[str, Any]:
    """What the folder would be served as, from its files alone (nothing written yet)."""
    missing = missing_model_files(path)
    if missing:
        raise PipelineError(missing)
    program = find_model_files(path)
    assert program is not None
    published = find_published(path)
    raw = read_config_file(model_dir) if model_dir.is_dir() else None
    if published is None and raw is None:
        raise PipelineError(
            f"{path} has none of {list(PUBLISHED_FILES)} and {model_dir / CONFIG_FILE} does not exist: write a "
            f"{CONFIG_FILE} (e.g. 'kind: tensor' to serve it as raw tensors over v2) and import again"
        )
    fields: dict[str, Any] = {}
    labels = None
    if published is not None and (raw or {}).get("kind") != "tensor":
        derived = derive(published, program[0])
        fields, labels = derived.config, derived.labels
    return {
        "program": program[0].name,
        "format": program_format(program[0]),
        "published": published.name if published else None,
        "derived": merge(fields, raw or {}),
        "labels": len(labels) if labels else 0,
    }


def run(args: argparse.Namespace) -> None:
    path: Path = args.path.resolve()
    if not path.is_dir():
        raise PipelineError(f"{path}: not a folder")
    model_dir: Path = args.model_repo / args.name
    try:
        summary = _check(path, model_dir)
    except ModelConfigError as exc:
        raise PipelineError(exc.message) from None
    taken = version_folders(model_dir) if model_dir.is_dir() else {}
    version = args.version or max(taken, default=0) + 1
    target = model_dir / str(version)
    if target.exists():
        raise PipelineError(f"{target} exists; choose another --version")
    model_dir.mkdir(parents=True, exist_ok=True)
    if args.link:
        target.symlink_to(path, target_is_directory=True)
    else:
        shutil.copytree(path, target)
    try:
        loaded = load_config(model_dir)  # what the server will read, from where it will read it
    except ModelConfigError as exc:
        if target.is_symlink():
            target.unlink()
        else:
            shutil.rmtree(target)
        raise PipelineError(exc.message) from None
    config = loaded.config.model_dump(mode="json", exclude_defaults=True)
    result = {"model_dir": str(model_dir), "version": version, "linked": args.link, **summary, "config": config}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    how = "linked" if args.link else "copied"
    source = f"from {summary['published']}" if summary["published"] else f"from {CONFIG_FILE}"
    print(f"{how} {path} to {target} ({summary['program']}, format {summary['format']})")
    print(f"config derived {source} ({summary['labels']} labels); a {model_dir / CONFIG_FILE} overrides any field:")
    print(yaml.safe_dump(config, sort_keys=False).rstrip())
