"""contrib/oe.service is a unit an operator can trust (issue 15): Type=notify, `oe check`
before start, three capabilities, and `systemd-analyze security` OK or better."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "oe.service"


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_checks_first_and_waits_for_readiness():
    unit = settings()
    assert unit["Type"] == ["notify"]
    assert unit["ExecStartPre"][0].endswith(" check")
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert unit["NoNewPrivileges"] == ["yes"] and "AmbientCapabilities" not in unit
    assert unit["ProtectSystem"] == ["strict"] and unit["SystemCallFilter"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_rates_it_ok():
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    score = float(re.search(r"exposure level for oe.service: ([\d.]+)", proc.stdout)[1])
    assert score <= 2.1, proc.stdout[-300:]
