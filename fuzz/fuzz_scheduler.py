"""Coverage-guided fuzzing of capsched's Python API with atheris (libFuzzer for Python).

fuzz/harness.py decodes each input into a scheduler and a sequence of operations and
checks the conservation oracle after every one; this script hands it to atheris, with
capsched's Python modules instrumented for coverage. Needs ``pip install atheris``
(wheels for CPython 3.9-3.13 on Linux x86-64; the ``test`` extra installs it there)::

    python fuzz/fuzz_scheduler.py -max_total_time=3600 -max_len=1024 fuzz/corpus   # long run
    python fuzz/fuzz_scheduler.py -runs=3000 -seed=1 -max_len=512                  # short run
    python fuzz/fuzz_scheduler.py crash-<sha1>                                      # replay one

A crash (an oracle failure or an unexpected exception) stops the run and leaves the input
in ``crash-<sha1>``; replay it without atheris with ``python fuzz/replay.py crash-<sha1>``
and keep it as a test in tests/test_fuzz_regressions.py. docs/reliability.md has more.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, Iterator, List, Optional, Set


def _capsched_functions() -> Iterator[Any]:
    """Every Python function defined in capsched's loaded modules (methods, properties'
    accessors, static and class methods included), each once."""
    seen: Set[int] = set()
    for name, mod in sorted(sys.modules.items()):
        if mod is None or not (name == "capsched" or name.startswith("capsched.")):
            continue
        for obj in list(vars(mod).values()):
            if getattr(obj, "__module__", None) != name:
                continue
            members = list(vars(obj).values()) if inspect.isclass(obj) else [obj]
            for m in members:
                if isinstance(m, (staticmethod, classmethod)):
                    m = m.__func__
                fns = [m.fget, m.fset] if isinstance(m, property) else [m]
                for f in fns:
                    if inspect.isfunction(f) and id(f) not in seen:
                        seen.add(id(f))
                        yield f


def main(argv: Optional[List[str]] = None) -> None:
    """Run atheris on :func:`harness.run_one`; ``argv`` takes libFuzzer's flags."""
    try:
        import atheris  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        sys.exit(
            "atheris is not installed: pip install atheris (wheels for CPython 3.9-3.13 on "
            "Linux x86-64), or pip install 'capsched[test]'"
        )
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import harness

    # Coverage instrumentation of capsched's Python code only (atheris.instrument_all()
    # would take minutes over numpy; instrument_imports() does not reach an editable
    # install's loader). The C++ core is not instrumented (docs/reliability.md says why).
    n = 0
    for f in _capsched_functions():
        atheris.instrument_func(f)
        n += 1
    print(f"fuzz_scheduler: instrumented {n} functions of capsched", file=sys.stderr)
    atheris.Setup(sys.argv if argv is None else argv, harness.run_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
