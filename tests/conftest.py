"""SIGTERM ends a test run as Ctrl-C does: pytest then tears down the running test's fixtures,
so namespaces, daemons and captures are removed on SIGTERM too, not only on failure (tests
that build namespaces without oe.netns.World rely on their fixtures for that)."""

import signal


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def pytest_configure(config):
    signal.signal(signal.SIGTERM, _interrupt)
