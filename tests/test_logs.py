"""The daemon's log (issue 15, logging): the level in every line, syslog priorities and no
second timestamp under journald, the message itself unchanged and escaped."""

import io
import logging
import os

import pytest

from oe import logs


@pytest.fixture
def logger():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield logging.getLogger("oe")
    root.setLevel(level)
    root.handlers[:] = handlers
    logs._levels.update(pinned=None, configured=logging.INFO)


def test_lines_carry_time_pid_and_level(logger):
    handler = logging.StreamHandler(io.StringIO())
    logs.log_to(handler)
    logger.warning("nameserver %s is a local stub", "127.0.0.1")
    line = handler.stream.getvalue()
    assert line.endswith(f" oe[{os.getpid()}]: warning: nameserver 127.0.0.1 is a local stub\n")
    assert line[:4].isdigit()


def test_under_journald_lines_start_with_the_syslog_priority_and_no_time(logger, tmp_path,
                                                                        monkeypatch):
    """journald stamps time and pid itself; `<N>` sets the entry's priority (sd-daemon(3))."""
    with open(tmp_path / "journal", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        logs.log_to(logging.StreamHandler(stream))
        logger.info("OE to 192.0.2.20 up")
        logger.error("reload refused: bad\nline")
        logger.debug("not shown at info")
    assert (tmp_path / "journal").read_text() == ("<6>info: OE to 192.0.2.20 up\n"
                                                  "<3>error: reload refused: bad\\x0aline\n")


def test_a_stream_that_is_not_the_journal_keeps_the_plain_format(logger, tmp_path,
                                                                 monkeypatch):
    """`oe start --daemon` under systemd: stderr is oe.log, not the journal stream."""
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    with open(tmp_path / "oe.log", "w") as stream:
        logs.log_to(logging.StreamHandler(stream))
        logger.info("oe started")
    assert f"oe[{os.getpid()}]: info: oe started" in (tmp_path / "oe.log").read_text()


def test_the_command_line_level_wins_over_oe_conf(logger):
    logs.set_level("warning")
    assert logging.getLogger().level == logging.WARNING
    logs.pin_level("debug")
    logs.set_level("error")  # a reload of oe.conf
    assert logging.getLogger().level == logging.DEBUG
