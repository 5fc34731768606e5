"""A world that fails half-way through being built leaves no namespace behind."""

import os
import subprocess

import pytest

from oe.netns import NetnsError, World

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_failed_host_setup_cleans_up(tmp_path):
    before = namespaces()
    with pytest.raises(NetnsError, match="bad-address"):
        with World("oefail", tmp_path) as world:
            world.host("alice", "192.0.2.10/24")
            world.host("bob", "bad-address")
    assert namespaces() == before
