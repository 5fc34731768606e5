"""The `oe` command: argument parsing and output formatting only.

Each command is a thin `cmd_<name>(args) -> int` over the library. Every error is one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path

from oe import check, control, dnskeys, hostkey, logs, net
from oe.config import load as load_config
from oe.dnskeys import records as dnsrecords
from oe.dnskeys.delegation import check_client
from oe.dnskeys.fetcher import KeyFetcher, unanswered
from oe.config import DEFAULT_CONFDIR, DEFAULT_RUNDIR
from oe.eroute import (
    PORT_PROTOCOLS, PROTOCOL_NAMES, Eroute, ErouteTable, Selector, port_number, protocol_number,
)
from oe.errors import OeError
from oe.policygroups import SEMANTICS, prospective_table
from oe.policygroups.loader import load_policy


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit status 2 (main() adds "oe: ")."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if "unrecognized arguments" in message and ("--confdir" in message
                                                    or "--rundir" in message):
            message += " (--confdir and --rundir go before the command)"
        command = self.prog.removeprefix("oe").strip()
        raise OeError(f"{command}: {message}" if command else message)


def _warn(message: str) -> None:
    print(f"oe: warning: {message}", file=sys.stderr)


def _print_json(data) -> None:
    print(json.dumps(data, indent=2))


# ---------------------------------------------------------------- policy, trace, status


def _load_table(args) -> ErouteTable:
    policy = load_policy(args.confdir)
    for warning in policy.warnings:
        _warn(warning)
    return prospective_table(policy)


def _selector_json(selector: Selector) -> dict:
    return {
        "src": str(selector.src),
        "dst": str(selector.dst),
        "proto": selector.proto,
        "sport": selector.sport,
        "dport": selector.dport,
    }


def _prio_text(selector: Selector) -> str:
    """FreeS/WAN shows priority as "srcbits,dstbits"; narrowing is added as +proto/+ports."""
    text = f"{selector.src.prefixlen},{selector.dst.prefixlen}"
    narrowing = [n for n, on in (("proto", selector.proto), ("sport", selector.sport),
                                 ("dport", selector.dport)) if on]
    return text + "".join(f"+{n}" for n in narrowing)


def cmd_policy(args) -> int:
    table = _load_table(args)
    # Listed in group then file order, the way the user wrote them.
    policy_entries = sorted(table.entries, key=lambda e: (e.origin.split(":")[0],
                                                         int(e.origin.split(":")[1])))
    if args.json:
        _print_json([
            {
                "group": e.group,
                "selector": _selector_json(e.selector),
                "text": str(e.selector),
                "action": str(e.action),
                "origin": e.origin,
                "priority": e.selector.priority,
                "prio": _prio_text(e.selector),
            }
            for e in policy_entries
        ])
        return 0
    if not policy_entries:
        print(f"no policy: {args.confdir}/policies holds no entries")
        return 0
    print(f"{'group':<17} {'selector':<40} {'action':<8} {'prio':<14} origin")
    for e in policy_entries:
        print(f"{e.group:<17} {str(e.selector):<40} {str(e.action):<8} "
              f"{_prio_text(e.selector):<14} {e.origin}")
    return 0


def _address(text: str, what: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise OeError(f"{what}: '{text}' is not an IPv4 or IPv6 address") from None


def _proto(text: str) -> int:
    proto = protocol_number(text)
    if proto is None:
        raise argparse.ArgumentTypeError(f"bad protocol '{text}' (a name such as tcp, or 0-255)")
    return proto


def _port(text: str) -> int:
    port = port_number(text)
    if port is None:
        raise argparse.ArgumentTypeError(f"bad port '{text}' (0-65535)")
    return port


def cmd_trace(args) -> int:
    dst = _address(args.dst, "DST")
    if args.src is not None:
        src = _address(args.src, "--src")
    else:
        found = net.route_source(str(dst))  # what an application's packet would carry
        src = ipaddress.ip_address(found) if found else Selector.any_source(dst.version)[0]
    if src.version != dst.version:
        raise OeError(f"--src {src} and DST {dst} are not the same address family")
    if (args.sport or args.dport) and args.proto not in PORT_PROTOCOLS:
        raise OeError("--sport and --dport need --proto tcp, udp or sctp (as policy files do)")
    table = _load_table(args)
    matches = table.matches(src, dst, args.proto, args.sport, args.dport)
    best: Eroute | None = matches[0] if matches else None
    if best is None:
        why = "no policy group covers the destination: not steered into oe, sent in clear"
        action, failure = "%pass", None
    else:
        semantics = SEMANTICS[best.group]
        action = str(best.action)
        failure = str(semantics.failure) if semantics.failure else None
        why = f"most specific of {len(matches)} matching entr{'y' if len(matches) == 1 else 'ies'}"
        if len(matches) > 1:
            others = ", ".join(f"{e.origin} ({e.selector}, prio {_prio_text(e.selector)})"
                               for e in matches[1:])
            why += f"; less specific: {others}"
    result = {
        "src": str(src),
        "dst": str(dst),
        "proto": args.proto,
        "sport": args.sport,
        "dport": args.dport,
        "group": best.group if best else None,
        "action": action,
        "failure": failure,
        "inbound_oe": SEMANTICS[best.group].inbound_oe if best else False,
        "match": str(best.selector) if best else None,
        "origin": best.origin if best else None,
        "priority": best.selector.priority if best else None,
        "why": why,
    }
    if args.json:
        _print_json(result)
        return 0
    packet = f"{src} -> {dst}"
    if args.proto:
        packet += f" {PROTOCOL_NAMES.get(args.proto, args.proto)} {args.sport} -> {args.dport}"
    print(f"packet  {packet}")
    print(f"group   {result['group'] or '(none)'}")
    print(f"action  {action}" + (f" (on failure {failure})" if failure else ""))
    if best:
        print(f"match   {best.selector}  prio {_prio_text(best.selector)}")
        print(f"origin  {best.origin}")
        print(f"inbound OE {'accepted' if result['inbound_oe'] else 'refused'}")
    print(f"why     {why}")
    return 0


def cmd_status(args) -> int:
    from oe.status import ErouteStatus, Status, render, render_brief

    if control.daemon_running(args.rundir):
        status = Status.from_json({**control.request(args.rundir, "status"), "daemon": True})
    else:
        # No daemon: the prospective table, what `oe start` would install.
        status = Status(daemon=False, eroutes=[ErouteStatus(**e.as_json())
                                               for e in _load_table(args).entries])
    if args.json:
        _print_json(status.to_json())
    elif args.brief:
        print(render_brief(status))
    else:
        print(render(status, str(args.confdir)))
    return 0


# ---------------------------------------------------------------- the daemon


def _checks(args, on_host: bool) -> check.Report:
    """oe check's findings; the host's part only where the files allow it (issue 15)."""
    report = check.files(args.confdir)
    if on_host and report.config is not None:
        report.problems += check.host(report.config, running=_oe_runs_here(args.rundir),
                                      origin=report.origin)
    return report


def _oe_runs_here(rundir: Path) -> bool:
    try:
        control.lock_namespace(rundir).close()
    except control.InstanceError:
        return True
    return False


def _refuse(problems: list[str]) -> int:
    for problem in problems:
        print(f"oe: {problem}", file=sys.stderr)
    return 2


def cmd_check(args) -> int:
    report = _checks(args, on_host=True)
    if report.problems:
        return _refuse(report.problems)
    print(check.summary(report))
    return 0


def cmd_start(args) -> int:
    report = _checks(args, on_host=True)  # before anything is touched, or forked (--daemon)
    if report.problems:
        return _refuse(report.problems)
    logs.set_level(report.config.log_level)
    if args.log_level or args.verbose:
        logs.pin_level(args.log_level or "debug")
    from oe import daemon  # the daemon's imports (datapath threads, pyroute2) only when needed

    return daemon.start(args.confdir, args.rundir, background=args.daemon)


STOP_WAIT = 30.0  # seconds `oe stop` waits for the daemon's DELETEs and clean-up


def cmd_stop(args) -> int:
    """Ask the daemon to stop, and wait until it is gone (its pid file goes last), so what
    follows (`oe start`, a ping) sees the routes as the daemon left them."""
    pid_file = control.pid_path(args.rundir)
    print(control.request(args.rundir, "stop", flush=args.flush))
    deadline = time.monotonic() + STOP_WAIT
    while pid_file.exists():
        if time.monotonic() > deadline:
            raise OeError(f"the oe daemon did not exit within {STOP_WAIT:g} s ({pid_file} "
                          f"is still there)")
        time.sleep(0.05)
    return 0


def cmd_flush(args) -> int:
    """Without a daemon: remove the fail-closed state a stop or a crash left on purpose."""
    from oe import inbound, routing

    config = load_config(args.confdir)
    try:  # no oe may run, or start, while its state is taken away
        held = control.lock_namespace(args.rundir)
    except control.InstanceError as exc:
        raise OeError(f"{exc}; `oe stop --flush` stops it and removes its state") from None
    with held:
        removed = routing.flush(config.route_table, config.rule_priority, config.tun_name)
        inbound.stop(keep_private=False)
        # forwarding a crashed gateway left on (docs/gateway.md 8)
        restored = routing.restore_forwarding(args.rundir / routing.FORWARDING_RECORD)
    print(f"removed rule {config.rule_priority}, {len(removed)} routes of table "
          f"{config.route_table} and nftables table {inbound.TABLE}: private destinations "
          f"are no longer failed closed")
    if restored:
        print(f"restored {', '.join(restored)}")
    return 0


def cmd_reload(args) -> int:
    print(control.request(args.rundir, "reload"))
    return 0


def cmd_initiate(args) -> int:
    """Ask the daemon to negotiate (it refuses, with the reason, when nothing would happen),
    then wait for the outcome: a CHILD SA with DST, or the group's failure shunt."""
    print(control.request(args.rundir, "initiate", dst=args.dst, src=args.src), flush=True)
    if args.wait <= 0:
        return 0
    dst = str(ipaddress.ip_address(args.dst))  # the daemon accepted it: an address
    deadline = time.monotonic() + args.wait
    while True:
        status = control.request(args.rundir, "status")
        sa = next((s for s in status["sas"] if s["dst"] == dst), None)
        if sa is not None:
            print(f"OE with {dst} is up: {sa['said']} {sa['algorithm']} {sa['encap']}")
            return 0
        shunt = next((s for s in status["shunts"]
                      if s["dst"] == dst and s["expires_in"] is not None), None)
        if shunt is not None:
            raise OeError(f"OE with {dst} failed: {shunt['reason']}; {shunt['said']} for "
                          f"{shunt['expires_in']:g} s")
        if time.monotonic() > deadline:
            raise OeError(f"OE with {dst}: still negotiating after {args.wait:g} s "
                          f"(`oe status` shows its %hold)")
        time.sleep(0.25)


