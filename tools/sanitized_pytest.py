"""Run pytest against a sanitizer build of capsched's extension (used by tools/sanitize.sh).

Usage: python tools/sanitized_pytest.py SITE_DIR [pytest arguments...]

SITE_DIR holds an unpacked capsched wheel built with ``CAPSCHED_SANITIZE``. It goes first
on ``sys.path``; an editable install's import hook (scikit-build-core puts one on
``sys.meta_path``, ahead of ``sys.path``) is taken out for ``capsched`` so that it cannot
hand back the normal build. Before any test runs, the script checks that ``capsched._core``
really is the one under SITE_DIR and that a sanitizer runtime is loaded in the process,
and exits with status 3 otherwise: a sanitizer run that silently tested the normal build
would prove nothing.
"""

from __future__ import annotations

import os
import sys


def _loaded_sanitizers() -> list[str]:
    """Names of the sanitizer runtimes mapped into this process (Linux /proc)."""
    found = set()
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            for rt in ("asan", "ubsan", "tsan"):
                if f"lib{rt}" in line or f"clang_rt.{rt}" in line:
                    found.add(rt)
    return sorted(found)


def main(argv: list[str]) -> int:
    """Point ``capsched`` at SITE_DIR, check it, then run ``pytest.main`` on the rest."""
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    site = os.path.abspath(argv[0])
    if not os.path.isdir(os.path.join(site, "capsched")):
        print(f"sanitized_pytest: {site!r} holds no capsched package", file=sys.stderr)
        return 3
    sys.path.insert(0, site)
    # Editable installs' finders answer for 'capsched' before sys.path is searched.
    sys.meta_path[:] = [
        f for f in sys.meta_path if "editable" not in (getattr(type(f), "__module__", "") or "")
    ]
    for name in [m for m in sys.modules if m == "capsched" or m.startswith("capsched.")]:
        del sys.modules[name]

    import capsched._core as core

    where = os.path.abspath(core.__file__ or "")
    if not where.startswith(site + os.sep):
        print(f"sanitized_pytest: capsched._core came from {where}, not from {site}", file=sys.stderr)
        return 3
    runtimes = _loaded_sanitizers()
    if not runtimes:
        print("sanitized_pytest: no sanitizer runtime is loaded (LD_PRELOAD?)", file=sys.stderr)
        return 3
    print(f"sanitized_pytest: capsched._core = {where}; sanitizer runtimes: {', '.join(runtimes)}", flush=True)

    import pytest

    return int(pytest.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
