"""gdb loader for vmigdb: ``gdb -x path/to/vmigdb.py`` or ``source path/to/vmigdb.py``; an
installed vmigdb prints this file's path with ``vmigdb gdb-script``.

gdb embeds its own Python, which is not the ``python3`` on PATH and has none of vmigdb's
dependencies. This file finds an environment where vmigdb is installed (the site-packages this
copy was installed into, this checkout's ``.venv``, then ``$VIRTUAL_ENV``), adds its
site-packages only when its Python matches gdb's (the wheels are abi3/ctypes, but a different
minor version's site-packages is not safe), and then registers the ``vmi`` commands once, however
often it is sourced.
"""

import os
import site
import sys

import gdb

_HERE = os.path.dirname(os.path.realpath(__file__))
_WANT = f"python{sys.version_info.major}.{sys.version_info.minor}"


def _installed_env() -> str | None:
    """The environment whose site-packages holds this copy (``pip install``: it lives in
    ``ENV/lib/pythonX.Y/site-packages/vmigdb/share/``), or None in a checkout."""
    parts = _HERE.split(os.sep)
    for i in range(len(parts) - 1, 2, -1):
        if parts[i] in ("site-packages", "dist-packages") and parts[i - 2] == "lib":
            return os.sep.join(parts[:i - 2]) or os.sep
    return None


def _candidates() -> list[str]:
    envs = [env for env in (_installed_env(),) if env]
    envs.append(os.path.join(_HERE, ".venv"))
    if os.environ.get("VIRTUAL_ENV"):
        envs.append(os.environ["VIRTUAL_ENV"])
    return envs


def _site_packages(env: str) -> tuple[str | None, str | None]:
    """(site-packages matching gdb's Python, or None; the Python version the env has)."""
    lib = os.path.join(env, "lib")
    try:
        names = sorted(n for n in os.listdir(lib) if n.startswith("python"))
    except OSError:
        return None, None
    for n in names:
        if n == _WANT:
            sp = os.path.join(lib, n, "site-packages")
            return (sp if os.path.isdir(sp) else None), n
    return None, names[0] if names else None


def _add_site(sp: str) -> None:
    """addsitedir runs the .pth files (the editable install's finder lives there); then the
    directory moves first, so gdb's system packages (pygments) cannot shadow ours."""
    if sp in sys.path:
        return
    site.addsitedir(sp)
    sys.path.remove(sp)
    sys.path.insert(0, sp)


def _bootstrap() -> bool:
    seen = []
    for env in _candidates():
        sp, version = _site_packages(env)
        if sp:
            _add_site(sp)
            return True
        if version:
            seen.append(f"{env} has {version}")
    try:  # installed in gdb's own Python (a distro package, pip --user)?
        import capstone  # noqa: F401
        import rich  # noqa: F401

        import vmigdb.commands  # noqa: F401
    except ImportError:
        where = "; ".join(seen) if seen else "no .venv or $VIRTUAL_ENV found"
        gdb_py = f"{sys.version_info.major}.{sys.version_info.minor}"
        gdb.write(
            f"vmigdb: needs an environment with vmigdb installed for gdb's Python {gdb_py} "
            f"({where}); run `make venv` with python{gdb_py}, or "
            f"`python{gdb_py} -m pip install -e {_HERE}`\n",
            gdb.STDERR,
        )
        return False
    return True


if _bootstrap():
    try:
        from vmigdb.commands import register
    except ImportError as e:
        gdb.write(f"vmigdb: cannot load the gdb commands: {e}\n", gdb.STDERR)
    else:
        register()
