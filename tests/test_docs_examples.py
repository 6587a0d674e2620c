"""The documentation's examples run, its figures can be redrawn, its links resolve.

* Every ```python block of docs/quickstart.md and docs/concepts.md runs, in order, in one
  namespace per page (a block preceded by ``<!-- no-doctest -->`` is skipped). In any
  other page under docs/, a block preceded by ``<!-- doctest -->`` runs the same way.
  Blocks run in a temporary working directory; a failure names the page and line.
* docs/figures/make_figures.py: its data (computed by a real Scheduler) agrees with the
  formulas of docs/concepts.md, and with matplotlib installed it draws every PNG.
* Relative links between the docs point to files and headings that exist.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Pages whose python blocks all run (unless marked ``<!-- no-doctest -->``).
ALWAYS = ("quickstart.md", "concepts.md")
RUN_MARK = "<!-- doctest -->"
SKIP_MARK = "<!-- no-doctest -->"
#: Pages written on other branches at the same time, which docs/index.md links to before
#: they are merged; once present they are checked like the others.
PENDING = {"bad_inputs.md", "formats.md", "limits.md", "reliability.md", "soak.md",
           "packaging.md", "server.md", "ray.md"}
#: Pages of this branch whose links are checked.
LINKED_PAGES = ("index.md", "quickstart.md", "concepts.md", "simulator.md", "operations.md")

pytest.importorskip("capsched")

_FENCE = re.compile(r"^(`{3,})(\w*)\s*$")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line of the opening fence, code)`` for each block of ``path`` that should run."""
    lines = path.read_text(encoding="utf-8").splitlines()
    always = path.name in ALWAYS
    blocks: list[tuple[int, str]] = []
    i = 0
    previous = ""
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        fence, lang = m.group(1), m.group(2)
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].rstrip() != fence:
            body.append(lines[i])
            i += 1
        i += 1
        if lang == "python" and ((always and previous != SKIP_MARK) or previous == RUN_MARK):
            blocks.append((start + 1, "\n".join(body) + "\n"))
        previous = fence
    return blocks


def _pages_with_examples() -> list[Path]:
    return [p for p in sorted(DOCS.glob("*.md")) if python_blocks(p)]


@pytest.mark.parametrize("page", _pages_with_examples(), ids=lambda p: p.name)
def test_doc_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"docs.{page.stem}"}
    for line, code in python_blocks(page):
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"{page.relative_to(ROOT)}, the python block at line {line}: "
                        f"{type(exc).__name__}: {exc}")


def test_the_always_run_pages_have_examples() -> None:
    for name in ALWAYS:
        assert len(python_blocks(DOCS / name)) >= 3, name


def test_block_extraction_honours_the_marks(tmp_path: Path) -> None:
    page = tmp_path / "other.md"
    page.write_text(
        "```python\nx = 1\n```\n\n<!-- doctest -->\n```python\ny = 2\n```\n\n"
        "<!-- doctest -->\n```bash\necho no\n```\n````python\nz = 3\n````\n",
        encoding="utf-8",
    )
    assert python_blocks(page) == [(6, "y = 2\n")]
    always = tmp_path / "quickstart.md"
    always.write_text("```python\na = 1\n```\n<!-- no-doctest -->\n```python\nb = 2\n```\n", encoding="utf-8")
    assert python_blocks(always) == [(1, "a = 1\n")]


# --------------------------------------------------------------------------- figures


def _load_figures() -> ModuleType:
    path = DOCS / "figures" / "make_figures.py"
    spec = importlib.util.spec_from_file_location("make_figures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_figures"] = module
    spec.loader.exec_module(module)
    return module


figures = _load_figures()


def test_figure_data_agrees_with_the_formulas() -> None:
    # each function asserts the formulas itself; check what the pictures rely on too
    p = figures.pelt_series()
    assert max(p["util"]["full"]) == pytest.approx(1024 * (1 - 0.5 ** 2), rel=1e-9)  # 2 s = 64 periods
    assert max(p["util"]["half"]) == pytest.approx(512 * (1 - 0.5 ** 2), rel=1e-9)
    e = figures.util_est_series()
    assert max(r["estimate"] for r in e["rows"]) == pytest.approx(0.3 / e["tokens"])
    ex = figures.placement_example()
    assert [r["id"] for r in ex["waiting"]] == [3]
    assert {r["id"] for r in ex["devices"][0]["placed"]} == {1, 2, 4}  # the tightest on the H100
    tl = figures.batch_timeline()
    assert tl["holds"] and any(len(b["ids"]) == tl["max_batch_size"] for b in tl["batches"])


def test_make_figures_draws_every_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    paths = figures.make_all(tmp_path)
    assert [p.name for p in paths] == ["pelt.png", "placement.png", "batch_timeline.png"]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path
        assert (DOCS / "figures" / path.name).is_file(), f"docs/figures/{path.name} is not committed"


# --------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group(0) == "_" else "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    anchors = set(re.findall(r'<a id="([^"]+)"', text))
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


@pytest.mark.parametrize("name", LINKED_PAGES)
def test_links_resolve(name: str) -> None:
    page = DOCS / name
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file_part, _, anchor = target.partition("#")
        dest = page if not file_part else (page.parent / file_part).resolve()
        if not dest.exists():
            if dest.name not in PENDING or dest.parent != DOCS:
                bad.append(target)
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(target)
    assert bad == [], f"{name}: broken links {bad}"


def test_slug_matches_github() -> None:
    assert _slug(" Checkpoints and the journal") == "checkpoints-and-the-journal"
    assert _slug(" `capsched.sim`: the simulator") == "capschedsim-the-simulator"
    assert _slug(" PELT (`pelt.hpp`)") == "pelt-pelthpp"
    assert _slug(" util_est per request class") == "util_est-per-request-class"


# --------------------------------------------------------------------------- metrics


def test_every_exported_metric_is_in_operations_md() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from capsched import Device, InferenceRequest, Scheduler
    from capsched.metrics import RequestTimer, register

    s = Scheduler([Device("gpu0"), Device("gpu1", capacity=0.5)])
    s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    s.step(now=0.0)
    registry = CollectorRegistry()
    register(s, registry)
    RequestTimer(registry)
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    missing = []
    for family in registry.collect():
        name = family.name + {"counter": "_total", "info": "_info"}.get(family.type, "")
        if f"`{name}`" not in text:
            missing.append(name)
    assert missing == [], f"metrics exported but not described in docs/operations.md: {missing}"


def test_metrics_example_without_prometheus_client_says_what_to_install(tmp_path: Path) -> None:
    # examples/jobs_with_metrics.py guards its prometheus-client import with a one-line
    # message; capsched.metrics (which needs it too) must not be imported before the guard,
    # or a missing prometheus-client is an ImportError traceback instead.
    import os
    import subprocess

    shadow = tmp_path / "prometheus_client"
    shadow.mkdir()
    (shadow / "__init__.py").write_text('raise ImportError("No module named \'prometheus_client\'")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "jobs_with_metrics.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == 'this example needs prometheus-client: pip install "capsched[metrics]"'
