"""setuptools entry for what pyproject.toml cannot say: the cffi extension (stub/native), and the
images a non-editable install ships in ``vmigdb/share/``.

``pip install .`` builds the identity ROM and the demo guest from source with the Makefile's own
rules (one recipe for both routes; GNU as, ld, gcc and make are needed, as for ``make``), and
copies them with the gdb loader ``vmigdb.py`` into the package, where ``vmigdb.resources`` finds
them. An editable install (``make venv``) uses the checkout's build/ and vmigdb.py instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: The images the package's share/ folder holds, as the Makefile names them in its build folder.
IMAGES = ("vmi_rom.bin", "vmi_rom.elf", "guest.elf")
LOADER = "vmigdb.py"


class BuildWithImages(build_py):
    """build_py, then the ROM and guest images and the gdb loader into vmigdb/share/."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        share = Path(self.build_lib) / "vmigdb" / "share"
        share.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vmigdb-images-") as tmp:
            # The ROM's rules run `python -m vmigdb.rom`: this build's copy of the package, not
            # the checkout's vmigdb/ in make's working directory (PYTHONSAFEPATH: no cwd first).
            env = {**os.environ, "PYTHONPATH": str(Path(self.build_lib).resolve()),
                   "PYTHONSAFEPATH": "1"}
            argv = ["make", "--no-print-directory", "-C", str(ROOT), f"BUILD={tmp}",
                    f"VPY={sys.executable}", "IMAGE_NEEDS=", f"{tmp}/vmi_rom.bin",
                    f"{tmp}/guest.elf"]
            try:
                subprocess.run(argv, env=env, check=True)
            except (OSError, subprocess.CalledProcessError) as e:
                raise SystemExit(f"vmigdb: building the ROM and the demo guest failed ({e}); "
                                 "they need make, GNU as/ld/objcopy and gcc -m32") from None
            for name in IMAGES:
                shutil.copyfile(Path(tmp) / name, share / name)
        shutil.copyfile(ROOT / LOADER, share / LOADER)


setup(cffi_modules=["stub/native/build.py:ffibuilder"], cmdclass={"build_py": BuildWithImages})
