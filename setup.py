"""Build the compiled datapath; everything else is declared in pyproject.toml.

oe.datapath is one extension: its Cython parts and the C files of oe/dp/ (the Linux socket and
TUN offload code), see docs/architecture.md, section 4.
"""

from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

C_SOURCES = sorted(glob("oe/dp/*.c"))
HEADERS = sorted(glob("oe/dp/*.h") + glob("oe/dp/*.pxd") + glob("oe/*.pxi"))

setup(
    ext_modules=cythonize(
        [
            Extension(
                "oe.datapath",
                ["oe/datapath.pyx", *C_SOURCES],
                include_dirs=["oe/dp"],
                depends=HEADERS + C_SOURCES,
                libraries=["crypto"],
                extra_compile_args=["-O2"],
            )
        ],
        compiler_directives={"language_level": "3"},
    )
)
