"""Pure modules import no I/O: no sockets, event loop, clock or select (docs/architecture.md section 2)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "oe"
IO_MODULES = {"socket", "asyncio", "time", "select", "selectors", "subprocess", "threading"}
# Modules whose job is I/O, by name (docs/architecture.md: net, tun, fetcher, unbound, loader,
# daemon, executor, runner, cli; routing and inbound talk to the kernel).
IO_NAMES = {"cli.py", "net.py", "tun.py", "daemon.py", "executor.py", "loader.py", "fetcher.py",
            "runner.py", "hostkey.py", "__main__.py", "demo.py", "control.py", "knotd.py",
            "netns.py", "routing.py", "inbound.py", "check.py", "unbound.py"}


# The decisions the daemon carries out (docs/architecture.md section 3): pure by name, so
# none of them can become I/O by accident.
DECIDING = {"opportunist.py", "lifecycle.py", "admission.py", "peerkeys.py", "routeplan.py",
            "delegations.py", "commands.py", "status.py"}


def test_the_deciding_modules_are_pure():
    assert all((ROOT / name).exists() for name in DECIDING)
    assert not DECIDING & IO_NAMES


def pure_modules():
    return sorted(p for p in ROOT.rglob("*.py") if p.name not in IO_NAMES)


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_no_io(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & IO_MODULES, f"{path.name} imports {imported & IO_MODULES}"


def test_the_path_mtu_search_and_ike_fragmentation_are_checked_as_pure():
    """Issue 17's sans-IO parts: the datapath and IKE engine feed them time and events."""
    names = {str(p.relative_to(ROOT)) for p in pure_modules()}
    assert {"pmtu.py", "ike/fragment.py"} <= names
