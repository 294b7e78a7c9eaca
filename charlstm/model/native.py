"""The C cell kernels of the bf16 LSTM layer (charlstm/model/lstm_cell.c): built once per machine
with the system's C compiler, cached, loaded with ctypes.

Why C and not torch.compile: a step's pointwise work is ~10 µs of arithmetic, and what costs is
calling it 256 times a window per layer. A ctypes call costs ~1 µs; a compiled graph's call
(guards, wrapper, fresh outputs) costs more than the ops it replaces at this size, and compiling
the unrolled window takes minutes. The C file needs no headers beyond libc's, so it builds in
under a second, against no particular torch version.

Optional: without a compiler (or with CHARLSTM_NATIVE=0) `cell_kernels()` is None and the layer
runs the same arithmetic as ATen ops (charlstm.model.lstm_bf16's fallback), slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("lstm_cell.c")
#: -ffast-math lets gcc vectorise the cell's min/max/floor; the link step leaves it out, because
#: gcc < 13 would otherwise link crtfastmath.o, which sets flush-to-zero for the whole process
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-c")
LINK_FLAGS = ("-shared", "-fopenmp", "-lm")

#: why the kernels are not in use, when they are not (shown by `charlstm bench`)
unavailable_reason: str | None = None


def compiler() -> str | None:
    """$CC, else cc, else gcc, where one is on PATH."""
    return shutil.which(os.environ.get("CC", "")) or shutil.which("cc") or shutil.which("gcc")


@functools.cache
def cell_kernels() -> ctypes.CDLL | None:
    """The loaded kernels (`lstm_cell_forward`, `lstm_cell_backward`, `dropout_apply`), built
    on first use; None where they cannot be (the reason is in `unavailable_reason`)."""
    global unavailable_reason
    if os.environ.get("CHARLSTM_NATIVE", "1") == "0":
        unavailable_reason = "CHARLSTM_NATIVE=0"
        return None
    try:
        lib = ctypes.CDLL(str(_built_library()))
    except (OSError, subprocess.SubprocessError) as e:
        unavailable_reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"
        return None
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    lib.lstm_cell_forward.argtypes = [i32, i32, i32] + [ptr] * 9
    lib.lstm_cell_backward.argtypes = [i32, i32, i32] + [ptr] * 8
    i64, u64, u32, f32 = ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float
    lib.dropout_apply.argtypes = [i32, i64, u64, u32, f32, ptr, ptr]
    lib.lstm_cell_forward.restype = lib.lstm_cell_backward.restype = None
    lib.dropout_apply.restype = None
    return lib


def _built_library() -> Path:
    """The shared library for this source, compiler and CPU (-march=native), built into
    $CHARLSTM_CACHE/kernels (default ~/.cache/charlstm/kernels) on a miss; concurrent builders
    (DDP ranks, test workers) each write their own file and rename it into place."""
    from charlstm.config import cache_root
    from charlstm.runtime import cpu_flags

    cc = compiler()
    if cc is None:
        raise OSError("no C compiler found (set CC, or install gcc)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True)
    key = hashlib.sha256(
        "\0".join(
            [SOURCE.read_text(), cc, version.stdout, *COMPILE_FLAGS, *LINK_FLAGS]
            + sorted(cpu_flags())
        ).encode()
    ).hexdigest()[:16]
    target = cache_root() / "kernels" / f"lstm_cell-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "lstm_cell.o", Path(tmp) / target.name
        for cmd in (
            [cc, *COMPILE_FLAGS, str(SOURCE), "-o", str(obj)],
            [cc, str(obj), *LINK_FLAGS, "-o", str(lib)],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise subprocess.SubprocessError(f"{' '.join(cmd[:2])}…: {done.stderr.strip()}")
        os.replace(lib, target)
    return target
