"""The OE decisions (oe.opportunist), driven in memory: acquire -> key -> IKE -> SA or shunt."""

import ipaddress

import pytest

from oe.dnskeys.choice import KeyLookup, Target, Verdict, not_capable
from oe.eroute import SaAction, Shunt
from oe.commands import DeleteChild, DeleteIke, FetchKey, Initiate
from oe.flows import Pair, child_flow
from oe.opportunist import Limits, Opportunist
from oe.policygroups import combine, parse_group, prospective_table

ME = "192.0.2.10"


def opportunist(limits=Limits(), **groups):
    parsed = [parse_group(g.replace("_", "-"), text, f"policies/{g}") for g, text in groups.items()]
    return Opportunist(prospective_table(combine(parsed)), limits)


def fate(oe, dst, src=ME):
    """The action the current table gives a packet from src to dst (None: no eroute)."""
    table = oe.table()
    index = table.lookup(ipaddress.ip_address(src), ipaddress.ip_address(dst))
    return None if index is None else table.entries[index].action


def key(dst, gateway=None, verdict=Verdict.KEY, error=None):
    target = Target.parse(dst)
    return KeyLookup(target, verdict, gateway=ipaddress.ip_address(gateway or dst), error=error)


def test_acquire_holds_and_fetches_the_key_once():
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    pair = Pair.of(ME, "192.0.2.20")
    assert oe.acquire(pair, now=0) == [FetchKey(pair, "192.0.2.20")]
    assert fate(oe, "192.0.2.20") is Shunt.HOLD
    assert fate(oe, "192.0.2.21") is Shunt.TRAP          # only the pair is held
    assert oe.acquire(pair, now=0.1) == []               # one negotiation per pair


def test_key_then_tunnel_replaces_the_hold_with_the_sa():
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    pair = Pair.of(ME, "192.0.2.20")
    oe.acquire(pair, 0)
    assert oe.key_found(pair, key("192.0.2.20"), 0.2) == [
        Initiate(pair, ipaddress.ip_address("192.0.2.20"))]
    commands = oe.tunnel_up(pair, ipaddress.ip_address("192.0.2.20"), sa_id=1, spi_in=0x1001,
                            spi_out=0xc0de, algorithm="AES_GCM_16_128", udp_encap=False,
                            initiator=True, now=0.5, sa_out=7)
    assert commands == []
    assert fate(oe, "192.0.2.20") == SaAction(ipaddress.ip_address("192.0.2.20"), 0xc0de, 7)
    assert oe.shunts == {}
    assert oe.take_log() == ["initiated OE to 192.0.2.20 via 192.0.2.20: ESP AES_GCM_16_128"]


def test_the_decision_log_says_where_the_key_came_from():
    """Issue 12: the decision line names the record and its DNSSEC state."""
    from dataclasses import replace

    from oe.dnskeys.records import KeyRecord
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    pair = Pair.of(ME, "192.0.2.20")
    oe.acquire(pair, 0)
    record = KeyRecord("IPSECKEY", Target.parse("192.0.2.20").name, 10,
                       ipaddress.ip_address("192.0.2.20"), None, None, "")
    oe.key_found(pair, replace(key("192.0.2.20"), record=record, dnssec="secure"), 0.2)
    assert oe.take_log() == ["key for 192.0.2.20 from IPSECKEY, dnssec secure: initiating IKE"]


def test_a_delegating_record_sends_ike_to_its_gateway_with_its_key():
    """Issue 13 (docs/gateway.md 5): the gateway a record names is tried with the key that
    record carries (RFC 4322 3.2.4.1: D's record vouches for G's key for D only); before,
    such a record was refused (defect 11)."""
    oe = opportunist(private="198.51.100.0/24\n")
    pair = Pair.of(ME, "198.51.100.7")
    oe.acquire(pair, 0)
    lookup = key("198.51.100.7", gateway="198.51.100.1")
    assert oe.key_found(pair, lookup, 0) == [
        Initiate(pair, ipaddress.ip_address("198.51.100.1"), peer_key=lookup)]
    assert fate(oe, "198.51.100.7") is Shunt.HOLD


