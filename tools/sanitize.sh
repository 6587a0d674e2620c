#!/usr/bin/env bash
# Build capsched's extension with sanitizers and run the core's tests against it.
#
#   tools/sanitize.sh            # AddressSanitizer + UndefinedBehaviorSanitizer (CI runs this)
#   tools/sanitize.sh thread     # ThreadSanitizer, on the threaded tests only
#
# The extension is built from this checkout into build/sanitize-<mode>/ (a wheel, unpacked
# into site/), never into the environment's own install; tools/sanitized_pytest.py puts it
# ahead of any installed or editable capsched and checks that it is the one imported.
# Needs GCC (its sanitizer runtimes are shared libraries the extension links to), the
# active Python with the test dependencies (pytest, hypothesis, numpy) and pip; the build
# runs in pip's isolated environment unless scikit-build-core and pybind11 are importable.
#
# Fails (exit != 0) on a failed build, a failed or empty test run (pytest exit 5), or any
# sanitizer report in the log, even one that did not change the exit status.
# Environment: CAPSCHED_SANITIZE_DIR (output dir), CAPSCHED_PROPERTY_SCALE (Hypothesis
# example counts; default 0.3 here), PYTEST_ADDOPTS (extra pytest arguments),
# CAPSCHED_SANITIZE_TESTS (space-separated test paths instead of the default subset).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-address}"
case "$mode" in
  address) san="address,undefined" ;;
  thread) san="thread" ;;
  *) echo "usage: $0 [address|thread]" >&2; exit 2 ;;
esac
out="${CAPSCHED_SANITIZE_DIR:-build/sanitize-$mode}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/pytest.log"
py="${PYTHON:-python}"

echo "== building the extension with -fsanitize=$san into $out" >&2
isolation=()
if "$py" -c "import scikit_build_core, pybind11" 2>/dev/null; then
  isolation=(--no-build-isolation)
fi
rm -rf "$out/wheel" "$out/site"
# The CI's CAPSCHED_WERROR define would be replaced by ours; -O1 with sanitizer
# instrumentation can raise warnings the normal build does not, so this build keeps them
# as warnings. CAPSCHED_DEBUG turns on the core's internal assertions.
env -u SKBUILD_CMAKE_DEFINE "$py" -m pip wheel . --no-deps --quiet "${isolation[@]}" -w "$out/wheel" \
  -C build-dir="$out/build" \
  -C cmake.build-type=Debug \
  -C cmake.define.CAPSCHED_SANITIZE="$san" \
  -C cmake.define.CAPSCHED_DEBUG=ON
"$py" -m zipfile -e "$out"/wheel/capsched-*.whl "$out/site"
so="$(ls "$out"/site/capsched/_core*.so)"

# The runtimes the extension was linked against; CPython itself is not instrumented, so
# they must be preloaded (ASan insists on coming first in the process's library list).
preload="$(ldd "$so" | awk '/lib(asan|ubsan|tsan)\.so/ {print $3}' | paste -sd: -)"
if [ -z "$preload" ]; then
  echo "no sanitizer runtime linked into $so (GCC is needed: Clang links none into shared objects)" >&2
  exit 1
fi
echo "== preloading $preload" >&2

if [ -n "${CAPSCHED_SANITIZE_TESTS:-}" ]; then
  read -r -a tests <<<"$CAPSCHED_SANITIZE_TESTS"
elif [ "$mode" = address ]; then
  tests=(tests/test_heap.py tests/test_scheduling.py tests/test_placement.py tests/test_batching.py
         tests/test_pelt.py tests/test_fast_path.py tests/test_bad_input.py tests/test_reference_properties.py
         tests/test_threads.py tests/test_stress.py tests/test_fuzz_regressions.py tests/test_fuzz_smoke.py
         tests/test_placement_heaps.py tests/test_checkpoint.py tests/test_checkpoint_columns.py
         tests/test_free_slots_array.py)
else
  tests=(tests/test_stress.py tests/test_threads.py)
fi

# detect_leaks=0: CPython does not free everything at exit (interned objects, static
# types, module state), so LeakSanitizer would report the interpreter, not capsched.
# PYTHONMALLOC=malloc: Python objects come from malloc instead of pymalloc's arenas, so
# ASan also sees the extension misusing memory that Python objects live in.
# report_path is left unset so that reports go to stderr, into the log grepped below.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:allocator_may_return_null=1:detect_stack_use_after_return=0:strict_init_order=1:check_initialization_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87"
export TSAN_OPTIONS="halt_on_error=1:exitcode=88:second_deadlock_stack=1:suppressions=$PWD/tools/tsan.supp"
export PYTHONMALLOC=malloc
export CAPSCHED_PROPERTY_SCALE="${CAPSCHED_PROPERTY_SCALE:-0.3}"

# ThreadSanitizer needs a memory layout that high mmap randomisation (newer kernels'
# vm.mmap_rnd_bits) can break ("FATAL: ThreadSanitizer: unexpected memory mapping"):
# run it with address-space randomisation off where setarch can do that.
launch=()
if [ "$mode" = thread ] && command -v setarch >/dev/null && setarch "$(uname -m)" -R true 2>/dev/null; then
  launch=(setarch "$(uname -m)" -R)
fi

# The set-up must catch a known bug before a clean run may count as clean.
if [ "$mode" = address ]; then
  canary_script=tools/asan_canary.py canary_code=86 canary_text="ERROR: AddressSanitizer: heap-use-after-free"
else
  canary_script=tools/tsan_canary.py canary_code=88 canary_text="WARNING: ThreadSanitizer: data race"
fi
set +e
canary="$("${launch[@]}" env LD_PRELOAD="$preload" "$py" "$canary_script" 2>&1)"
crc=$?
set -e
if [ "$crc" -ne "$canary_code" ] || ! grep -q "$canary_text" <<<"$canary"; then
  echo "$canary" >&2
  echo "the $mode canary ($canary_script) was not caught (exit $crc): the sanitizer set-up is broken" >&2
  exit 1
fi
echo "== $mode canary caught (exit $crc): the runtime is live" >&2

echo "== running ${#tests[@]} test files under $mode sanitizers; log: $log" >&2
set +e
# The atheris run is a subprocess with its own libFuzzer runtime: not under the sanitizers.
"${launch[@]}" env LD_PRELOAD="$preload" "$py" tools/sanitized_pytest.py "$out/site" \
  "${tests[@]}" -q -p no:cacheprovider --benchmark-disable \
  --deselect tests/test_fuzz_smoke.py::test_a_bounded_atheris_run_finds_nothing 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

if grep -E -n "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer|ThreadSanitizer: reported|SUMMARY: (Address|UndefinedBehavior|Thread)Sanitizer" "$log" >&2; then
  echo "sanitizer reports found (above; full log: $log)" >&2
  exit 1
fi
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  echo "the tests failed under $mode sanitizers (exit $rc; log: $log)" >&2
  exit "$rc"
fi
echo "== $mode sanitizers: clean" >&2
