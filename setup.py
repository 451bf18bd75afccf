"""Build script for the compiled kernel ``fastbp._core``.

Metadata lives in ``pyproject.toml``; this file only declares the extension and its flags:
``-O3`` plus ``-fopenmp-simd`` (lets ``#pragma omp simd reduction`` vectorise the dot products without
an OpenMP runtime and without ``-ffast-math``). Never ``-march=native``: wheels must run on any x86-64;
wider SIMD comes from runtime dispatch in ``_kernels.h``.

``FASTBP_DEBUG_BUILD=1`` builds with Cython's bounds checking on, ``-O0 -g`` and no optimisation
directives, for the sanitizer and fuzz runs.
"""

import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("FASTBP_DEBUG_BUILD", "") == "1"
SANITIZE = os.environ.get("FASTBP_SANITIZE", "")  # e.g. "address"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}


class BuildExt(build_ext):
    """Add GCC/Clang flags only where the compiler understands them (MSVC gets /O2)."""

    def build_extensions(self):
        unix = self.compiler.compiler_type == "unix"
        for ext in self.extensions:
            if unix:
                flags = ["-O0", "-g"] if DEBUG else ["-O3"]
                flags += ["-fopenmp-simd", "-fno-math-errno", "-pthread"]
                ext.extra_link_args += ["-pthread"]   # the product threads (_kernels_pool.h)
                if SANITIZE:
                    flags += [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer"]
                    ext.extra_link_args += [f"-fsanitize={SANITIZE}"]
                ext.extra_compile_args += flags
            else:
                ext.extra_compile_args += ["/O2"]
        super().build_extensions()


extensions = [
    Extension(
        "fastbp._core",
        sources=["fastbp/_core.pyx"],
        depends=["fastbp/_kernels.h", "fastbp/_kernels_rows.h", "fastbp/_kernels_gemm.h", "fastbp/_kernels_pool.h"],
        include_dirs=["fastbp", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # Link libm explicitly: an unversioned `exp` binds to glibc's slow errno-setting compat wrapper.
        libraries=["m"] if sys.platform != "win32" else [],
    )
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives, annotate=False),
    cmdclass={"build_ext": BuildExt},
)