def cmd_demo(args) -> int:
    from oe import demo

    return demo.main(keep=args.keep)


# ------------------------------------------------ DNS keys: keygen, showhostkey, dnskey, verify


def _own_address(args) -> str:
    """--address, else this host's source address on the default route (IPv4 first)."""
    if args.address is not None:
        return str(_address(args.address, "--address"))
    for version in (4, 6):
        found = net.default_source(version)
        if found:
            return found
    raise OeError("cannot tell this host's address (no default route); give --address")


def cmd_keygen(args) -> int:
    path = hostkey.hostkey_path(args.confdir)
    blob = hostkey.public_blob(hostkey.keygen(path, args.bits, args.force))
    result = {"path": str(path), "bits": args.bits, "key_id": dnsrecords.key_id(blob),
              "sha256": dnsrecords.fingerprint(blob)}
    if args.json:
        _print_json(result)
    else:
        print(f"wrote {path}: RSA {args.bits} bits, key id {result['key_id']}, "
              f"{result['sha256']}")
    return 0


def cmd_showhostkey(args) -> int:
    blob = hostkey.public_blob(hostkey.load(hostkey.hostkey_path(args.confdir)))
    kind = args.kind
    try:
        owner = dnskeys.Target.parse(args.owner or _own_address(args))
        gateway = dnsrecords.parse_gateway(args.gateway) if args.gateway else None
        if kind == dnsrecords.TXT and gateway is None:
            gateway = owner.self_gateway  # X-IPsec-Server always names one: the owner's host
        lines = dnsrecords.publication(kind, blob, owner.name, gateway, args.precedence)
    except ValueError as exc:
        raise OeError(f"showhostkey --{kind.lower()}: {exc}") from None
    print("\n".join(lines))
    return 0