@pytest.mark.parametrize("group, verdict, expected", [
    ("private_or_clear", Verdict.NOT_CAPABLE, Shunt.PASS),
    ("private", Verdict.NOT_CAPABLE, Shunt.DROP),
    ("private_or_clear", Verdict.DENY, Shunt.DROP),   # malformed record: deny whatever the group
])
def test_no_usable_key_installs_the_failure_shunt_with_its_reason(group, verdict, expected):
    oe = opportunist(**{group: "192.0.2.0/24\n"})
    pair = Pair.of(ME, "192.0.2.30")
    oe.acquire(pair, 0)
    reason = "no key in DNS for 30.2.0.192.in-addr.arpa"
    lookup = (not_capable(Target.parse("192.0.2.30"), reason) if verdict is Verdict.NOT_CAPABLE
              else KeyLookup(Target.parse("192.0.2.30"), Verdict.DENY, error=reason))
    assert oe.key_found(pair, lookup, 1.0) == []
    assert fate(oe, "192.0.2.30") is expected
    assert oe.shunts[pair].reason == reason and oe.shunts[pair].expires == 901.0
    assert oe.take_log() == [f"can't opportunistically initiate for {ME} to 192.0.2.30: "
                             f"{reason}; {expected} for 900 s"]
    assert oe.acquire(pair, 2.0) == []                   # the shunt stands: no new negotiation
    oe.tick(901.0)
    assert fate(oe, "192.0.2.30") is Shunt.TRAP          # expired: the %trap is back
    assert oe.acquire(pair, 902.0) == [FetchKey(pair, "192.0.2.30")]


def test_ike_failure_and_oe_initiate_retry():
    oe = opportunist(private="192.0.2.0/24\n")
    pair = Pair.of(ME, "192.0.2.20")
    oe.acquire(pair, 0)
    oe.key_found(pair, key("192.0.2.20"), 0)
    oe.negotiation_failed(pair, "IKE timeout", 8.0)
    assert fate(oe, "192.0.2.20") is Shunt.DROP and oe.shunts[pair].reason == "IKE timeout"
    assert oe.initiate(pair, 9.0) == [FetchKey(pair, "192.0.2.20")]
    assert fate(oe, "192.0.2.20") is Shunt.HOLD


def test_tunnel_down_brings_back_the_trap():
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    pair = Pair.of(ME, "192.0.2.20")
    peer = ipaddress.ip_address("192.0.2.20")
    oe.tunnel_up(pair, peer, 3, 0x11, 0x22, "AES_GCM_16_128", True, False, 0, sa_out=1)
    oe.tunnel_down(pair, 0x99, "DELETE", 1)                  # not our SPI: ignored
    assert fate(oe, "192.0.2.20") == SaAction(peer, 0x22, 1)
    oe.ike_gone(3, "peer dead", 5)
    assert fate(oe, "192.0.2.20") is Shunt.TRAP


def test_rekey_moves_the_eroute_and_the_old_sas_delete_is_ignored():
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    pair = Pair.of(ME, "192.0.2.20")
    oe.tunnel_up(pair, ipaddress.ip_address("192.0.2.20"), 3, 0x11, 0x22, "x", False, True, 0,
                 sa_out=1)
    oe.tunnel_rekeyed(pair, 0x33, 0x44, 100, sa_out=2)
    assert fate(oe, "192.0.2.20") == SaAction(ipaddress.ip_address("192.0.2.20"), 0x44, 2)
    oe.tunnel_down(pair, 0x11, "rekeyed", 101)               # the old CHILD SA's DELETE
    assert fate(oe, "192.0.2.20") == SaAction(ipaddress.ip_address("192.0.2.20"), 0x44, 2)


def test_a_new_ike_sa_for_a_pair_replaces_a_stale_one():
    """A restarted peer negotiates afresh: the IKE SA of the old tunnel is deleted."""
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    pair = Pair.of(ME, "192.0.2.20")
    peer = ipaddress.ip_address("192.0.2.20")
    oe.tunnel_up(pair, peer, 3, 0x11, 0x22, "x", False, True, 0, sa_out=1)
    assert oe.tunnel_up(pair, peer, 4, 0x55, 0x66, "x", False, False, 50, sa_out=2) == [
        DeleteIke(3)]
    assert fate(oe, "192.0.2.20") == SaAction(peer, 0x66, 2)


