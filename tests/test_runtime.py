"""Process start-up settings: each check runs in a fresh interpreter, as a program start does."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap

import pytest

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


def run_python(script: str, **env: str) -> dict:
    """Run ``script`` in a fresh interpreter; it prints one JSON object last."""
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=environ,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Touch a 64 MiB malloc block twice: above glibc's largest mmap threshold (32 MiB), so by
# default each round is a fresh mmap faulted in page by page.
TOUCH_TWICE = """
    import ctypes, json, resource
    from clipadapt import runtime
    set_ = runtime.configure_allocator()
    again = runtime.configure_allocator()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size, faults = 64 << 20, []
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"set": set_, "again": again, "faults": faults,
                      "settings": runtime.runtime_settings()["allocator"]}))
"""


@pytest.mark.skipif(not GLIBC, reason="the allocator settings apply to glibc only")
def test_configured_allocator_reuses_a_freed_large_block_without_page_faults():
    out = run_python(TOUCH_TWICE)
    assert out["set"] == {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30}
    assert out["again"] == out["set"] == out["settings"]  # idempotent, and recorded
    assert out["faults"][1] < 1000  # 64 MiB is 16,384 pages: the block stayed in the heap


@pytest.mark.skipif(not GLIBC, reason="the allocator settings apply to glibc only")
def test_allocator_left_alone_when_the_environment_tunes_malloc():
    out = run_python(TOUCH_TWICE, MALLOC_MMAP_MAX_="65536")
    assert set(out["set"]) == {"skipped"} and "MALLOC_MMAP_MAX_" in out["set"]["skipped"]


def test_threads_are_configured_before_torch_is_imported():
    out = run_python(
        """
        import json, os, sys
        from clipadapt import runtime
        before = runtime.configure_threads(num_threads=1)
        torch_was_imported = "torch" in sys.modules
        import torch
        print(json.dumps({"before": before, "torch_was_imported": torch_was_imported,
                          "after": runtime.runtime_settings()}))
        """
    )
    assert not out["torch_was_imported"]
    assert out["before"]["omp_wait_policy"] == "PASSIVE"
    assert out["before"]["omp_set_before_torch_import"] is True
    assert out["after"]["torch_threads"] == 1


def test_an_exported_wait_policy_wins_and_late_thread_counts_reach_torch():
    out = run_python(
        """
        import json
        import torch
        from clipadapt import runtime
        print(json.dumps(runtime.configure_threads(num_threads=1)))
        """,
        OMP_WAIT_POLICY="ACTIVE",
    )
    assert out["omp_wait_policy"] == "ACTIVE"
    assert out["omp_set_before_torch_import"] is False
    assert out["torch_threads"] == 1


@pytest.mark.skipif(not GLIBC, reason="the allocator settings apply to glibc only")
def test_released_memory_leaves_the_process():
    """Kept after free (the point of the settings), returned by ``release_free_memory``."""
    out = run_python(
        """
        import ctypes, json
        from clipadapt import runtime
        runtime.configure_allocator()
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        def resident():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
        block = libc.malloc(256 << 20)
        ctypes.memset(block, 1, 256 << 20)
        libc.free(block)
        kept = resident()
        runtime.release_free_memory()
        print(json.dumps({"kept": kept, "released": resident()}))
        """
    )
    assert out["kept"] - out["released"] > 200  # MiB
