"""The entry points' allocator setting (score_upstream.native.keep_freed_memory): a freed large tensor's pages
are reused by the next one instead of being unmapped and faulted in again, page by page."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

_PROBE = """
import ctypes, sys, torch
from score_upstream.native import keep_freed_memory


class Mallinfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
tuned = keep_freed_memory()
x = torch.ones(10 * 2**20)  # 40 MB, above glibc's largest default mmap threshold (32 MB)
mapped = libc.mallinfo2().hblkhd  # bytes in blocks of their own (mmap), unmapped when freed
del x
kept = libc.mallinfo2().fordblks  # free bytes the heap keeps for the next allocation
print(int(tuned), mapped, kept)
"""


def _probe(malloc: str | None) -> tuple[bool, int, int]:
    env = {k: v for k, v in os.environ.items() if k != "SCORE_MALLOC"}
    if malloc:
        env["SCORE_MALLOC"] = malloc
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout
    tuned, mapped, kept = out.split()
    return tuned == "1", int(mapped), int(kept)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
                    or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33), reason="glibc >= 2.33 (mallinfo2)")
def test_a_freed_large_tensor_stays_in_the_heap_for_the_next():
    size = 40 * 2**20
    tuned, mapped, kept = _probe(None)
    assert tuned and mapped < size and kept >= size  # on the heap, and kept there once freed
    untuned, mapped, kept = _probe("default")
    assert not untuned and mapped >= size and kept < size  # glibc's default: its own mapping, returned when freed


def test_it_is_set_once_and_can_be_left_alone(monkeypatch):
    import score_upstream.native as native

    monkeypatch.setattr(native, "_malloc_tuned", None)
    monkeypatch.setenv("SCORE_MALLOC", "default")
    assert native.keep_freed_memory() is False
    monkeypatch.delenv("SCORE_MALLOC")
    assert native.keep_freed_memory() is False  # decided by the first call
