"""The gdb loader ``vmigdb.py``: from any directory, once however often it is sourced, from an
init file, and with one clear line (and nothing registered) when the only environment it finds
was built for another Python than gdb's.

No target is needed: every test is a ``gdb -nx -batch`` that loads the file and asks for help.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from conftest import REPO

from vmigdb.mi import GDB

LOADER = REPO / "vmigdb.py"
#: The issue's subcommands; the tests expect exactly the ``vmi X`` commands commands/ defines.
ISSUE_SUBCOMMANDS = {"batch", "batches", "decode", "pte", "rom", "sites", "trace"}
SUBCOMMANDS = sorted(set(re.findall(r'__init__\("vmi ([\w-]+)", gdb\.COMMAND_\w+\)',
                                    "".join(f.read_text() for f in
                                            (REPO / "commands").glob("*.py")))))


def gdb(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([GDB, "-nx", "-batch", *args], capture_output=True, text=True,
                          cwd=cwd, env=env if env is not None else os.environ.copy(),
                          timeout=60, check=False)


def listed_subcommands(help_text: str) -> list[str]:
    return sorted(ln.split(" -- ")[0].split()[1] for ln in help_text.splitlines()
                  if ln.startswith("vmi ") and " -- " in ln)


def test_loads_from_another_directory_and_lists_every_subcommand(tmp_path: Path) -> None:
    assert ISSUE_SUBCOMMANDS <= set(SUBCOMMANDS)
    r = gdb("-x", str(LOADER), "-ex", "help vmi", "-ex", "show vmi debug",
            "-ex", "show vmi color", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert listed_subcommands(r.stdout) == SUBCOMMANDS
    assert "vmi debug is off." in r.stdout and "vmi color is auto." in r.stdout
    # Load time, for the record (no assertion on time): the same gdb with and without it.
    times = {}
    for label, args in (("plain", ["-ex", "echo"]), ("vmigdb.py", ["-x", str(LOADER)])):
        t0 = time.perf_counter()
        gdb(*args, cwd=tmp_path)
        times[label] = time.perf_counter() - t0
    print(f"\ngdb -batch: {times['plain']:.3f} s; with vmigdb.py: {times['vmigdb.py']:.3f} s "
          f"(load time {times['vmigdb.py'] - times['plain']:.3f} s)")


def test_sourcing_twice_registers_nothing_twice(tmp_path: Path) -> None:
    once = gdb("-x", str(LOADER), "-ex", "help vmi", "-ex", "help set vmi", cwd=tmp_path)
    twice = gdb("-x", str(LOADER), "-x", str(LOADER), "-ex", f"source {LOADER}",
                "-ex", "help vmi", "-ex", "help set vmi", cwd=tmp_path)
    assert once.returncode == twice.returncode == 0
    assert twice.stderr == "", twice.stderr
    for word in ("already exists", "duplicate", "Warning", "warning", "Traceback"):
        assert word not in twice.stdout, word
    assert twice.stdout == once.stdout
    assert listed_subcommands(twice.stdout) == SUBCOMMANDS


def test_source_from_an_init_file(tmp_path: Path) -> None:
    init = tmp_path / "gdbinit"
    init.write_text(f"source {LOADER}\n")
    for option in ("-ix", "-x"):
        r = gdb(option, str(init), "-ex", "help vmi", cwd=tmp_path)
        assert r.returncode == 0 and r.stderr == "", (option, r.stderr)
        assert listed_subcommands(r.stdout) == SUBCOMMANDS, option


def test_environment_for_another_python_prints_one_line_and_registers_nothing(
        tmp_path: Path) -> None:
    """The loader looks for ``.venv`` beside itself, then ``$VIRTUAL_ENV``: a copy of it in a
    directory whose .venv (and the $VIRTUAL_ENV) hold only python3.9 hides the project's."""
    gdb_python = subprocess.run([GDB, "-nx", "-batch", "-ex",
                                 "python import sys; print('%d.%d' % sys.version_info[:2])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    assert gdb_python != "3.9"
    here = tmp_path / "checkout"
    (here / ".venv" / "lib" / "python3.9" / "site-packages").mkdir(parents=True)
    shutil.copy(LOADER, here / "vmigdb.py")
    other = tmp_path / "other-env"
    (other / "lib" / "python3.9" / "site-packages").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(other)
    r = gdb("-x", str(here / "vmigdb.py"), "-ex", "help vmi", "-ex", "show vmi debug",
            cwd=tmp_path, env=env)
    lines = r.stderr.splitlines()
    ours = [ln for ln in lines if ln.startswith("vmigdb:")]
    assert len(ours) == 1, r.stderr
    line = ours[0]
    assert f"gdb's Python {gdb_python}" in line
    assert f"{here / '.venv'} has python3.9" in line and f"{other} has python3.9" in line
    assert f"python{gdb_python} -m pip install -e" in line and "make venv" in line
    # Nothing registered: gdb knows neither the prefix nor the settings.
    assert lines == [line, 'Undefined command: "vmi".  Try "help".',
                     'Undefined show command: "vmi debug".  Try "help show".'], lines
    assert "Traceback" not in r.stdout + r.stderr