def test_ike_negotiations_are_rate_limited_not_dropped():
    """The rate limit rations what costs: IKE (a DH and an RSA signature each side). Key
    lookups start at once, up to lookups_max; keyed peers past the burst wait their token."""
    oe = opportunist(Limits(acquire_rate=1.0, acquire_burst=2), private_or_clear="0.0.0.0/0\n")
    pairs = [Pair.of(ME, f"198.51.100.{i}") for i in range(1, 6)]
    started = [c for p in pairs for c in oe.acquire(p, 0.0)]
    assert [c.pair for c in started] == pairs               # every lookup at once
    initiated = [c for p in pairs for c in oe.key_found(p, key(str(p.dst)), 0.0)]
    assert [c.pair for c in initiated] == pairs[:2]
    assert all(fate(oe, str(p.dst)) is Shunt.HOLD for p in pairs)
    assert oe.queued == 3 and oe.next_timer() == pytest.approx(1.0)
    assert [c.pair for c in oe.tick(1.0)] == pairs[2:3]
    assert [c.pair for c in oe.tick(3.0)] == pairs[3:5]


def test_a_burst_of_keyless_destinations_does_not_delay_a_keyed_peer():
    """issue 14: after 400 destinations without keys (private-or-clear 0.0.0.0/0 meeting the
    world), the next peer that publishes a key is negotiated at once, not behind them (18 s
    measured before: the lookups had taken the negotiation rate)."""
    oe = opportunist(Limits(acquire_rate=20.0, acquire_burst=40, lookups_max=16),
                     private_or_clear="0.0.0.0/0\n")
    keyless = [Pair.of(ME, f"10.0.{i // 250}.{i % 250 + 1}") for i in range(400)]
    keyed = Pair.of(ME, "198.51.100.7")
    fetched = [c.pair for p in [*keyless, keyed] for c in oe.acquire(p, 0.0)]
    assert fetched == keyless[:16]                       # lookups_max at once
    # NXDOMAIN, a DNS round trip later: the place it frees goes to the newest acquire, the
    # keyed peer, not to the 384 older ones (each costs the daemon a lookup).
    first = oe.key_found(keyless[0], not_capable(Target.parse(str(keyless[0].dst)), "no key"),
                         0.001)
    assert [c.pair for c in first + oe.tick(0.001)] == [keyed]
    assert [c.pair for c in oe.key_found(keyed, key("198.51.100.7"), 0.002)] == [keyed]
    for p in keyless[1:16]:                              # the burst's own turn comes after
        oe.key_found(p, not_capable(Target.parse(str(p.dst)), "no key"), 0.003)
    assert [c.pair for c in oe.tick(0.003)] == keyless[400 - 16:][::-1]  # all 16 places


def test_key_lookups_at_once_are_bounded():
    oe = opportunist(Limits(lookups_max=3), private_or_clear="0.0.0.0/0\n")
    pairs = [Pair.of(ME, f"198.51.100.{i}") for i in range(1, 6)]
    assert [c.pair for p in pairs for c in oe.acquire(p, 0.0)] == pairs[:3]
    oe.key_found(pairs[0], not_capable(Target.parse(str(pairs[0].dst)), "no key"), 0.1)
    assert oe.next_timer() == 0.0                            # a lookup's place is free
    assert [c.pair for c in oe.tick(0.1)] == pairs[4:5]     # for the newest acquire
    assert oe.next_timer() is None or oe.next_timer() > 0.1


