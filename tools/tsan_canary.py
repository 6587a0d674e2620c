"""A deliberate data race, for tools/sanitize.sh to check its ThreadSanitizer set-up.

Two threads ``memset`` the same buffer through ctypes, which releases the GIL around
foreign calls, so nothing orders the writes; TSan's ``memset`` interceptor must report a
data race and exit with its exitcode. If it does not, a clean TSan run would prove
nothing.
"""

from __future__ import annotations

import ctypes
import sys
import threading


def main() -> int:
    """Race two memsets on one buffer; returns 0 only if nothing caught it."""
    libc = ctypes.CDLL(None)
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    libc.memset.restype = ctypes.c_void_p
    buf = ctypes.create_string_buffer(1 << 16)
    barrier = threading.Barrier(2)

    def writer(byte: int) -> None:
        barrier.wait()
        for _ in range(200):
            libc.memset(ctypes.addressof(buf), byte, len(buf))

    threads = [threading.Thread(target=writer, args=(b,)) for b in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("tsan_canary: the race was NOT caught", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
