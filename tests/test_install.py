"""``pip install .`` gives a working tool: a fresh venv outside the checkout, the package installed
from a copy of the source tree (what git tracks plus new files it does not ignore: no build/,
no .venv), then the demo guest booted with the installed ``vmigdb run`` and debugged with real
gdb through the installed ``vmigdb serve`` and the installed gdb loader (``vmigdb gdb-script``).

Slow by nature (a venv, an install that builds the native extension, the ROM and the demo guest:
about half a minute here); pip takes the dependencies from its cache when it has them. Every
command runs in the temporary directory with the checkout's venv out of the environment, so
nothing can come from the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

from vmigdb.mi import GDB, die_with_parent
from vmigdb.targets import stop_process

INSTALL_TIMEOUT = 900


def _copy_source(dest: Path) -> None:
    """The files of the checkout as a fresh clone with the work in progress would have them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = REPO / name
        if src.is_file():  # a file deleted in the work tree is still listed as cached
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _environment(venv: Path) -> dict[str, str]:
    """The user's environment without the checkout's venv (and no Python path of its own)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    ours = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != ours]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    return env


def test_pip_install_gives_a_working_tool(tmp_path: Path) -> None:
    src, venv, work = tmp_path / "src", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    _copy_source(src)
    env = _environment(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, cwd=work)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", str(src)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    shutil.rmtree(src)  # the installed tool must not need its source any more

    tool = str(venv / "bin" / "vmigdb")

    def vmigdb(*args: str) -> str:
        r = subprocess.run([tool, *args], cwd=work, env=env, capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL, check=False)
        assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr)
        return r.stdout

    site = next((venv / "lib").glob("python3.*/site-packages"))
    script, guest = Path(vmigdb("gdb-script").strip()), Path(vmigdb("demo-guest").strip())
    assert script.is_relative_to(site) and script.is_file(), script
    assert guest.is_relative_to(site) and guest.is_file(), guest

    # run: the demo guest from the installed images, with the installed ROM (the default)
    assert "result: ok" in vmigdb("run", str(guest))

    # serve + gdb with the installed loader: the vmi commands work on the installed stub
    log = work / "stub.log"
    with open(log, "wb") as err:
        stub = subprocess.Popen([tool, "serve", str(guest), "--port", "0"], cwd=work, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, preexec_fn=die_with_parent)  # noqa: PLW1509
    try:
        deadline = time.monotonic() + 30
        while not (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())):
            assert stub.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        r = subprocess.run([GDB, "-nx", "-batch", "-x", str(script), "-ex", f"file {guest}",
                            "-ex", f"target remote 127.0.0.1:{m[1]}",
                            "-ex", "vmi trace start", "-ex", "break pt_workload_summary",
                            "-ex", "continue", "-ex", "vmi trace 4", "-ex", "detach"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL, check=False)
    finally:
        stop_process(stub)
    out = r.stdout + r.stderr
    assert "Traceback" not in out and "vmigdb: needs an environment" not in out, out
    assert re.search(r"Breakpoint 1, .*pt_workload_summary", out), out
    assert re.search(r"vmi trace: recording \((fast|stub) path\)", out), out  # the stub's tracer
    assert re.search(r"\b(SetPxE|UpdatePxE|FlushTLB|SetLazyMode)\b", out), out