def test_inbound_oe_follows_the_group():
    oe = opportunist(clear="192.0.2.53\n", clear_or_private="192.0.2.0/24\n",
                     block="203.0.113.0/24\n", private="198.51.100.0/24\n")
    me = ipaddress.ip_address(ME)
    assert oe.inbound_allowed(me, ipaddress.ip_address("192.0.2.20")) is None
    assert oe.inbound_allowed(me, ipaddress.ip_address("198.51.100.1")) is None
    assert "group clear, which refuses OE" in oe.inbound_allowed(me, ipaddress.ip_address("192.0.2.53"))
    assert "group block" in oe.inbound_allowed(me, ipaddress.ip_address("203.0.113.1"))
    assert "no policy group" in oe.inbound_allowed(me, ipaddress.ip_address("233.252.0.1"))


def test_clear_or_private_never_initiates():
    oe = opportunist(clear_or_private="192.0.2.0/24\n")
    assert oe.acquire(Pair.of(ME, "192.0.2.20"), 0) == []
    assert fate(oe, "192.0.2.20") is Shunt.PASS


def test_reload_keeps_fitting_tunnels_and_ends_the_others():
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    keep, end = Pair.of(ME, "192.0.2.20"), Pair.of(ME, "198.51.100.20")
    oe.tunnel_up(keep, keep.dst, 1, 0x11, 0x12, "x", False, True, 0)
    oe.tunnel_up(end, end.dst, 2, 0x21, 0x22, "x", False, True, 0)
    new = opportunist(private_or_clear="0.0.0.0/0\n", clear="198.51.100.0/24\n").base
    assert oe.reload(new, 10) == [DeleteIke(2)]
    assert set(oe.tunnels) == {keep}
    assert fate(oe, "198.51.100.20") is Shunt.PASS


def test_link_local_and_multicast_are_never_negotiated():
    """The TUN's own IPv6 chatter (router solicitations to ff02::2) is dropped, not acquired."""
    oe = opportunist(private_or_clear="::/0\n")
    pair = Pair.of("fe80::1", "ff02::2")
    assert oe.acquire(pair, 0) == []
    assert fate(oe, "ff02::2", src="fe80::1") is Shunt.DROP
    assert oe.negotiations == {}


def test_narrowed_entry_traps_its_port_and_its_shunt_covers_only_that_port():
    """private `192.0.2.20 tcp 0 22`: the acquire carries the port; failing, %drop for port 22
    alone, while the host's other traffic keeps its own fate (here: no group, clear)."""
    oe = opportunist(private="192.0.2.20 tcp 0 22\n")
    pair = Pair.of(ME, "192.0.2.20")
    assert oe.acquire(pair, 0, proto=6, sport=40000, dport=22) == [FetchKey(pair, "192.0.2.20")]
    oe.key_found(pair, not_capable(Target.parse("192.0.2.20"), "no key"), 1)
    table = oe.table()
    me, bob = ipaddress.ip_address(ME), ipaddress.ip_address("192.0.2.20")
    assert table.entries[table.lookup(me, bob, 6, 40000, 22)].action is Shunt.DROP
    assert table.lookup(me, bob, 6, 40000, 80) is None
    assert table.lookup(me, bob, 1) is None
    # A host-to-host SA serves the narrowed entry, so IKE from that host is answered.
    assert oe.inbound_allowed(me, bob) is None


def _fail_to(oe, dst, now):
    pair = Pair.of(ME, dst)
    oe.acquire(pair, now)
    oe.key_found(pair, not_capable(Target.parse(dst), "no key"), now)
    return pair


def test_failure_shunts_are_capped_and_the_oldest_goes_first():
    """Issue 10, defect 6: a scan of keyless addresses must not grow the shunt table without
    bound; beyond the cap the oldest failure shunt is dropped (its %trap returns) and counted."""
    oe = opportunist(Limits(max_shunts=3), private_or_clear="0.0.0.0/0\n")
    pairs = [_fail_to(oe, f"198.51.100.{i}", now=float(i)) for i in range(1, 6)]
    assert set(oe.shunts) == set(pairs[2:])
    assert fate(oe, "198.51.100.1") is Shunt.TRAP and fate(oe, "198.51.100.5") is Shunt.PASS
    assert oe.counters["shunts_dropped"] == 2
    assert oe.limits.max_shunts == 3


def _apply(installed: dict, changes) -> dict:
    add, remove = changes
    for selector in remove:
        installed.pop(selector)
    for eroute in add:
        installed[eroute.selector] = eroute
    return installed


