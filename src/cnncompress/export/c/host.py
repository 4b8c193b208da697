"""Host proof: the generated C compiled with the system gcc and run through ctypes."""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ...utils import shorten

HOST_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic")
#: dlopen hands back the library already loaded from a path it has seen, even if the file was rebuilt:
#: every build in this process gets its own file name
_BUILDS = itertools.count()


class CompileError(RuntimeError):
    """A compiler or linker run failed; the message is its first error line, ``lines`` all it printed."""

    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.lines = lines


def compile_c(compiler: str, args: list[str], what: str) -> None:
    """Run a compiler; its first error line becomes a one-line :class:`CompileError` naming ``what``."""
    if shutil.which(compiler) is None:
        raise RuntimeError(f"{compiler} not found on PATH (needed to build {what})")
    done = subprocess.run([compiler, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [re.sub(r"^\S*/ld: ", "ld: ", line)  # the linker's install path says nothing
                 for line in done.stderr.splitlines() if line.strip()]
        first = next((line for line in lines if re.search(r"error:|ld: ", line) and "collect2" not in line),
                     lines[0] if lines else f"exit status {done.returncode}")
        raise CompileError(f"{compiler} failed building {what}: {shorten(first, 300)}", lines)


def c_sources(lib_dir: str | os.PathLike) -> list[str]:
    return sorted(str(p) for p in Path(lib_dir).glob("*.c"))


class HostModel:
    """The exported library built as a shared object on this machine, called image by image."""

    def __init__(self, lib_dir: str | os.PathLike, build_dir: str | os.PathLike, compiler: str = "gcc") -> None:
        build = Path(build_dir)
        build.mkdir(parents=True, exist_ok=True)
        self.path = build / f"libcnnc_model-{next(_BUILDS)}.so"
        compile_c(compiler, [*HOST_FLAGS, "-shared", "-fPIC", *c_sources(lib_dir), "-o", str(self.path)],
                  f"the host library from {lib_dir}")
        self.library = ctypes.CDLL(str(self.path))
        self.library.cnnc_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.library.cnnc_run.restype = ctypes.c_int

    def run(self, codes: np.ndarray, output_size: int) -> np.ndarray:
        """int8 outputs ``(N, output_size)`` for int8 input codes ``(N, ...)``."""
        codes = np.ascontiguousarray(codes, dtype=np.int8).reshape(len(codes), -1)
        out = np.zeros((len(codes), output_size), np.int8)
        for image, result in zip(codes, out, strict=True):
            status = self.library.cnnc_run(image.ctypes.data, result.ctypes.data)
            if status != 0:
                raise RuntimeError(f"cnnc_run returned {status}")
        return out
