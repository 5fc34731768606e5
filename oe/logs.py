"""The daemon's log: one escaped line per message, with its level, to stderr or a file.

Under journald (systemd connects stderr to the journal and says so in $JOURNAL_STREAM) each
line starts with its syslog priority, `<6>` for info (sd-daemon(3)), and carries no time or pid:
the journal records both, so they would appear twice. Elsewhere (a terminal, oe.log with
`--daemon`) a line is "time oe[pid]: level: message". The messages themselves (the decision
lines) are the same in both.
"""

from __future__ import annotations

import logging
import os

from oe.logsafe import printable

LOG_LINE_MAX = 2000
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
# RFC 5424 section 6.2.1 severities, as sd-daemon(3) prefixes read them
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                   logging.CRITICAL: 2}
PLAIN_FORMAT = "%(asctime)s oe[%(process)d]: %(levelname)s: %(message)s"
JOURNAL_FORMAT = "<%(priority)d>%(levelname)s: %(message)s"


class _Printable(logging.Formatter):
    """Escape what peers and DNS put into log lines (IDs, reasons, names): no control
    character reaches the log, so none can forge a line or drive a terminal. A traceback's
    lines (an exception's text may come from a peer too) are escaped and indented, so none
    of them can pass for a line of its own."""

    def format(self, record: logging.LogRecord) -> str:
        record.msg = printable(record.getMessage(), limit=LOG_LINE_MAX)
        record.args = ()
        record.levelname = record.levelname.lower()
        record.priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        head, *rest = super().format(record).split("\n")
        return "\n".join([head] + ["    " + printable(line, LOG_LINE_MAX) for line in rest])


def under_journald(stream_fd: int = 2) -> bool:
    """Whether `stream_fd` is the journal stream systemd gave us: $JOURNAL_STREAM names its
    device and inode (systemd.exec(5)); a stderr redirected elsewhere does not match."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream_fd)
    except OSError:
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


_levels = {"pinned": None, "configured": logging.INFO}  # pinned: --log-level, over oe.conf's


def pin_level(name: str) -> None:
    """The command line's level: kept whatever oe.conf (or a reload of it) says."""
    _levels["pinned"] = LEVELS[name]
    _apply()


def set_level(name: str) -> None:
    """oe.conf's log_level, at start and on reload (unless the command line pinned one)."""
    _levels["configured"] = LEVELS[name]
    _apply()


def _apply() -> None:
    pinned = _levels["pinned"]
    logging.getLogger().setLevel(pinned if pinned is not None else _levels["configured"])


def log_to(handler: logging.Handler) -> None:
    """Send the daemon's log to `handler`, in the journal's format if it writes there."""
    stream = getattr(handler, "stream", None)
    journal = stream is not None and _fd_is_journal(stream)
    handler.setFormatter(_Printable(JOURNAL_FORMAT if journal else PLAIN_FORMAT))
    logging.getLogger().addHandler(handler)
    _apply()


def _fd_is_journal(stream) -> bool:
    try:
        return under_journald(stream.fileno())
    except (OSError, ValueError):  # a StringIO has no descriptor
        return False


__all__ = ["LEVELS", "log_to", "pin_level", "set_level", "under_journald"]
