"""Build a C kernel of ``tutx/kernels/csrc`` into a shared library, once, and load it with ctypes.

The CPU counterpart of Triton's JIT: the source is compiled on the machine that runs it
(``-O3 -march=native``, so the compiler uses whatever vector units this CPU has), with the sizes
that must be compile-time constants passed as ``-D`` defines, and cached under
``~/.cache/tutx/cpu_kernels`` (or ``$TUTX_CACHE_DIR``) by a hash of source, flags and compiler.
Nothing needs PyTorch's headers: a kernel takes raw pointers, so a build takes well under a second.

``-ffast-math`` lets the compiler vectorize reductions and call a vector ``expf``; it is given to
the compile step only, never to the link step, where GCC would add ``crtfastmath.o`` and switch
the whole process's floating point to flush-denormals-to-zero.

A build that fails is remembered for the rest of the process (the same error, no second compile):
callers such as :func:`~tutx.kernels.paged_decode_cpu.cpu_kernel_available` may ask often.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
COMPILE_FLAGS = ("-O3", "-march=native", "-fPIC", "-fopenmp", "-ffast-math", "-std=gnu11")
LINK_FLAGS = ("-shared", "-fopenmp", "-lm")

_loaded: dict[str, ctypes.CDLL] = {}
_failed: dict[str, str] = {}  # build key -> the error: a build that failed is not retried in this process


class KernelBuildError(RuntimeError):
    """The C compiler is missing or failed; the message holds its output."""


def compiler() -> str | None:
    """The C compiler used: ``$CC``, else ``cc`` or ``gcc`` on the PATH (None when there is none)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    return cc if cc and shutil.which(cc) else None


def cache_dir() -> Path:
    return Path(os.environ.get("TUTX_CACHE_DIR") or Path.home() / ".cache" / "tutx") / "cpu_kernels"


def _compiler_version(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else cc


def build(source: str, defines: dict[str, int] | None = None) -> ctypes.CDLL:
    """The library built from ``csrc/<source>`` with ``-D<name>=<value>`` for each define (cached).

    Raises :class:`KernelBuildError` when there is no C compiler or the build fails.
    """
    cc = compiler()
    if cc is None:
        raise KernelBuildError("no C compiler: set CC, or install gcc (the CPU kernels are compiled on first use)")
    src = CSRC / source
    flags = [*COMPILE_FLAGS, *(f"-D{k}={int(v)}" for k, v in sorted((defines or {}).items()))]
    headers = [h.read_text() for h in sorted(CSRC.glob("*.h"))]  # what a source may include
    key = hashlib.sha256("\0".join([src.read_text(), *headers, *flags, *LINK_FLAGS, _compiler_version(cc)])
                         .encode()).hexdigest()
    name = f"{src.stem}-{key[:16]}"
    if name in _loaded:
        return _loaded[name]
    if name in _failed:
        raise KernelBuildError(_failed[name])
    lib_path = cache_dir() / f"{name}.so"
    if not lib_path.exists():
        try:
            lib_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: build into the temporary directory instead
            lib_path = Path(tempfile.gettempdir()) / "tutx-cpu-kernels" / f"{name}.so"
            lib_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
            obj, out = Path(tmp) / "kernel.o", Path(tmp) / "kernel.so"
            for cmd in ([cc, *flags, "-c", str(src), "-o", str(obj)], [cc, str(obj), "-o", str(out), *LINK_FLAGS]):
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    _failed[name] = f"building {source} failed: {' '.join(cmd)}\n{done.stderr[-2000:]}"
                    raise KernelBuildError(_failed[name])
            os.replace(out, lib_path)  # atomic: a concurrent build of the same key just replaces it
    _loaded[name] = ctypes.CDLL(str(lib_path))
    return _loaded[name]


__all__ = ["build", "compiler", "cache_dir", "KernelBuildError", "CSRC"]
