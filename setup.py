"""Build the compiled datapath; everything else is declared in pyproject.toml.

oe.datapath (the Python API) and its parts in oe/dp/ are Cython extensions that share
declarations through .pxd files (docs/architecture.md, section 4); the Linux socket and TUN
offload code is C, in oe/dp/csrc/, linked into the part that calls it.
"""

from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

CSRC = "oe/dp/csrc"
# Declarations every part may cimport or include: a change rebuilds, and the sdist carries them.
HEADERS = sorted(glob(f"{CSRC}/*.h") + glob("oe/dp/*.pxd"))
C_FILES = {"oe.dp.batch": [f"{CSRC}/sock.c", f"{CSRC}/vnet.c"],   # sendmmsg, GSO, GRO writes
           "oe.dp.loop": [f"{CSRC}/sock.c", f"{CSRC}/vnet.c"]}    # recvmmsg, TSO reads


def extension(name: str) -> Extension:
    c_files = C_FILES.get(name, [])
    pyx = name.replace(".", "/") + ".pyx"
    return Extension(name, [pyx, *c_files], include_dirs=[CSRC],
                     depends=[pyx, *HEADERS, *c_files], libraries=["crypto"],
                     extra_compile_args=["-O2"])


PARTS = sorted(path[:-4].replace("/", ".") for path in glob("oe/dp/*.pyx"))

setup(
    ext_modules=cythonize(
        [extension(name) for name in [*PARTS, "oe.datapath"]],
        compiler_directives={"language_level": "3"},
    )
)
