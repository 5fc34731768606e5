"""Worlds of namespaces leave nothing behind: not when building one fails half-way, not when
their owner (`oe demo`, a test run) is ended by SIGTERM as by Ctrl-C."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from oe.netns import NetnsError, World, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

WORKTREE = Path(__file__).resolve().parent.parent


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


def start_until(argv: list[str], pattern: str, timeout: float) -> tuple[subprocess.Popen, str]:
    """Start argv and read its output until a line matches pattern; (process, first group)."""
    proc = subprocess.Popen(argv, cwd=WORKTREE, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] and None,
                     daemon=True).start()
    seen = []
    try:
        while True:
            line = lines.get(timeout=timeout)
            seen.append(line)
            if match := re.search(pattern, line):
                return proc, match.group(1)
    except queue.Empty:
        proc.kill()
        proc.wait()
        pytest.fail(f"{argv} never printed {pattern!r}: {''.join(seen)[-800:]}")


def pids_in(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def alive(pid: int) -> bool:
    """Running or a zombie: /proc still has it."""
    return Path(f"/proc/{pid}").exists()


def test_world_owner_ended_by_sigterm_tears_its_world_down(tmp_path):
    script = ("import sys, time; from pathlib import Path; from oe.netns import World\n"
              "with World('oeterm', Path(sys.argv[1])) as world:\n"
              "    world.spawn(world.host('alice', '192.0.2.10/24'), 'sleep', '600')\n"
              "    print('up', world.prefix, flush=True); time.sleep(600)\n")
    proc, prefix = start_until([sys.executable, "-c", script, str(tmp_path)], r"^up (\S+)", 30)
    # `ip netns exec` enters the namespace a moment after the script says "up"
    assert wait_for(lambda: pids_in(f"{prefix}-alice"), 10)
    [sleeper] = pids_in(f"{prefix}-alice")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) != 0
    assert not {ns for ns in namespaces() if ns.startswith(f"{prefix}-")}
    assert not alive(sleeper)


def test_oe_demo_keep_ended_by_sigterm_tears_down():
    proc, prefix = start_until([sys.executable, "-m", "oe", "demo", "--keep"],
                               r"namespaces (\S+)-\*\); Ctrl-C or SIGTERM ends it", 180)
    [knotd] = pids_in(f"{prefix}-dns")
    daemons = pids_in(f"{prefix}-alice") + pids_in(f"{prefix}-bob")
    assert daemons
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert not {ns for ns in namespaces() if ns.startswith(f"{prefix}-")}
    assert not alive(knotd), f"knotd {knotd} is still there"
    assert not any(alive(pid) for pid in daemons)


def test_interrupted_while_knotd_starts_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, which becomes one) while demo.build waits for knotd to serve."""
    from oe import demo

    seen: dict[str, list[int]] = {}

    def interrupted(world, host):
        dns = f"{world.prefix}-dns"
        wait_for(lambda: bool(pids_in(dns)), 20)
        seen["knotd"] = pids_in(dns)
        seen["prefix"] = world.prefix
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_serves", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.build(tmp_path)
    assert seen["knotd"] and not any(alive(pid) for pid in seen["knotd"])
    assert not {ns for ns in namespaces() if ns.startswith(f"{seen['prefix']}-")}