def test_table_changes_are_incremental_and_agree_with_the_whole_table():
    """Issue 10, defect 6: each event hands the datapath only the eroutes it changed, however
    many shunts stand; applied in order, the changes give exactly table()."""
    oe = opportunist(Limits(acquire_burst=1000), private_or_clear="0.0.0.0/0\n",
                     private="198.51.100.20/32\n")
    assert oe.take_changes() is None                     # first: the whole table
    installed = {e.selector: e for e in oe.table().entries}
    for i in range(1, 200):
        _fail_to(oe, f"203.0.113.{i}", now=0.0)
    _apply(installed, oe.take_changes())
    # One more event with ~200 shunts standing: a change of one eroute.
    assert len(oe.shunts) == 199
    _fail_to(oe, "192.0.2.99", now=1.0)
    changes = oe.take_changes()
    assert len(changes[0]) + len(changes[1]) == 1
    _apply(installed, changes)
    pair = Pair.of(ME, "198.51.100.20")                  # a /32 policy entry under a tunnel
    oe.tunnel_up(pair, pair.dst, 1, 0x11, 0x22, "x", False, True, 2.0, sa_out=5)
    _apply(installed, oe.take_changes())
    assert installed[pair.selector].action == SaAction(pair.dst, 0x22, 5)
    oe.tunnel_down(pair, 0x11, "DELETE", 3.0)             # policy's %trap is back, not a hole
    oe.tick(10_000.0)                                     # every failure shunt expires
    _apply(installed, oe.take_changes())
    assert installed == {e.selector: e for e in oe.table().entries}
    assert pair.selector not in installed and fate(oe, "198.51.100.20") is Shunt.TRAP
    assert oe.take_changes() == ([], [])
    new = opportunist(private_or_clear="0.0.0.0/0\n").base
    oe.reload(new, 10_001.0)
    assert oe.take_changes() is None                     # new policy: the whole table again


def _ts(addr, protocol=0, ports=(0, 65535), end=None):
    from oe.ike.ts import TrafficSelector
    return TrafficSelector(ipaddress.ip_address(addr), ipaddress.ip_address(end or addr),
                           protocol, *ports)


def test_child_flow_keeps_the_negotiated_narrowing():
    """Issue 10, defect 12: the SA carries exactly what was negotiated, never the whole host
    pair: a responder that narrowed to tcp port 22 gets an eroute and SA for port 22 only."""
    flow = child_flow((_ts(ME),), (_ts("192.0.2.20"),))
    assert flow == (Pair.of(ME, "192.0.2.20"), (0, 0, 0))
    flow = child_flow((_ts(ME, 6),), (_ts("192.0.2.20", 6, (22, 22)),))
    assert flow == (Pair.of(ME, "192.0.2.20"), (6, 0, 22))
    assert flow[0].selector_narrowed(*flow[1]).dport == 22


@pytest.mark.parametrize("local, remote, why", [
    ((_ts(ME), _ts("192.0.2.11")), (_ts("192.0.2.20"),), "more than one selector"),
    ((_ts(ME, end="192.0.2.11"),), (_ts("192.0.2.20"),), "not a single host"),
    ((_ts(ME, 6),), (_ts("192.0.2.20", 17),), "protocols"),
    ((_ts(ME, 6),), (_ts("192.0.2.20", 6, (20, 22)),), "port range"),
    ((_ts(ME),), (_ts("192.0.2.20", 0, (22, 22)),), "port without a protocol"),
    ((_ts(ME),), (_ts("2001:db8::20"),), "address families"),
])
def test_child_flow_refuses_what_an_eroute_cannot_enforce(local, remote, why):
    with pytest.raises(ValueError, match=why):
        child_flow(local, remote)


def test_a_narrowed_tunnel_covers_only_its_port():
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    pair = Pair.of(ME, "192.0.2.20")
    oe.tunnel_up(pair, pair.dst, 1, 0x11, 0x22, "x", False, True, 0, narrowing=(6, 0, 22),
                 sa_out=5)
    table = oe.table()
    me, bob = pair.src, pair.dst
    assert table.entries[table.lookup(me, bob, 6, 40000, 22)].action == SaAction(bob, 0x22, 5)
    assert table.entries[table.lookup(me, bob, 6, 40000, 80)].action is Shunt.TRAP


