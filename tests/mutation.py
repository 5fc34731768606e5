"""The mutation check (issue 16): every security check must be load-bearing.

Each mutant below deletes or weakens one check on a security-critical line, by exact text:
an anchor that is not found exactly once fails the run loudly ("anchor not found"), so a
refactor that moves a check makes this list be mended, never pass in silence. For each
mutant the script runs only the test files that must catch it (pytest -x) in a temporary
copy of the tree (oe/, tests/, zonefiles/, setup.py, pyproject.toml), so an interrupted run
never leaves a mutant behind; mutants of the Cython datapath are rebuilt there first (one
build each, so they are few). A mutant counts as killed only when a test fails (not when a
test cannot be set up); the run fails, listing them, if any mutant survives.

    python tests/mutation.py            # all mutants
    python tests/mutation.py --list     # names, files and killing tests
    python tests/mutation.py esp- ike-  # only the mutants whose name starts so

Mutants marked root need namespaces (their tests skip without root): without root they are
not run, and the run says so. A textual list, not a mutation tool (mutmut, cosmic-ray):
those mutate every line and take hours on this suite; these are the lines that must bite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("oe", "tests", "zonefiles", "setup.py", "pyproject.toml")  # what the tests read


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    anchor: str
    replacement: str
    tests: tuple[str, ...]
    root: bool = False

    @property
    def compiled(self) -> bool:
        return self.path.endswith((".pyx", ".pxi", ".pxd", ".c", ".h"))


def m(name: str, path: str, anchor: str, replacement: str, *tests: str,
      root: bool = False) -> Mutant:
    return Mutant(name, path, anchor, replacement, tuple(f"tests/{t}" for t in tests), root)


IKE_SA, ENGINE, TSPY = "oe/ike/ike_sa.py", "oe/ike/engine.py", "oe/ike/ts.py"
IKE_AUTH, CHILD_CREATE = "oe/ike/tasks/ike_auth.py", "oe/ike/tasks/child_create.py"
COMMON = "oe/ike/tasks/common.py"
IKE_FAST = ("test_ike_forgery.py", "test_ike_message_ids.py", "test_ike_engine.py")
SELECTORS = ("test_ike_selectors.py", "test_ike_peer_keys.py", "test_ike_engine.py")
RECORDS, ROUTING, INBOUND = "oe/dnskeys/records.py", "oe/routing.py", "oe/inbound.py"
ESP, REPLAY, SAS = "oe/dp/esp.pyx", "oe/dp/replay.pxd", "oe/dp/sa.pyx"
DATAPATH = "oe/datapath.pyx"
OUTBOUND, INBOUND_DP = "oe/dp/outbound.pyx", "oe/dp/inbound.pyx"
OPP, DAEMON = "oe/opportunist.py", "oe/daemon.py"
ADMISSION, LIFECYCLE, KEYS = "oe/admission.py", "oe/lifecycle.py", "oe/peerkeys.py"
CHILDPOLICY, DELEGATION = "oe/ike/childpolicy.py", "oe/dnskeys/delegation.py"
GATEWAY_R = ("test_admission.py", "test_ike_child_wait.py")

MUTANTS = [
    # IKE message handling: the legality table and the one gate (RFC 7296 2.3, 3.14)
    m("ike-accept-auth-response-cleartext", IKE_SA,
      "(State.EXPECT_AUTH_RESPONSE, _X.IKE_AUTH, True): Take.PROTECTED,",
      "(State.EXPECT_AUTH_RESPONSE, _X.IKE_AUTH, True): Take.CLEARTEXT,",
      "test_ike_forgery.py", "test_ike_fuzz.py"),
    m("ike-accept-established-cleartext", IKE_SA,
      "    **{(state, exchange, response): Take.PROTECTED\n",
      "    **{(state, exchange, response): Take.CLEARTEXT\n", *IKE_FAST),
    m("ike-accept-refused-handled", IKE_SA,
      "        if take is Take.REFUSED:\n",
      "        if False:\n", "test_ike_message_ids.py"),
    m("ike-response-without-integrity", IKE_SA,
      "        if take is Take.PROTECTED:\n            try:\n                opened = self._open(",
      "        if False:\n            try:\n                opened = self._open(", *IKE_FAST),
    m("ike-response-any-message-id", IKE_SA,
      "        if req is None or (header.message_id, header.exchange) != (req.message_id,\n"
      "                                                                   req.exchange):\n",
      "        if req is None:\n", "test_ike_message_ids.py", "test_ike_forgery.py"),
    m("ike-request-message-id-window", IKE_SA,
      "        if header.message_id != self.expected_message_id:\n"
      "            return self.host.count(\"unexpected_dropped\")\n", "",
      "test_ike_message_ids.py"),
    m("ike-retransmit-without-integrity", IKE_SA,
      "            try:\n                enc, _ = self._decrypt(msg)\n"
      "            except IntegrityError:\n"
      "                return self.host.count(\"forged_dropped\")\n",
      "            enc = msg.payloads[0]\n", "test_ike_message_ids.py"),
    # IKE fragmentation (RFC 7383): each fragment checked before it is kept (2.6), SKF only
    # where SK is due, never in IKE_SA_INIT (2.5.3)
    m("ike-fragment-kept-unchecked", IKE_SA,
      "        enc, inner = self._decrypt(msg)\n",
      "        enc = msg.payloads[0]\n"
      "        inner = enc.body if isinstance(enc, EncryptedFragment) else self._decrypt(msg)[1]\n",
      "test_ike_fragmentation.py"),
    m("ike-fragment-where-cleartext-is-due", IKE_SA,
      "        if take is not None and not take.protected and header.next_payload == "
      "PayloadType.SKF:\n", "        if False:\n", "test_ike_fragmentation.py"),
    m("ike-fragmented-sa-init-request-taken", ENGINE,
      "                    and header.next_payload != PayloadType.SKF:\n",
      "                    and True:\n", "test_ike_fragmentation.py"),
    m("ike-cookie-not-checked", ENGINE,
      "            if not (isinstance(got, Notify) and got.notify_type == NotifyType.COOKIE\n"
      "                    and hmac.compare_digest(got.data, want)):\n",
      "            if False:\n", "test_ike_admission.py"),
    m("ike-refusal-answers-anything", ENGINE,
      "                data[19] & 0x20 or data[8:16] != bytes(8):\n", "                False:\n",
      "test_daemon.py"),
    m("ike-admission-hook-ignored", ENGINE,
      "        if self.admit_init is not None and not self.admit_init(data, addr, local[1], local[0]):\n",
      "        if False:\n", "test_ike_admission.py"),
    m("ike-half-open-unbounded", ENGINE,
      "        if len(self._half_open) >= self.config.half_open_max:\n", "        if False:\n",
      "test_ike_admission.py"),
    # the timer heap (issue 14): whatever moves an IKE SA's timer files it again
    m("ike-initial-contact-unindexed", ENGINE,
      "            self._by_peer.setdefault((sa.peer_id, sa.identity), set()).add(sa)\n",
      "            pass\n",
      "test_ike_engine.py", "test_ike_many_addresses.py"),
    m("ike-timer-fragment-not-refiled", ENGINE,
      "        self.touch(sa)  # its reassembler may keep a fragment\n", "", "test_ike_timers.py"),
    m("ike-timer-request-not-refiled", IKE_SA,
      "    request: Request | None = _TimerInput()  # type: ignore[assignment]\n", "",
      "test_ike_timers.py"),
    m("ike-child-sas-unbounded", CHILD_CREATE,
      "    elif len(sa.children) >= sa.config.children_per_ike:\n", "    elif False:\n",
      "test_ike_engine.py"),
    # AUTH verification (RFC 7296 2.15, docs/architecture.md section 3)
    m("auth-signature-not-verified", IKE_AUTH,
      "        _auth.verify(key, auth.method, auth.data, octets, "
      "sha1_allowed=not sa.peer_hashes)\n", "        pass\n", *IKE_FAST),
    m("auth-sha1-always-allowed", IKE_AUTH,
      "sha1_allowed=not sa.peer_hashes)", "sha1_allowed=True)", "test_ike_auth_method.py"),
    m("auth-any-peer-id", IKE_AUTH,
      "    if sa.initiator and expected_peer_id not in (None, peer):\n",
      "    if False:\n", *IKE_FAST),
    m("auth-fqdn-spelled-as-address", IKE_AUTH,
      "    if peer.id_type == IdType.ID_FQDN and _is_address_literal(peer.data):\n",
      "    if False:\n", "test_ike_peer_keys.py"),
    m("auth-key-not-for-that-address", IKE_AUTH,
      "                peer.address() not in found.addresses):\n", "                False):\n",
      "test_ike_peer_keys.py"),
    # Selector narrowing (RFC 7296 2.9)
    m("ts-responder-keeps-wide-tsi", CHILDPOLICY,
      "    return tuple(narrow(list(tsi), vouched))\n", "    return tuple(tsi)\n", *SELECTORS),
    m("ts-responder-keeps-wide-tsr", CHILDPOLICY,
      "    return tuple(narrow(list(tsr), [TrafficSelector.host(sa.local_addr)]))\n",
      "    return tuple(tsr)\n", *SELECTORS),
    m("ts-responder-empty-narrowing", COMMON,
      "    if not local or not remote:\n", "    if False:\n", *SELECTORS),
    m("gateway-empty-narrowing", ADMISSION,
      "        if not remote or not local:\n", "        if False:\n", *GATEWAY_R),
    m("ts-policy-ignored", COMMON, "    if isinstance(verdict, Refuse):\n", "    if False:\n",
      *SELECTORS, "test_ike_child_wait.py"),
    m("ts-policy-widening-believed", COMMON,
      "    if not _inside(local, tuple(tsr)) or not _inside(remote, tuple(tsi)):\n",
      "    if not _inside(local, tuple(tsr)):\n", "test_ike_child_wait.py"),
    # The responder for a client: delegation checks and the DNS wait (docs/gateway.md 4)
    m("gateway-his-client-unchecked", ADMISSION,
      "                why = check_his_client(lookup, sa.peer_id, sa.peer_key)\n",
      "                why = None\n", *GATEWAY_R),
    m("gateway-our-client-unchecked", ADMISSION,
      "                why = check_client(lookup, (sa.local_addr,), self.own_blob)\n",
      "                why = None\n", *GATEWAY_R),
    m("gateway-our-client-outside-subnets", ADMISSION,
      "            if whose == \"our\" and not any(ts.start in net for net in self.subnets):\n",
      "            if False:\n", *GATEWAY_R),
    m("gateway-child-lookups-unbounded", ADMISSION,
      "        if len(self.pending) + len(self.fetching) + len(new) > self.lookups:\n",
      "        if False:\n", *GATEWAY_R),
    m("gateway-our-client-any-gateway", DELEGATION,
      "                 if gateway in ours and blob is not None and blob == our_key_blob), None)\n",
      "                 if blob is not None and blob == our_key_blob), None)\n",
      *GATEWAY_R, "test_dnskeys_candidates.py"),
    m("gateway-our-client-any-key", DELEGATION,
      "                 if gateway in ours and blob is not None and blob == our_key_blob), None)\n",
      "                 if gateway in ours), None)\n", *GATEWAY_R, "test_dnskeys_candidates.py"),
    m("gateway-his-client-any-gateway", DELEGATION,
      "    named = [r for r in usable if _names(r, lookup, peer_id)]\n",
      "    named = list(usable)\n", *GATEWAY_R),
    m("gateway-his-client-any-key", DELEGATION,
      "    if any(r.key is None or (r.key.e, r.key.n) == (numbers.e, numbers.n) for r in named):\n",
      "    if named:\n", *GATEWAY_R),
    m("gateway-unsigned-records-delegate", DELEGATION,
      "    if lookup.dnssec == SECURE or lookup.delegated_for is not None:\n", "    if True:\n",
      *GATEWAY_R),
    m("gateway-delegations-never-expire", "oe/delegations.py", "        if entry[1] <= now:\n",
      "        if False:\n", *GATEWAY_R),
    m("gateway-delegations-unbounded", "oe/delegations.py",
      "        while len(self._entries) >= self.capacity:\n", "        while False:\n", *GATEWAY_R),
    m("gateway-wait-retransmit-handled", IKE_SA,
      "        if self.deferred is not None and header.message_id == self.deferred[1].message_id:\n",
      "        if False:\n", "test_ike_child_wait.py"),
    m("ts-initiator-takes-widened", COMMON,
      "        raise IkeError(NotifyType.TS_UNACCEPTABLE, "
      "\"responder widened the traffic selectors\")\n", "        pass\n", *SELECTORS),
    m("ts-initiator-tsr-not-vouched", COMMON,
      "    if not all(any(t.is_subset_of(v) for v in vouched_ts) for t in remote):\n",
      "    if False:\n", *SELECTORS),
    m("ts-intersect-any-protocol", TSPY,
      "        if self.protocol and other.protocol and self.protocol != other.protocol:\n",
      "        if False:\n", *SELECTORS),
    # The daemon's glue: its selector policy (oe.admission decides) and what it installs
    m("daemon-ts-policy-ignored", ADMISSION,
      "            why = self.opportunist.inbound_allowed(ours, ipaddress.ip_address(ts.start))\n",
      "            why = None\n", "test_daemon.py", "test_admission.py"),
    m("daemon-sa-in-any-port", "oe/daemon.py",
      "                                        sport=remote_ports, dport=local_ports,\n", "",
      "test_daemon.py"),
    m("daemon-sa-any-protocol", "oe/daemon.py",
      "esn=child.esn, proto=proto)", "esn=child.esn, proto=0)", "test_daemon.py"),
    # DNS record validation (RFC 3110, RFC 4025, RFC 2535)
    m("dns-rsa-exponent-any", RECORDS, "    if e < 3 or e % 2 == 0:\n", "    if False:\n",
      "test_dnskeys_records.py"),
    m("dns-rsa-modulus-even", RECORDS, "    if n % 2 == 0:\n", "    if False:\n",
      "test_dnskeys_records.py"),
    m("dns-rsa-modulus-too-long", RECORDS, "    if n.bit_length() > RSA_MAX_BITS:\n",
      "    if False:\n", "test_dnskeys_refusals.py"),
    m("dns-rsa-exponent-not-below-modulus", RECORDS, "    if e >= n:\n", "    if False:\n",
      "test_dnskeys_records.py"),
    m("dns-gateway-unspecified", RECORDS, "    if address.is_unspecified:\n", "    if False:\n",
      "test_dnskeys_records.py"),
    m("dns-key-protocol-any", RECORDS, "    if rdata.protocol != KEY_PROTOCOL_IPSEC:\n",
      "    if False:\n", "test_dnskeys_refusals.py"),
    m("dns-key-flags-any", RECORDS, "    if int(rdata.flags) != KEY_FLAGS:\n", "    if False:\n",
      "test_dnskeys_refusals.py"),
    m("dns-txt-nul", RECORDS, "    if b\"\\0\" in raw:\n", "    if False:\n",
      "test_dnskeys_records.py"),
    m("dns-unsigned-delegation", "oe/dnskeys/choice.py",
      "        if not (target.is_self(record.gateway) or delegation):\n", "        if False:\n",
      "test_dnskeys_records.py"),
    # DNSSEC (issue 12): bogus denies, only secure answers delegate, require_dnssec holds
    m("dnssec-bogus-used", "oe/dnskeys/choice.py", "    if dnssec == BOGUS:\n",
      "    if False:\n", "test_dnssec_choice.py"),
    m("dnssec-require-ignored", "oe/dnskeys/choice.py",
      "    if require_dnssec and dnssec != SECURE:\n", "    if False:\n", "test_dnssec_choice.py"),
    m("dnssec-insecure-delegates", "oe/dnskeys/choice.py",
      "delegation=dnssec == SECURE or allow_unsigned_delegation,",
      "delegation=dnssec != BOGUS or allow_unsigned_delegation,", "test_dnssec_choice.py"),
    m("dnssec-strongest-counts", "oe/dnskeys/choice.py",
      "    for state in (BOGUS, OFF, INSECURE):\n", "    for state in (INSECURE,):\n",
      "test_dnssec_choice.py"),
    m("dns-answer-after-deadline-lost", "oe/dnskeys/unbound.py",
      "            if answered:\n                return answered[0]\n",
      "            if False:\n                return answered[0]\n", "test_dnssec_knot.py"),
    m("dnssec-bogus-data-kept", "oe/dnskeys/unbound.py", "    if result.bogus:\n",
      "    if False:\n", "test_dnssec_knot.py"),
    m("dnssec-unbound-insecure-as-secure", "oe/dnskeys/unbound.py",
      "    security = SECURE if result.secure else INSECURE\n", "    security = SECURE\n",
      "test_dnssec_knot.py"),
    # The fail-closed prohibit routes (docs/architecture.md section 1)
    m("route-no-prohibit", ROUTING,
      "    planned += [(network, \"prohibit\") for network in "
      "{ipaddress.ip_network(c) for c in prohibit}]\n", "", "test_routing.py"),
    m("route-prohibit-same-metric", ROUTING,
      "ipr.route(\"replace\", type=kind, priority=FAIL_CLOSED_METRIC, **args)",
      "ipr.route(\"replace\", type=kind, **args)", "test_routing.py", root=True),
    m("route-stop-drops-prohibit", ROUTING,
      "{_key(d, kind) for d, kind in steering.routes if kind != \"tun\"}",
      "{_key(d, kind) for d, kind in steering.routes if kind == \"throw\"}",
      "test_routing.py", root=True),
    # The inbound cleartext rules (RFC 4301 5.2)
    m("inbound-narrowed-private-refused", INBOUND,
      "        if eroute.group != \"private\" or (sel.proto, sel.sport, sel.dport) != (0, 0, 0):\n",
      "        if eroute.group != \"private\":\n", "test_inbound.py"),
    m("inbound-no-holes", INBOUND,
      "    holes += [e.selector.dst for e in base.entries if e.group != \"private\"]\n", "",
      "test_inbound.py"),
    m("inbound-any-udp-in-clear", INBOUND,
      "        \"    udp dport { 500, 4500 } accept\",\n",
      "        \"    meta l4proto udp accept\",\n",
      "netns/test_inbound_nft.py", root=True),
    m("inbound-sa-peers-not-refused", INBOUND,
      "        *(f\"    {ip} saddr . {ip} daddr @refused{family} counter name {COUNTER} drop\"\n",
      "        *(f\"    # refused{family} not checked\"\n",
      "netns/test_inbound_nft.py", root=True),
    # The forward chain of a gateway (issue 13, docs/gateway.md 2)
    m("forward-lan-sources-not-filtered", INBOUND,
      "                      f\"    iifname {lan} {ip} saddr != @subnets{family} \"\n"
      "                      f\"counter name {SPOOFED} drop\"]\n",
      "                      f\"    iifname {lan} {ip} saddr != @subnets{family} \"\n"
      "                      f\"counter name {SPOOFED}\"]\n",
      "netns/test_forward_nft.py", root=True),
    m("forward-refused-pairs-pass", INBOUND,
      "        rules += [f\"    {ip} saddr . {ip} daddr @refused{family} counter name {COUNTER} "
      "drop\",\n",
      "        rules += [f\"    {ip} saddr . {ip} daddr @refused{family} counter name {COUNTER}\",\n",
      "netns/test_forward_nft.py", root=True),
    m("gateway-subnets-trapped", "oe/routeplan.py",
      "        exempt = [str(ipaddress.ip_network(n)) for n in (*self._nameservers, *self._subnets)]\n",
      "        exempt = [str(ipaddress.ip_network(n)) for n in self._nameservers]\n",
      "test_routeplan.py"),
    m("gateway-subnet-everything-accepted", "oe/config.py",
      "        if network.prefixlen == 0:\n", "        if False:\n", "test_config.py"),
    m("forward-transit-open", INBOUND,
      "            rules.append(f\"    iifname {opened} {ip} daddr != @subnets{family} drop\")\n",
      "            pass\n", "netns/test_forward_nft.py", root=True),
    # The datapath (Cython and C in oe/dp/: one rebuild each)
    m("esp-replay-update-before-icv", ESP,
      "    if not replay_check(&sa.replay, seq):\n        return -R_REPLAY\n",
      "    if not replay_check(&sa.replay, seq):\n        return -R_REPLAY\n"
      "    replay_update(&sa.replay, seq)\n", "test_esp.py"),
    m("replay-window-unbounded", REPLAY,
      "    if r.top - seq >= r.window:\n        return False\n", "", "test_replay.py",
      "test_esp.py"),
    m("esp-inner-destination-unchecked", SAS,
      "    if memcmp(info.dst, sa.ts_dst_lo, alen) < 0 or "
      "memcmp(info.dst, sa.ts_dst_hi, alen) > 0:\n",
      "    if False:\n", "test_datapath_selectors.py", "test_esp.py"),
    m("esp-inner-protocol-unchecked", SAS,
      "    if sa.ts_proto and info.proto != sa.ts_proto:\n", "    if False:\n",
      "test_datapath_selectors.py", "test_esp.py"),
    m("esp-inner-source-port-unchecked", SAS,
      "        if info.sport < sa.ts_sport_lo or info.sport > sa.ts_sport_hi:\n",
      "        if False:\n", "test_datapath_selectors.py", "test_esp.py"),
    m("dp-recheck-counted", "oe/dp/classifier.pyx",
      "            if nbytes:  # a held packet's recheck",
      "            if True:  # a held packet's recheck", "test_counters.py"),
    m("dp-keymat-reinstalled", DATAPATH, "        if digest in self._keys:\n", "        if False:\n",
      "test_datapath.py"),
    # Path MTU (issue 17): the outer DF bit, the MTU told to local senders, the MSS clamp, the
    # probes' acknowledgement and the search's steps
    m("dp-df-not-copied", OUTBOUND, "    return info.df\n", "    return True\n",
      "test_datapath_pmtu.py"),
    m("dp-fragments-lose-more-fragments", OUTBOUND,
      "(0x2000 if not last or field & 0x2000 else 0)", "(0x2000 if not last else 0)",
      "test_datapath_pmtu.py"),
    m("dp-too-big-names-the-tun-mtu", OUTBOUND,
      "        if info.version == 4:\n            return sa.mtu\n",
      "        if info.version == 4:\n            return c.tun_mtu\n",
      "test_datapath.py", "test_datapath_pmtu.py"),
    m("dp-ipv6-told-below-1280", OUTBOUND,
      "            return sa.mtu if sa.mtu > IPV6_MIN_MTU else IPV6_MIN_MTU\n",
      "            return sa.mtu\n", "test_datapath_pmtu.py"),
    m("dp-inbound-clamp-ignores-the-sa", INBOUND_DP, "    if sa.mtu < mtu[0]:\n",
      "    if False:\n", "test_datapath_pmtu.py"),
    m("dp-any-echo-reply-taken-as-probe-ack", INBOUND_DP,
      "    if (oe_rd16(icmp + 4) != PROBE_ID or oe_rd32(icmp + 8) != PROBE_MAGIC_HI\n"
      "            or oe_rd32(icmp + 12) != PROBE_MAGIC_LO):\n",
      "    if oe_rd16(icmp + 4) != PROBE_ID:\n", "test_datapath_pmtu.py"),
    m("dp-too-big-about-any-spi-believed", "oe/dp/batch.pyx",
      "(any_spi or sa.spi == spi)", "True", "test_datapath_pmtu.py"),
    m("dp-send-failures-not-per-sa", "oe/dp/batch.pyx",
      "                oe_add64(&sa.err_send, b.failed[i].errors)\n", "",
      "test_datapath_pmtu.py"),
    m("dp-refused-datagram-not-retried", "oe/dp/csrc/sock.c",
      "            if (retried != sent) {\n", "            if (0) {\n",
      "test_datapath_pmtu.py"),
    m("dp-retransmission-never-seen", OUTBOUND,
      "    if sa.bh_flow[k] != flow or <int32_t>(end - sa.bh_end[k]) > 0:\n", "    if True:\n",
      "test_datapath_pmtu.py"),
    m("dp-small-retransmission-suspected", OUTBOUND,
      "    if n + sa.path_mtu - sa.mtu <= <size_t>(BASE_V4 if sa.family == 4 else BASE_V6):\n",
      "    if False:\n", "test_datapath_pmtu.py"),
    m("pmtu-paths-uncapped", "oe/pmtu.py", "            if len(self._paths) >= MAX_PATHS:\n",
      "            if False:\n", "test_pmtu.py"),
    m("pmtu-first-round-waits-for-another-timer", "oe/pmtu.py",
      "        if self._want_round and not self._in_flight:\n            return 0.0\n", "",
      "test_pmtu.py"),
    m("pmtu-probes-between-esp-steps", "oe/pmtu.py", "        return size - size % self.step\n",
      "        return size\n", "test_pmtu.py"),
    # The path MTU bookkeeping per event, not per peer (issue 14)
    m("pmtu-input-untold", "oe/pmtu.py", "            if self.watch is not None:\n",
      "            if False:\n", "test_pmtu.py"),
    m("pmtu-timer-unfiled", "oe/pmtu.py",
      "    def handle_timer(self, now: float) -> None:\n        self._file()\n",
      "    def handle_timer(self, now: float) -> None:\n        pass\n", "test_pmtu.py"),
    m("pmtu-gateway-forgotten-with-first-tunnel", "oe/pmtu.py",
      "                self._tunnels[peer] += 1\n", "                self._tunnels[peer] = 1\n",
      "test_pmtu.py"),
    m("pmtu-refused-sa-kept", "oe/pmtu.py",
      "        for peer in self._installed:\n", "        for peer in ():\n", "test_pmtu.py"),
    # The OE decisions and the daemon's bounds (issue 10, 3-12 and its review)
    m("oe-shunts-uncapped", OPP, "        while self._failures > self.limits.max_shunts:\n",
      "        while False:\n", "test_opportunist.py"),
    # The gateway's initiator (issue 13, docs/gateway.md 3 and 5)
    m("oe-delegated-key-unpinned", OPP,
      "        own = negotiation.index == 0 and gateway == pair.dst\n", "        own = True\n",
      "test_opportunist.py", "test_opportunist_gateways.py"),
    m("oe-ike-rate-unlimited", OPP, "        if self._tokens < 1:\n", "        if False:\n",
      "test_opportunist.py"),
    m("oe-lookups-unbounded", OPP, "        while self._pending and room > 0:\n",
      "        while self._pending:\n", "test_opportunist.py"),
    m("oe-child-collision-both-deleted", OPP,
      "                    min(old.spi_in, old.spi_out) < min(spi_in, spi_out):\n",
      "                    False:\n", "test_opportunist.py"),
    m("oe-client-check-skipped", OPP, "            if why is not None:\n",
      "            if False:\n", "test_opportunist_clients.py"),
    m("oe-foreign-source-negotiated", OPP, "        if role is None:\n", "        if False:\n",
      "test_opportunist_clients.py"),
    m("choice-fqdn-gateway-unsigned", "oe/dnskeys/choice.py",
      "    if state != SECURE and not allow_unsigned_delegation:\n", "    if False:\n",
      "test_dnskeys_candidates.py"),
    m("choice-fqdn-gateway-bogus-used", "oe/dnskeys/choice.py",
      "    if state == BOGUS:\n", "    if False:\n",
      "test_dnskeys_candidates.py"),
    m("oe-port-range-widened", "oe/flows.py",
      "        elif ts.start_port == ts.end_port and ts.start_port != 0:\n",
      "        elif ts.start_port != 0:\n", "test_opportunist.py"),
    # The daemon's decisions, now in oe.peerkeys, oe.admission and oe.lifecycle (issue 11, 3)
    m("daemon-keys-never-expire", KEYS, "        if entry is None or entry[1] <= now:\n",
      "        if entry is None:\n", "test_daemon.py", "test_admission.py"),
    m("daemon-lookups-unbounded", ADMISSION,
      "            if len(self.pending) + len(self.fetching) >= self.lookups:\n",
      "            if False:\n", "test_daemon.py", "test_admission.py"),
    m("admission-refusal-forgotten", ADMISSION,
      "        if self.refused.get(str(peer), now) > now:\n", "        if False:\n",
      "test_admission.py", "test_daemon.py"),
    m("admission-refusal-unanswered", ADMISSION,
      "            commands.append(RefuseInit(*waiting, REFUSAL))\n", "            pass\n",
      "test_admission.py", "test_daemon.py"),
    m("admission-refusals-unbounded", ADMISSION,
      "        while len(self.refused) >= REFUSALS_PER_LOOKUP * self.lookups:\n",
      "        while False:\n", "test_admission.py"),
    m("daemon-moved-peer-unchecked", ADMISSION,
      "        if why is not None:  # never let a peer point our ESP",
      "        if False:  # never let a peer point our ESP", "test_daemon.py", "test_admission.py"),
    m("daemon-childless-kept", LIFECYCLE, "            if now - since < CHILDLESS_GRACE:\n",
      "            if True:\n", "test_daemon.py", "test_lifecycle.py"),
    m("daemon-refused-child-leaves-hold", LIFECYCLE,
      "            commands += self.opportunist.negotiation_failed(pair, f\"CHILD SA refused: "
      "{why}\", now)\n", "            pass\n", "test_daemon.py", "test_lifecycle.py"),
    m("lifecycle-idle-sa-rekeyed", LIFECYCLE,
      "        recently = packets != self._used.get(sa_out, 0)\n", "        recently = True\n",
      "test_lifecycle.py"),
    m("lifecycle-busy-peers-probed", LIFECYCLE,
      "            if count == seen.get(tunnel.spi_in):\n", "            if True:\n",
      "test_lifecycle.py"),
    # One IKE SA per gateway for all its clients (docs/gateway.md 4.3, 5)
    m("lifecycle-reuse-ignores-key", LIFECYCLE,
      "    key = (lookup.key.e, lookup.key.n) if", "    key = None if", "test_lifecycle.py"),
    m("lifecycle-idle-child-takes-shared-ike", OPP,
      "        if self.tunnels_of(tunnel.sa_id) - {tunnel.pair}:\n", "        if False:\n",
      "test_lifecycle.py", "test_opportunist.py"),
    m("ike-refused-created-child-kept", CHILD_CREATE,
      "                sa.start(DeleteRefused(self.spi_in), now)\n", "                pass\n",
      "test_ike_pinned.py"),
    m("auth-pinned-key-ignored", IKE_AUTH,
      "    if sa.initiator and sa.pinned_key is not None:\n", "    if False:\n",
      "test_ike_pinned.py"),
    m("pinned-key-vouches-for-gateway", "oe/executor.py",
      "    return PeerKey(lookup.key.public_key(), frozenset({command.pair.dst}))\n",
      "    return PeerKey(lookup.key.public_key(), frozenset({command.pair.dst, command.peer}))\n",
      "test_daemon.py"),
    m("routeplan-cleartext-of-peers-kept", "oe/routeplan.py",
      "        if inbound and self._refused_changed:\n", "        if False:\n",
      "test_routeplan.py"),
    m("routeplan-peer-route-left-behind", "oe/routeplan.py",
      "    gone = sorted((key for key in changed if not counts[key] and key in installed), key=str)\n",
      "    gone = []\n", "test_routeplan.py"),
    m("daemon-timers-never-fire", "oe/executor.py",
      "            if deadline is not None and deadline <= now:\n", "            if False:\n",
      "test_daemon.py"),
    m("daemon-log-unescaped", "oe/logs.py",
      "        record.msg = printable(record.getMessage(), limit=LOG_LINE_MAX)\n",
      "        record.msg = record.getMessage()\n", "test_daemon.py"),
    m("hostkey-short-accepted", "oe/hostkey.py", "    if key.key_size < MIN_BITS:\n",
      "    if False:\n", "test_check.py"),
    m("hostkey-exposed-accepted", "oe/hostkey.py", "    if mode & 0o077:\n", "    if False:\n",
      "test_check.py"),
    m("reload-half-applies-restart-settings", "oe/config.py",
      "    kept = tuple(k for k in _differences(old, new) if k in RESTART_KEYS)\n",
      "    kept = ()\n", "test_config.py", "test_reload.py"),
]


def apply(text: str, mutant: Mutant) -> str:
    count = text.count(mutant.anchor)
    if count != 1:
        what = "anchor not found" if count == 0 else f"anchor found {count} times"
        raise SystemExit(f"mutation: {mutant.name}: {what} in {mutant.path}: "
                         f"{mutant.anchor.strip()[:70]!r}")
    return text.replace(mutant.anchor, mutant.replacement)


def run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(cwd), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def build(tree: Path) -> None:
    proc = run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], tree, 600)
    if proc.returncode != 0:
        raise SystemExit(f"mutation: build failed in {tree}:\n{proc.stderr[-2000:]}")


def copy_tree() -> Path:
    tree = Path(tempfile.mkdtemp(prefix="oe-mutation-"))
    skip = shutil.ignore_patterns("__pycache__", ".hypothesis", "build")

    def ignore(folder: str, names: list[str]) -> set[str]:
        # C that Cython generates from a .pyx beside it; the datapath's own C files are copied
        generated = {n for n in names if n.endswith(".c") and n[:-2] + ".pyx" in names}
        return skip(folder, names) | generated
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=ignore)
        else:
            shutil.copy2(src, tree / name)
    if not list((tree / "oe").glob("datapath*.so")):
        build(tree)
    proc = run([sys.executable, "-c", "import oe.datapath; print(oe.datapath.__file__)"],
               tree, 60)
    if not proc.stdout.startswith(str(tree)):
        raise SystemExit(f"mutation: the copy does not import its own oe: {proc.stdout}"
                         f"{proc.stderr}")
    return tree


def check(mutant: Mutant, tree: Path) -> str:
    """'killed', 'SURVIVED' or 'ERROR ...': the mutant's tests against the mutated copy."""
    path = tree / mutant.path
    original = path.read_text()
    path.write_text(apply(original, mutant))
    try:
        if mutant.compiled:
            build(tree)
        try:
            proc = run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                        *mutant.tests], tree, 300)
        except subprocess.TimeoutExpired:
            return "killed (timeout)"
    finally:
        path.write_text(original)
    if proc.returncode == 1 and "\nFAILED " in proc.stdout:  # a test failed, not its set-up
        return "killed"
    if proc.returncode == 0:
        return "SURVIVED"
    return f"ERROR (pytest exit {proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"


