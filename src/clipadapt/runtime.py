"""Process-level start-up settings: the C allocator and the OpenMP thread policy.

A program calls these first, before anything imports torch (this module never imports it):
OpenMP reads its environment once, when torch loads it, and the allocator settings should
hold from the first large allocation on. ``runtime_settings()`` says what is in force, for
results files.

* ``configure_allocator()``: glibc's malloc serves every block over its mmap threshold
  (128 KiB to 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when freed, so
  each batch of CNN activations is faulted in page by page again (12-16k page faults per
  image for EfficientNet-Lite0 at batch 64). Turning mmap off and trimming the heap only
  beyond 1 GiB keeps freed activations in the process for the next batch (lite tower on 2
  idle cores: 81 -> 147 img/s). The cost: the resident size stays near its peak instead
  of shrinking between batches.
* ``configure_threads()``: OpenMP workers sleep when they run out of work
  (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning for a while. Neutral on idle cores;
  where other work shares them (decoding threads, other processes) spinning takes CPU
  they need (lite tower at load 4-6: 35 -> 26 CPU ms per image).

``benchmarks/runtime_settings.py`` measures both against the defaults.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
ALLOCATOR_SETTINGS: dict[str, tuple[int, int]] = {
    "M_MMAP_MAX": (M_MMAP_MAX, 0),
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 1 << 30),
}
# Any of these in the environment means the user tuned glibc's malloc: leave it to them.
GLIBC_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
WAIT_POLICY = "PASSIVE"

_allocator: dict[str, Any] = {}
_threads: dict[str, Any] = {}


def configure_allocator() -> dict[str, Any]:
    """Keep freed memory in the process under glibc (see the module docstring).

    Idempotent, never raises; a no-op outside glibc or when the environment already tunes
    malloc. Returns what was set (also in ``runtime_settings()["allocator"]``).
    """
    if _allocator:
        return dict(_allocator)
    try:
        _allocator.update(_set_glibc_malloc())
    except Exception as err:  # never fail the program over a tuning knob
        log.debug("allocator left at its defaults: %s", err)
        _allocator["skipped"] = f"error: {err}"
    return dict(_allocator)


def release_free_memory() -> None:
    """Hand the heap memory freed since the last large job back to the OS (glibc's
    ``malloc_trim``) when ``configure_allocator`` keeps it: after a feature extraction, so
    that the memory its batches held does not add to what the next step (the text tower,
    say) allocates. A no-op otherwise."""
    if _allocator and "skipped" not in _allocator:
        ctypes.CDLL(None).malloc_trim(0)


def _set_glibc_malloc() -> dict[str, Any]:
    if not sys.platform.startswith("linux"):
        return {"skipped": f"not glibc ({sys.platform})"}
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return {"skipped": "not glibc"}
    tuned = [name for name in GLIBC_MALLOC_ENV if name in os.environ]
    if tuned or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return {"skipped": f"set by the environment ({', '.join(tuned) or 'GLIBC_TUNABLES'})"}
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return {
        name: value
        for name, (param, value) in ALLOCATOR_SETTINGS.items()
        if libc.mallopt(param, value) == 1
    }


def configure_threads(num_threads: int | None = None) -> dict[str, Any]:
    """Make OpenMP workers sleep when idle and, if given, fix the number of compute threads.

    ``OMP_WAIT_POLICY`` only acts if set before torch is imported; a value the user already
    exported wins. ``num_threads`` goes to ``OMP_NUM_THREADS`` before torch is imported, to
    ``torch.set_num_threads`` after. Returns ``runtime_settings()``.
    """
    before_torch = "torch" not in sys.modules
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    if num_threads is not None:
        if before_torch:
            os.environ["OMP_NUM_THREADS"] = str(num_threads)
        else:
            import torch

            torch.set_num_threads(num_threads)
    if not _threads:
        _threads["omp_set_before_torch_import"] = before_torch
    if not before_torch:
        log.warning("configure_threads() ran after torch was imported: OMP_WAIT_POLICY ignored")
    return runtime_settings()


def runtime_settings() -> dict[str, Any]:
    """The start-up settings in force: allocator, OpenMP policy, thread counts."""
    settings: dict[str, Any] = {
        "allocator": dict(_allocator) or "default",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        **_threads,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        settings["torch_threads"] = torch.get_num_threads()
        settings["torch_interop_threads"] = torch.get_num_interop_threads()
    return settings
