"""Write docs/bad_inputs.md from the rows of tests/test_bad_input_catalogue.py.

Each row is run (in a temporary directory, so that file names in messages are relative
and the same on every machine) and the doc shows the exception and message it really
gave. ``tests/test_bad_input_catalogue.py::test_the_doc_is_generated_from_the_rows``
fails when the doc is stale; run this to refresh it::

    python tools/gen_bad_inputs.py           # rewrite docs/bad_inputs.md
    python tools/gen_bad_inputs.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "bad_inputs.md"


def _catalogue() -> ModuleType:
    path = ROOT / "tests" / "test_bad_input_catalogue.py"
    if str(path.parent) not in sys.path:  # (its helper modules, as pytest finds them)
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("bad_input_catalogue", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building
    spec.loader.exec_module(module)
    return module


def generate() -> str:
    """The doc's text, from running every row."""
    module = _catalogue()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            text: str = module.render(Path(tmp))
        finally:
            os.chdir(here)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/bad_inputs.md is stale")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is stale: run python tools/gen_bad_inputs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
