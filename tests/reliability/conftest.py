"""Fixtures of the reliability suite (the shared ones come from ``tests/conftest.py``)."""

from netns import netns_pod  # noqa: F401


def pytest_sessionfinish(session, exitstatus):
    import figures

    figures.write()
