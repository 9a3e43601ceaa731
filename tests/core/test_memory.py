"""glibc's mmap threshold, fixed for the process (higgs_tts/core/memory.py); its effect on a server's peak is
measured in tests/delivery/test_reference_memory.py."""

import subprocess
import sys

import pytest

from higgs_tts.settings import Settings

PROBE = """
import ctypes, ctypes.util, sys
from higgs_tts.core.memory import fix_mmap_threshold
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
fixed = fix_mmap_threshold(int(sys.argv[1]))

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

# glibc raises a dynamic threshold to the size of a freed mapped block: after a 24 MiB block is freed, a
# 16 MiB one comes from the heap and stays resident when freed (not at the heap's top: a small block
# follows it); with the threshold fixed it is a mapping of its own, returned when freed.
libc.free(libc.malloc(24 * 2**20))
block, after = libc.malloc(16 * 2**20), libc.malloc(64)
ctypes.memset(block, 1, 16 * 2**20)
before = resident()
libc.free(block)
print(fixed, (before - resident()) // 2**20)
"""


def freed_mib(threshold: int) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(threshold)], capture_output=True, text=True, check=True)
    fixed, freed = done.stdout.split()
    return fixed, int(freed)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_fixed_threshold_returns_large_blocks_when_freed():
    assert freed_mib(4 * 2**20) == ("True", 16)
    fixed, freed = freed_mib(0)  # glibc's own, dynamic threshold: the block stays in the heap
    assert fixed == "False" and freed == 0


def test_the_threshold_is_a_setting(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD", raising=False)
    assert Settings.from_env().malloc_mmap_threshold == Settings().malloc_mmap_threshold == 4 * 2**20
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD", "0")
    assert Settings.from_env().malloc_mmap_threshold == 0
    with pytest.raises(ValueError, match="MALLOC_MMAP_THRESHOLD must be at least 0"):
        Settings(malloc_mmap_threshold=-1)