def test_a_new_child_of_the_same_ike_sa_retires_the_old_one():
    """Review of issue 10: a second CHILD SA for a pair on one IKE SA leaves one of the two;
    the other is deleted, not left installed with nothing to rekey or expire it (which one:
    the lower SPIs stay, as both ends see them, test below)."""
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    pair = Pair.of(ME, "192.0.2.20")
    oe.tunnel_up(pair, pair.dst, 3, 0x33, 0x44, "x", False, True, 0, sa_out=1)
    assert oe.tunnel_up(pair, pair.dst, 3, 0x11, 0x22, "x", False, False, 1, sa_out=2) == [
        DeleteChild(3, 0x33)]


def test_a_rekey_that_narrows_moves_the_eroute_with_it():
    """Review of issue 10 (defect 12 on rekey): the eroute follows the rekeyed SA's selectors."""
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    pair = Pair.of(ME, "192.0.2.20")
    oe.tunnel_up(pair, pair.dst, 3, 0x11, 0x22, "x", False, True, 0, sa_out=1)
    oe.tunnel_rekeyed(pair, 0x33, 0x44, 100, sa_out=2, narrowing=(6, 0, 80))
    table = oe.table()
    me, bob = pair.src, pair.dst
    assert table.entries[table.lookup(me, bob, 6, 40000, 80)].action == SaAction(bob, 0x44, 2)
    assert table.entries[table.lookup(me, bob, 17, 40000, 53)].action is Shunt.TRAP


def test_an_authentication_failure_refetches_the_key_once():
    """Defect 9: the peer rotated its key within the TTL of our cached answer: one fresh
    lookup (bypassing the cache) and one more try, then the failure shunt."""
    oe = opportunist(private="192.0.2.0/24\n")
    pair = Pair.of(ME, "192.0.2.20")
    oe.acquire(pair, 0)
    oe.key_found(pair, key("192.0.2.20"), 0)
    assert oe.auth_failed(pair, "AUTHENTICATION_FAILED", 1) == [
        FetchKey(pair, "192.0.2.20", refresh=True)]
    assert fate(oe, "192.0.2.20") is Shunt.HOLD
    assert oe.key_found(pair, key("192.0.2.20"), 1.1) == [
        Initiate(pair, ipaddress.ip_address("192.0.2.20"))]
    assert oe.auth_failed(pair, "AUTHENTICATION_FAILED", 2) == []
    assert fate(oe, "192.0.2.20") is Shunt.DROP
    assert oe.shunts[pair].reason == "AUTHENTICATION_FAILED"


def test_initiate_is_refused_with_its_reason_outside_trapping_groups():
    """Issue 15, 6 as the opportunist decides it: `oe initiate` says why nothing happens."""
    oe = opportunist(private_or_clear="192.0.2.0/24\n", clear="198.51.100.0/24\n")
    assert oe.initiation_refused(Pair.of(ME, "192.0.2.20")) is None
    assert oe.initiation_refused(Pair.of(ME, "198.51.100.2")) == \
        "198.51.100.2 is in group clear (%pass): oe does not negotiate with it"
    assert oe.initiation_refused(Pair.of(ME, "203.0.113.1")) == \
        "203.0.113.1 is in no policy group: not steered into oe, sent in clear"


