"""``make bench``: run every benchmark and print a table of rates and ratios."""

from __future__ import annotations

import sys

from bench import machine


def main() -> int:
    return machine.main()


if __name__ == "__main__":
    sys.exit(main())
