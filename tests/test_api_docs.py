"""docs/api.md is generated from the docstrings (tools/gen_api_docs.py) and cannot drift.

* Regenerating gives exactly the committed file (after changing a public name or a
  docstring, run ``python tools/gen_api_docs.py``).
* Every public module, class, function, method and property has a docstring.
* Every top-level name is documented and every link inside api.md has its anchor.
* The docstring-to-markdown conversion keeps code, sections and literal blocks apart.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "api.md"

capsched = pytest.importorskip("capsched")


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "tools" / "gen_api_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_api_docs"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def rendered() -> str:
    try:
        return str(gen.render())
    except gen.ModuleImportError as exc:  # an optional extra of a public module is missing
        pytest.skip(f"{exc.module} cannot be imported here ({exc.cause}); install capsched[test]")


def test_api_md_matches_the_docstrings(rendered: str) -> None:
    committed = API_MD.read_text(encoding="utf-8")
    if committed != rendered:
        old, new = committed.splitlines(), rendered.splitlines()
        first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        pytest.fail(
            "docs/api.md is out of date: run `python tools/gen_api_docs.py`. First difference at "
            f"line {first + 1}:\n  committed: {old[first] if first < len(old) else '<end>'!r}\n"
            f"  generated: {new[first] if first < len(new) else '<end>'!r}"
        )


def test_every_public_name_has_a_docstring(rendered: str) -> None:
    assert gen.missing_docstrings() == []
    assert "*(no docstring)*" not in rendered


def test_every_top_level_name_is_documented(rendered: str) -> None:
    table = rendered.split("## `capsched`", 1)[1].split("<a id=", 1)[0]  # the package's table
    for name in capsched.__all__:
        assert f"[`{name}`](#" in table, name


def test_every_link_in_api_md_has_an_anchor(rendered: str) -> None:
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', rendered))
    links = set(re.findall(r"\]\(#([^)]+)\)", rendered))
    assert links, "api.md has no internal links"
    assert sorted(links - anchors) == []
    # every public module has a section
    for module in gen.public_modules():
        assert gen._anchor(module.__name__) in anchors


def test_signatures_show_defaults_as_written() -> None:
    sig = gen.class_signature(capsched.Config)
    assert "pelt_period: float = 1.0 / 32.0" in sig  # the source text, not 0.03125
    sig = gen.format_signature("from_env", capsched.SchedulerConfig.from_env)
    assert "environ: Mapping[str, str] = os.environ" in sig  # not the process's environment


def test_docstring_markdown_sections_and_literals() -> None:
    doc = (
        "Summary with ``code`` and :class:`capsched.Scheduler`.\n"
        "\n"
        "An example::\n"
        "\n"
        "    x = 1\n"
        "    y = 2\n"
        "\n"
        "Args:\n"
        "    name: what it is,\n"
        "        continued.\n"
        "    a, b: a pair.\n"
        "\n"
        "Raises:\n"
        "    ConfigError: a bad value.\n"
        "\n"
        ">>> 1 + 1\n"
        "2\n"
    )
    md = gen.docstring_markdown(doc)
    assert "Summary with `code` and `capsched.Scheduler`." in md
    assert "An example:\n\n```text\nx = 1\ny = 2\n```" in md
    assert "**Args:**\n\n- `name`: what it is, continued.\n- `a, b`: a pair." in md
    assert "- `ConfigError`: a bad value." in md
    assert "```python\n>>> 1 + 1\n2\n```" in md


def test_a_missing_docstring_is_detected() -> None:
    @dataclasses.dataclass
    class NoDoc:
        x: int = 0

    class Documented:
        """Has one."""

        def method(self) -> None:
            pass

    class Child(Documented):
        def method(self) -> None:
            """Documented here."""

    assert gen.own_doc(NoDoc) is None  # dataclasses' generated "NoDoc(x: int = 0)" does not count
    assert gen.own_doc(Documented) == "Has one."
    assert gen.own_doc(Documented.method) is None
    assert gen.inherited_doc(Child, "method") is None  # the base's method has none either
    Documented.method.__doc__ = "Now it has."
    found = gen.inherited_doc(Child, "method")
    assert found is not None and found[0].endswith("Documented") and found[1] == "Now it has."
