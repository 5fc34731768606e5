"""The compiled classifier (oe.datapath.Classifier) against the naive model (oe.eroute)."""

import array
import ipaddress
import random
import struct

import pytest

from oe.datapath import FLOW_RECORD_SIZE, Classifier
from oe.eroute import Eroute, ErouteTable, SaAction, Selector, Shunt

SHUNTS = list(Shunt)


def random_network(rng: random.Random, version: int, base: ipaddress._BaseNetwork):
    """A prefix inside `base` (so tables overlap and lookups hit), of random length."""
    width = 32 if version == 4 else 128
    length = rng.choice([base.prefixlen, base.prefixlen + 1, base.prefixlen + 4,
                         rng.randint(base.prefixlen, width), width])
    length = min(length, width)
    host = rng.getrandbits(width - base.prefixlen)
    address = int(base.network_address) | host
    return ipaddress.ip_network((address, length), strict=False)


def random_table(rng: random.Random, version: int, size: int) -> ErouteTable:
    bases = [ipaddress.ip_network(b) for b in (
        ("0.0.0.0/0", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/28") if version == 4 else
        ("::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1:2::/64"))]
    eroutes = []
    for _ in range(size):
        src = (Selector.any_source(version) if rng.random() < 0.6
               else random_network(rng, version, rng.choice(bases)))
        dst = random_network(rng, version, rng.choice(bases))
        proto = rng.choice([0, 0, 0, 6, 17])
        sport = rng.choice([0, 0, 0, 1024]) if proto else 0
        dport = rng.choice([0, 0, 22, 80]) if proto else 0
        action = (SaAction(dst.network_address, rng.getrandbits(32), rng.getrandbits(32))
                  if rng.random() < 0.2 else rng.choice(SHUNTS))
        eroutes.append(Eroute(Selector(src, dst, proto, sport, dport), action))
    return ErouteTable(eroutes)


def random_packet(rng: random.Random, version: int, table: ErouteTable):
    """Mostly packets inside some entry's selector, some anywhere, some reusing a port."""
    width = 32 if version == 4 else 128
    if table.entries and rng.random() < 0.8:
        sel = rng.choice(table.entries).selector
        width = 32 if sel.version == 4 else 128
        src = sel.src.network_address + rng.getrandbits(width - sel.src.prefixlen)
        dst = sel.dst.network_address + rng.getrandbits(width - sel.dst.prefixlen)
    else:
        src = ipaddress.ip_address(rng.getrandbits(width) if version == 6 else rng.getrandbits(32))
        dst = ipaddress.ip_address(rng.getrandbits(width) if version == 6 else rng.getrandbits(32))
    proto = rng.choice([6, 17, 1])
    sport = rng.choice([1024, 5000]) if proto != 1 else 0
    dport = rng.choice([22, 80, 443]) if proto != 1 else 0
    return src, dst, proto, sport, dport


def pack(packets) -> bytes:
    out = bytearray()
    for src, dst, proto, sport, dport in packets:
        out += struct.pack("!BBHH2x16s16s", src.version, proto, sport, dport,
                           src.packed.ljust(16, b"\0"), dst.packed.ljust(16, b"\0"))
    assert len(out) == len(packets) * FLOW_RECORD_SIZE
    return bytes(out)


@pytest.mark.parametrize("version", [4, 6])
def test_classifier_agrees_with_reference_model(version):
    """100,000 seeded random packets over 100 random tables: every answer is the model's."""
    rng = random.Random(4322 + version)
    classifier = Classifier()
    checked = hits = 0
    for _ in range(100):
        table = random_table(rng, version, rng.randint(1, 40))
        classifier.replace(table)
        packets = [random_packet(rng, version, table) for _ in range(500)]
        packets += packets[:500]  # repeats go through the flow cache
        expected = [table.lookup(*p) for p in packets]
        got = [classifier.lookup(p[0].packed, p[1].packed, *p[2:]) for p in packets]
        assert got == expected
        out = array.array("i", [0]) * len(packets)
        classifier.lookup_many(pack(packets), out)
        assert list(out) == [-1 if e is None else e for e in expected]
        checked += len(packets)
        hits += sum(e is not None for e in expected)
    assert checked >= 100_000
    assert hits > checked // 2  # the tables are dense enough that most packets match something


@pytest.mark.parametrize("version", [4, 6])
def test_incremental_updates_agree_with_reference_model(version):
    """After each random batch of removals and additions (update(), issue 10, 6) the classifier
    answers as the naive model of the same eroutes, flow cache included; counters of eroutes
    that stay are kept."""
    rng = random.Random(7296 + version)
    classifier = Classifier()
    model: dict = {}
    for step in range(300):
        pool = random_table(rng, version, rng.randint(0, 12)).entries
        remove = rng.sample(sorted(model, key=str), min(len(model), rng.randint(0, 8)))
        remove.append(pool[0].selector if pool else Selector.any_source(version))  # absent: no-op
        for sel in remove:
            model.pop(sel, None)
        for eroute in pool:
            model[eroute.selector] = eroute
        classifier.update(add=pool, remove=remove)
        table = ErouteTable(model.values())
        assert set(classifier.table.entries) == set(table.entries)
        packets = [random_packet(rng, version, table) for _ in range(60)]
        packets += packets[:30]
        for p in packets:
            got = classifier.lookup(p[0], p[1], *p[2:], nbytes=1)
            want = table.lookup(*p)
            assert (None if got is None else classifier.table.entries[got]) == (
                None if want is None else table.entries[want])
    counted = dict(zip(classifier.table.entries, classifier.counters()))
    kept = rng.choice(list(model.values()))
    classifier.update(add=[], remove=[e.selector for e in model.values() if e != kept])
    assert classifier.counters() == [counted[kept]]


def test_update_invalidates_the_flow_cache():
    net = ipaddress.ip_network
    wide = Eroute(Selector(Selector.any_source(4), net("192.0.2.0/24")), Shunt.TRAP)
    host = Eroute(Selector(net("192.0.2.1/32"), net("192.0.2.9/32")), Shunt.HOLD)
    classifier = Classifier(ErouteTable([wide]))
    assert classifier.table.entries[classifier.lookup("192.0.2.1", "192.0.2.9")] == wide
    classifier.update(add=[host])
    assert classifier.table.entries[classifier.lookup("192.0.2.1", "192.0.2.9")] == host
    classifier.update(remove=[host.selector])
    assert classifier.table.entries[classifier.lookup("192.0.2.1", "192.0.2.9")] == wide
    classifier.update(add=[Eroute(wide.selector, Shunt.PASS)])        # same selector: replaced
    assert classifier.table.entries[classifier.lookup("192.0.2.1", "192.0.2.9")].action is \
        Shunt.PASS


def test_large_table_agrees():
    """A 5,000-entry table, both families at once."""
    rng = random.Random(7)
    eroutes = random_table(rng, 4, 2500).entries + random_table(rng, 6, 2500).entries
    table = ErouteTable(eroutes)
    classifier = Classifier(table)
    for _ in range(3000):
        p = random_packet(rng, rng.choice([4, 6]), table)
        assert classifier.lookup(p[0], p[1], *p[2:]) == table.lookup(*p)


def test_most_specific_source_beats_destination():
    """Longer source prefix first, then longer destination prefix (FreeS/WAN prio)."""
    any4 = Selector.any_source(4)
    net = ipaddress.ip_network
    table = ErouteTable([
        Eroute(Selector(any4, net("192.0.2.7/32")), Shunt.PASS),
        Eroute(Selector(net("198.51.100.1/32"), net("192.0.2.0/24")), Shunt.DROP),
        Eroute(Selector(any4, net("192.0.2.0/24"), 6, 0, 22), Shunt.REJECT),
        Eroute(Selector(any4, net("192.0.2.0/24"), 6), Shunt.HOLD),
        Eroute(Selector(any4, net("192.0.2.0/24")), Shunt.TRAP),
    ])
    classifier = Classifier(table)
    src, other = ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("198.51.100.2")
    dst7, dst9 = ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("192.0.2.9")

    def action(*packet):
        index = classifier.lookup(*packet)
        assert index == table.lookup(*packet)
        return table.entries[index].action

    assert action(src, dst7, 6, 1, 22) is Shunt.DROP      # /32 source wins over /32 destination
    assert action(other, dst7, 6, 1, 22) is Shunt.PASS    # then the longer destination
    assert action(other, dst9, 6, 1, 22) is Shunt.REJECT  # then the destination port
    assert action(other, dst9, 6, 1, 80) is Shunt.HOLD    # then the protocol
    assert action(other, dst9, 17, 1, 80) is Shunt.TRAP
    assert classifier.lookup(other, ipaddress.ip_address("203.0.113.1")) is None


def test_replace_is_atomic_and_keeps_counters_of_kept_eroutes():
    net = ipaddress.ip_network
    kept = Eroute(Selector(Selector.any_source(4), net("192.0.2.0/24")), Shunt.TRAP)
    gone = Eroute(Selector(Selector.any_source(4), net("198.51.100.0/24")), Shunt.PASS)
    classifier = Classifier(ErouteTable([kept, gone]))
    for _ in range(3):
        classifier.lookup("192.0.2.1", "192.0.2.9", nbytes=100)
    classifier.lookup("192.0.2.1", "198.51.100.9", nbytes=60)
    table = classifier.table
    assert dict(zip(table.entries, classifier.counters())) == {kept: (3, 300), gone: (1, 60)}

    hold = Eroute(Selector(net("192.0.2.1/32"), net("192.0.2.9/32")), Shunt.HOLD)
    classifier.replace(ErouteTable([kept, hold]))
    assert dict(zip(classifier.table.entries, classifier.counters())) == {
        kept: (3, 300), hold: (0, 0)}
    # The flow cache of the old table does not leak into the new one.
    assert classifier.table.entries[classifier.lookup("192.0.2.1", "192.0.2.9")] == hold
    assert classifier.lookup("192.0.2.1", "198.51.100.9") is None


def test_sa_action_text_is_openswan_said():
    """The local handle is not part of the SAID: `oe status` shows what KLIPS showed."""
    assert str(SaAction(ipaddress.ip_address("192.0.2.45"), 0x1002, 7)) == "esp.1002@192.0.2.45"
    assert str(SaAction(ipaddress.ip_address("2001:db8::5"), 0x130, 8)) == "esp:130@2001:db8::5"


def test_bad_lookup_arguments_raise():
    classifier = Classifier()
    with pytest.raises(ValueError):
        classifier.lookup(b"\x01\x02\x03", b"\x01\x02\x03\x04")
    with pytest.raises(ValueError):
        classifier.lookup("192.0.2.1", "2001:db8::1")
