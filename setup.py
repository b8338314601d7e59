"""Builds the compiled core ``laser_fast._core`` (C++17, pybind11, OpenMP).

Set ``LASER_FAST_NATIVE=1`` to add ``-march=native`` (off by default so wheels stay portable).
"""
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

extra_compile = ["-O3", "-fopenmp"] if sys.platform != "win32" else ["/O2", "/openmp"]
extra_link = ["-fopenmp"] if sys.platform != "win32" else []
if os.environ.get("LASER_FAST_NATIVE") == "1":
    extra_compile.append("-march=native")

ext_modules = [
    Pybind11Extension(
        "laser_fast._core",
        sources=sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
