"""setuptools entry for what pyproject.toml cannot say: the cffi extension (stub/native)."""

from setuptools import setup

setup(cffi_modules=["stub/native/build.py:ffibuilder"])