def _lookup_text(lookup: dnskeys.KeyLookup) -> list[str]:
    """A found key, one field a line (a lookup without one is an error line instead)."""
    data = lookup.as_json()
    return [f"target   {data['target']}",
            f"name     {data['name']}",
            f"source   {data['source']}  {data['record']}",
            f"gateway  {data['gateway']}",
            f"key id   {data['key_id']}  ({data['bits']} bits, {data['sha256']})",
            f"ttl      {data['ttl']} s",
            f"why      {data['why']}",
            f"dnssec   {data['dnssec']}"]


def cmd_dnskey(args) -> int:
    config = load_config(args.confdir)
    fetcher = KeyFetcher.from_config(config.dns, args.confdir)
    lookup = asyncio.run(fetcher.fetch(args.target))
    if args.json:
        _print_json(lookup.as_json())
    elif lookup.error is None:
        print("\n".join(_lookup_text(lookup)))
    if lookup.error is not None:
        raise OeError(f"{lookup.verdict.value}: {lookup.error}")
    return 0


def cmd_verify(args) -> int:
    blob = hostkey.public_blob(hostkey.load(hostkey.hostkey_path(args.confdir)))
    config = load_config(args.confdir)
    fetcher = KeyFetcher.from_config(config.dns, args.confdir)
    if args.client:
        return _verify_clients(args, config, fetcher, blob)
    lookup = asyncio.run(fetcher.fetch(_own_address(args)))
    if unanswered(lookup):  # issue 15, 8: no answer is not "no key published"
        raise OeError(f"cannot verify: {lookup.error}")
    problems = dnskeys.check_own(lookup, blob)
    if args.json:
        _print_json({**lookup.as_json(), "hostkey_key_id": dnsrecords.key_id(blob),
                     "problems": problems})
    elif not problems:
        print(f"ok: {lookup.target.name} publishes hostkey.pem's key {lookup.key_id} "
              f"({lookup.key.bits} bits) in {lookup.record.kind}, gateway "
              f"{dnsrecords.gateway_text(lookup.gateway)} (dnssec {lookup.dnssec})")
        advice = dnskeys.dnssec_advice(lookup)
        if advice is not None:  # issue 12: what an unsigned own record costs, and the fix
            print(f"note: {advice}")
    for problem in problems:
        print(f"oe: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _our_addresses(args, config) -> list[str]:
    """The addresses a client's record may name as its gateway: --address, else the daemon's
    (oe.conf addresses, else the host's global ones)."""
    if args.address is not None:
        return [str(_address(args.address, "--address"))]
    found = net.host_addresses(config.addresses, config.tun_name)
    return [address for family in found.values() for address in family]


def _verify_client(client, lookup: dnskeys.KeyLookup, ours: list[str], blob: bytes,
                   subnets: tuple[str, ...]) -> tuple[bool, list[str]]:
    """Whether `client` lies in [gateway] subnets, and what is wrong with its record as our
    client's (docs/gateway.md 3, 6); [] if all right."""
    if unanswered(lookup):  # issue 15, 8: no answer is not "no record delegates us"
        problems = [f"cannot verify {client}: {lookup.error}"]
    else:
        why = check_client(lookup, ours, blob)
        problems = [] if why is None else [why]
    in_subnets = any(client in ipaddress.ip_network(s) for s in subnets)
    if not in_subnets:
        problems.append(f"{client} is not in [gateway] subnets: oe will not act for it")
    return in_subnets, problems


def _verify_clients(args, config, fetcher: KeyFetcher, blob: bytes) -> int:
    """`oe verify --client C`: C's record delegates to one of our addresses with our key."""
    clients = [_address(c, "--client") for c in args.client]
    ours = _our_addresses(args, config)

    async def fetch_all():
        return await asyncio.gather(*(fetcher.fetch(str(c)) for c in clients))

    results, failed = [], False
    for client, lookup in zip(clients, asyncio.run(fetch_all())):
        in_subnets, problems = _verify_client(client, lookup, ours, blob,
                                              config.gateway.subnets)
        failed = failed or bool(problems)
        results.append({**lookup.as_json(), "client": str(client), "in_subnets": in_subnets,
                        "hostkey_key_id": dnsrecords.key_id(blob), "problems": problems})
        if not args.json and not problems:
            print(f"ok: {lookup.target.name} delegates to "
                  f"{dnsrecords.gateway_text(lookup.gateway)} with hostkey.pem's key "
                  f"{lookup.key_id} (dnssec {lookup.dnssec})")
            advice = dnskeys.dnssec_advice(lookup, delegation=True)
            if advice is not None:
                print(f"note: {advice}")
        for problem in problems:
            print(f"oe: {problem}", file=sys.stderr)
    if args.json:
        _print_json(results)
    return 2 if failed else 0


# ---------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="oe", description="Opportunistic Encryption (IKEv2 + ESP) for this host.")
    parser.add_argument("--confdir", type=Path, default=DEFAULT_CONFDIR,
                        help=f"configuration directory (default {DEFAULT_CONFDIR})")
    parser.add_argument("--rundir", type=Path, default=DEFAULT_RUNDIR,
                        help=f"run directory for the control socket (default {DEFAULT_RUNDIR})")
    parser.add_argument("--version", action="version", version=f"oe {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("policy", help="list the loaded policy groups")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("trace", help="say which group and action apply to a packet, and why")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--src", help="source address (default: this host's on the default route)")
    p.add_argument("--proto", type=_proto, default=0, help="protocol name or number")
    p.add_argument("--sport", type=_port, default=0)
    p.add_argument("--dport", type=_port, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("status", help="show the eroute table, SAs and shunts")
    p.add_argument("--json", action="store_true")
    p.add_argument("--brief", action="store_true",
                   help="one line per peer: state, SAs, algorithm, last use, bytes")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("start", help="run the OE daemon (in the foreground unless --daemon)")
    p.add_argument("--daemon", action="store_true",
                   help="detach once running; log to <rundir>/oe.log")
    p.add_argument("--log-level", choices=list(logs.LEVELS),
                   help="least level logged (default: oe.conf's log_level, info)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("check", help="check oe.conf, policies, host key and this host as oe "
                                     "start would: one line per problem")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("stop", help="stop the daemon: DELETE every SA, remove routes and TUN "
                                    "(a private group's stay failed closed)")
    p.add_argument("--flush", action="store_true",
                   help="also remove the fail-closed routes, rule and inbound drop")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("flush", help="no daemon running: remove the fail-closed routes, rule "
                                     "and inbound drop that oe stop (or a crash) left")
    p.set_defaults(func=cmd_flush)
    p = sub.add_parser("reload", help="re-read policy groups and oe.conf (all or nothing)")
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser("initiate", help="negotiate OE with DST now, ignoring a failure shunt")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--src", help="our address (default: the daemon's)")
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the outcome (default 30; 0: do not wait)")
    p.set_defaults(func=cmd_initiate)
    p = sub.add_parser("demo", help="alice, bob and carol in namespaces: OE shown working")
    p.add_argument("--keep", action="store_true", help="leave the world up until Ctrl-C")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("keygen", help="make this host's RSA key (<confdir>/hostkey.pem)")
    p.add_argument("--bits", type=int, default=hostkey.DEFAULT_BITS,
                   help=f"modulus length (default {hostkey.DEFAULT_BITS}, "
                        f"minimum {hostkey.MIN_BITS})")
    p.add_argument("--force", action="store_true", help="replace an existing hostkey.pem")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("showhostkey", help="print the DNS record that publishes hostkey.pem")
    kinds = p.add_mutually_exclusive_group(required=True)
    for kind in dnsrecords.KINDS:
        kinds.add_argument(f"--{kind.lower()}", dest="kind", action="store_const", const=kind,
                           help=f"a {kind} record")
    p.add_argument("--gateway", metavar="ADDR|@FQDN",
                   help="gateway to name (IPSECKEY: none by default; TXT: the owner's host)")
    p.add_argument("--precedence", type=int, help="lower is preferred (default 10)")
    p.add_argument("--owner", metavar="NAME",
                   help="owner name, or an address for its reverse name (default: ours)")
    p.add_argument("--address", help="this host's address (default: on the default route)")
    p.set_defaults(func=cmd_showhostkey)

    p = sub.add_parser("dnskey", help="fetch the key a target publishes in DNS, and say why")
    p.add_argument("target", metavar="TARGET", help="IPv4/IPv6 address or domain name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dnskey)

    p = sub.add_parser("verify", help="check that DNS publishes hostkey.pem for our address, "
                                      "or that a client's record delegates to us")
    p.add_argument("--address", help="our address (default: on the default route; with "
                                     "--client: the daemon's addresses)")
    p.add_argument("--client", action="append", metavar="C",
                   help="check C's record instead: it names us as gateway with hostkey.pem's "
                        "key, and C is in [gateway] subnets (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    return parser


def _version() -> str:
    try:
        return metadata.version("oe")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except OeError as exc:
        print(f"oe: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --version and --help: argparse printed them
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line (OE_DEBUG=1 shows the traceback)
        if os.environ.get("OE_DEBUG"):
            raise
        print(f"oe: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
