"""Fixtures of the reliability suite (the shared ones come from ``tests/conftest.py``)."""

from netns import netns_pod  # noqa: F401


def pytest_sessionfinish(session, exitstatus):
    import figures

    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: the controller writes
        session.config.workeroutput["reliability_figures"] = figures.TALLY
    else:
        figures.write()
