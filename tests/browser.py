"""Headless Chromium (Debian's ``chromium``) as a test instrument for HTML files: the DOM after
the scripts ran, what the page wrote to its console, every URL the browser asked for, and a
screenshot.

No network: the browser's proxy points at a closed port and every host name resolves to
nothing, so a page that tried to fetch a script or a font would fail, and the net log still
names the URL. The browser's own background requests (updates, its clock, accounts) are
there too; the page's are the ones made in its network partition (its origin, ``file://``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--no-first-run", "--disable-extensions",
    ("--disable-features=Translate,OptimizationHints,MediaRouter,SpellCheck,"
     "AutofillServerCommunication,CertificateTransparencyComponentUpdater"),
    "--virtual-time-budget=15000", "--window-size=1280,2600",
)
_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\] (.*)$")


@dataclass(frozen=True)
class PageRun:
    dom: str
    console: list[str]  # every console message (errors, warnings, logs)
    urls: set[str]  # every URL the page requested (its own file excluded)
    screenshot: Path


def run(page: Path, work: Path, timeout: float = 120.0) -> PageRun:
    """Load ``page`` twice (the DOM, then a screenshot), both with the net log and console."""
    assert CHROMIUM is not None
    urls: set[str] = set()
    console: list[str] = []
    outputs: list[str] = []
    shot = work / "screenshot.png"
    for k, mode in enumerate(("--dump-dom", f"--screenshot={shot}")):
        netlog = work / f"netlog{k}.json"
        profile = work / f"profile{k}"
        r = subprocess.run([CHROMIUM, *_FLAGS, f"--user-data-dir={profile}",
                            f"--log-net-log={netlog}", "--enable-logging=stderr", "--v=0",
                            mode, page.resolve().as_uri()],
                           capture_output=True, text=True, timeout=timeout, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        outputs.append(r.stdout)
        console += [m[1] for line in r.stderr.splitlines() if (m := _CONSOLE.search(line))]
        urls |= _netlog_urls(netlog) - {page.resolve().as_uri()}
    return PageRun(outputs[0], console, urls, shot)


def _netlog_urls(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8", errors="replace").rstrip().rstrip(",")
    if not text.endswith("}"):  # a net log cut by the browser's exit: close it
        text = text.rstrip(",\n") + "]}"
    try:
        log = json.loads(text)
    except json.JSONDecodeError:
        log = json.loads(text + "]}")
    out: set[str] = set()
    for e in log.get("events", []):
        params = e.get("params") or {}
        if "file://" in str(params.get("network_isolation_key", "")) and isinstance(
                params.get("url"), str):
            out.add(params["url"])
    return out
