"""The README documents what a new user needs (issue 12, item 14), checked against the code it
describes: every option the demo guest's command-line parser accepts, every `vmigdb`
subcommand, the Linux guest and the `pip install` route."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from vmigdb import cli

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _guest_options() -> list[str]:
    """The words guest/cmdline.c matches: ``rom=copy`` whole, ``stress=`` as a prefix."""
    src = (REPO / "guest" / "cmdline.c").read_text()
    words = re.findall(r'word_is\(w, len, "([^"]+)"\)', src)
    prefixes = re.findall(r'memcmp\(w, "([a-z_]+=)", \d+\)', src)
    assert words and prefixes, "guest/cmdline.c changed its shape: update this test"
    return words + prefixes


@pytest.mark.parametrize("option", _guest_options())
def test_every_guest_option_is_documented(option: str) -> None:
    base = option.split("=")[0] + "="
    assert f"`{option}" in README or f"`{base}" in README, option


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_every_subcommand_has_an_example() -> None:
    names = _subcommands()
    assert {"run", "serve", "capture", "report", "diff", "export", "rom"} <= set(names)
    for name in names:
        assert re.search(rf"vmigdb {name}\b", README), name


def test_the_linux_guest_and_pip_install_are_documented() -> None:
    assert "## Linux guests" in README and "--initrd" in README and "--append" in README
    assert "## Installing with pip" in README and "/bin/pip install " in README
    assert "vmigdb gdb-script" in README
    for verb in ("capture", "report", "diff", "export"):
        assert f"vmigdb {verb} " in README, verb