def test_a_stale_tunnel_of_a_shared_ike_sa_loses_its_child_sa_only():
    """One IKE SA carries the CHILD SAs of several pairs (a gateway's clients, docs/gateway.md
    5): the stale tunnel's CHILD SA goes, the IKE SA stays for the others; an IKE SA that
    carries nothing else goes whole."""
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    gateway = ipaddress.ip_address("192.0.2.1")
    first, second = Pair.of(ME, "198.51.100.10"), Pair.of(ME, "198.51.100.20")
    oe.tunnel_up(first, gateway, 3, 0x11, 0x22, "x", False, True, 0, sa_out=1)
    oe.tunnel_up(second, gateway, 3, 0x13, 0x24, "x", False, True, 0, sa_out=2)
    assert oe.tunnel_up(first, gateway, 4, 0x55, 0x66, "x", False, False, 50, sa_out=3) == [
        DeleteChild(3, 0x11)]
    assert oe.tunnel_up(second, gateway, 4, 0x57, 0x68, "x", False, False, 50, sa_out=4) == [
        DeleteIke(3)]
    assert fate(oe, "198.51.100.10") == SaAction(gateway, 0x66, 3)


def test_an_ike_sa_gone_ends_every_tunnel_it_carried_and_no_other():
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    gateway = ipaddress.ip_address("192.0.2.1")
    for sa_id, last in ((3, 10), (3, 20), (4, 30)):
        oe.tunnel_up(Pair.of(ME, f"198.51.100.{last}"), gateway, sa_id, last, last + 1, "x",
                     False, True, 0, sa_out=last)
    oe.ike_gone(3, "peer dead", 5)
    assert fate(oe, "198.51.100.10") is Shunt.TRAP and fate(oe, "198.51.100.20") is Shunt.TRAP
    assert fate(oe, "198.51.100.30") == SaAction(gateway, 31, 30)
    assert oe.tunnels_of(3) == frozenset() and oe.tunnels_of(4) == {Pair.of(ME, "198.51.100.30")}


def test_reload_ending_one_client_of_a_shared_ike_sa_deletes_its_child_sa_only():
    oe = opportunist(private_or_clear="0.0.0.0/0\n")
    gateway = ipaddress.ip_address("192.0.2.1")
    keep, end = Pair.of(ME, "192.0.2.20"), Pair.of(ME, "198.51.100.20")
    oe.tunnel_up(keep, gateway, 1, 0x11, 0x12, "x", False, True, 0)
    oe.tunnel_up(end, gateway, 1, 0x21, 0x22, "x", False, True, 0)
    new = opportunist(private_or_clear="0.0.0.0/0\n", clear="198.51.100.0/24\n").base
    assert oe.reload(new, 10) == [DeleteChild(1, 0x21)]
    assert set(oe.tunnels) == {keep}


def test_both_ends_asking_for_one_pair_at_once_keep_the_same_child_sa():
    """issue 13 (two gateways whose clients talk both ways at once): each end initiates a
    CHILD SA for the pair on their shared IKE SA, and each learns of the other's after its
    own. Both must delete the same one (the one with the higher SPIs), not each the one it saw
    first, or both go and the pair flaps for ever."""
    peer = ipaddress.ip_address("192.0.2.20")
    ours, theirs = (0x1001, 0x9009), (0x5005, 0x2002)  # (spi_in, spi_out) at our end
    here = opportunist(private_or_clear="0.0.0.0/0\n")
    pair = Pair.of(ME, "192.0.2.20")
    here.tunnel_up(pair, peer, 1, *ours, "x", False, True, 0, sa_out=1)
    assert here.tunnel_up(pair, peer, 1, *theirs, "x", False, False, 0, sa_out=2) == [
        DeleteChild(1, 0x5005)]                   # ours has the lower SPIs: theirs goes
    assert fate(here, "192.0.2.20") == SaAction(peer, 0x9009, 1)
    there = opportunist(private_or_clear="0.0.0.0/0\n")  # the far end, SPIs mirrored
    mirror = Pair.of("192.0.2.20", ME)
    there.tunnel_up(mirror, peer, 1, 0x2002, 0x5005, "x", False, True, 0, sa_out=1)
    assert there.tunnel_up(mirror, peer, 1, 0x9009, 0x1001, "x", False, False, 0,
                           sa_out=2) == [DeleteChild(1, 0x2002)]     # the same CHILD SA
    # one end replacing its own CHILD SA (or the peer its): the new one stays, as before
    assert here.tunnel_up(pair, peer, 1, 0x7007, 0x8008, "x", False, True, 1, sa_out=3) == [
        DeleteChild(1, 0x1001)]
