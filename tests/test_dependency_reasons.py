"""A failed request's error text in its dependents' reasons (the core's fail_dependents):
each dependent gets its own copy, so the text is cut to 256 bytes there, at a UTF-8
character boundary, marked ``[...]``."""

from __future__ import annotations

import capsched


def _chain(error: str, dependents: int = 3):
    s = capsched.Scheduler(["d0"], max_batch_size=8)
    root = s.submit(capsched.InferenceRequest(prompt_tokens=10, max_new_tokens=5), now=0.0)
    deps = [s.submit(capsched.InferenceRequest(prompt_tokens=10, max_new_tokens=5, depends_on=[root]), now=0.0)
            for _ in range(dependents)]
    grand = s.submit(capsched.InferenceRequest(prompt_tokens=10, max_new_tokens=5, depends_on=[deps[0]]), now=0.0)
    s.step(now=0.0)
    assert s.fail(root, retryable=False, error=error, now=0.1) is False
    failed = dict(s.step(now=0.2).failed)
    return root, deps, grand, failed


def test_a_short_error_is_passed_on_whole() -> None:
    root, deps, grand, failed = _chain("CUDA out of memory")
    for d in deps:
        assert failed[d].endswith(": CUDA out of memory") and f"dependency {root}" in failed[d]
    assert failed[grand].endswith(": CUDA out of memory") and f"request {root}" in failed[grand]


def test_a_long_error_is_cut_at_a_character_boundary() -> None:
    # 'é' is two bytes in UTF-8: 300 of them put byte 256 inside a character for one
    # of the two offsets tried, whichever the prefix's length.
    for pad in ("", "x"):
        error = pad + "é" * 300
        root, deps, grand, failed = _chain(error)
        for rid in (*deps, grand):
            reason = failed[rid]
            assert reason.endswith(" [...]"), reason[-40:]
            shown = reason.split(": ")[-1][: -len(" [...]")]  # (the error has no ": ")
            assert error.startswith(shown) and 0 < len(shown.encode()) <= 256
            assert len(shown.encode()) >= 255  # (cut at most one byte early)


def test_many_dependents_of_a_long_error_stay_small() -> None:
    root, deps, grand, failed = _chain("E" * 100_000, dependents=200)
    assert len(failed) == 201
    assert max(len(r) for r in failed.values()) < 400
