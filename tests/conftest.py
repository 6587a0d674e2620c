"""Shared pytest configuration for capsched's tests."""


def pytest_configure(config):
    # On a failure Hypothesis writes a patch of explicit examples (.hypothesis/patches/)
    # with libcst, whose import of mypy_extensions emits a DeprecationWarning. Under the
    # project's filterwarnings = ["error"] that warning crashes pytest's report and hides
    # the real failure, so let it pass.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning",
    )
