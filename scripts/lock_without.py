"""Print a hashed requirements lock without some packages (``make serve PADDLE=gpu`` drops paddlepaddle).

Usage: python scripts/lock_without.py LOCK NAME [NAME ...]"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def without(text: str, names: set[str]) -> str:
    """The lock's entries (a line and its ``\\`` continuations) except those of ``names``."""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        if not line.startswith((" ", "\t")):  # a new entry or comment starts at column 0
            match = re.match(r"([A-Za-z0-9_.-]+)\s*==", line)
            skipping = match is not None and re.sub(r"[-_.]+", "-", match.group(1)).lower() in names
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    names = {re.sub(r"[-_.]+", "-", n).lower() for n in argv[1:]}
    sys.stdout.write(without(Path(argv[0]).read_text(), names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