def main(argv: list[str]) -> int:
    if "--list" in argv:
        for mu in MUTANTS:
            print(f"{mu.name:40} {mu.path:22} {' '.join(mu.tests)}")
        return 0
    chosen = [mu for mu in MUTANTS if not argv or any(mu.name.startswith(a) for a in argv)]
    for mu in MUTANTS:  # every anchor, also of mutants not chosen: the list must stay true
        apply((ROOT / mu.path).read_text(), mu)
    skipped = [mu for mu in chosen if mu.root and os.geteuid() != 0]
    chosen = sorted((mu for mu in chosen if mu not in skipped), key=lambda mu: mu.compiled)
    start = time.monotonic()
    tree = copy_tree()
    failed = []
    try:
        for mu in chosen:
            t0 = time.monotonic()
            verdict = check(mu, tree)
            print(f"{verdict.splitlines()[0]:16} {mu.name} ({time.monotonic() - t0:.1f} s)",
                  flush=True)
            if not verdict.startswith("killed"):
                failed.append((mu, verdict))
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    took = time.monotonic() - start
    print(f"mutation: {len(chosen) - len(failed)} of {len(chosen)} mutants killed "
          f"in {took:.0f} s" + (f"; {len(skipped)} need root, not run" if skipped else ""))
    for mu, verdict in failed:
        print(f"mutation: {mu.name} ({mu.path}) {verdict}", file=sys.stderr)
    # the closing line CI reads: a killed mutant is a check that passed
    print(f"mutation: {len(chosen) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
