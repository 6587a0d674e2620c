"""A deliberate heap-use-after-free, for tools/sanitize.sh to check its own set-up.

Run under the same LD_PRELOAD and ASAN_OPTIONS as the tests, this must make
AddressSanitizer report ``heap-use-after-free`` and exit with its exitcode. If it does not,
the runtime is not active (or its options are wrong), and a clean test run would prove
nothing. ASan intercepts ``memcpy`` even in uninstrumented code, so ctypes suffices.
"""

from __future__ import annotations

import ctypes
import sys


def main() -> int:
    """Read 8 bytes of a freed block; returns 0 only if nothing caught it."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(16)
    libc.free(block)
    ctypes.string_at(block, 8)  # ASan stops the process here
    print("asan_canary: the use-after-free was NOT caught", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
