"""``python -m app`` is ``pdserve``."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
