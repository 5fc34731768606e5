#!/usr/bin/env bash
# A walk through policy groups: write example policies into a scratch config dir, then ask oe
# what it would do with a few packets. Touches nothing outside that directory.
set -euo pipefail
OE=${OE:-oe}
conf=$(mktemp -d)
trap 'rm -rf "$conf"' EXIT
mkdir -p "$conf/policies"
cat > "$conf/policies/private-or-clear" <<'P'
# Encrypt wherever the peer publishes a key, fall back to clear otherwise.
0.0.0.0/0
::/0
P
cat > "$conf/policies/private" <<'P'
# The lab: encrypted or not at all.
192.0.2.0/24
2001:db8:1::/48 tcp 0 22
P
cat > "$conf/policies/clear" <<'P'
# Our resolver must stay reachable in clear, or OE could never look up a key.
192.0.2.53
P
cat > "$conf/policies/block" <<'P'
203.0.113.0/24
P
say() { printf '\n$ %s\n' "$*"; "$@"; }
say $OE --confdir "$conf" policy
say $OE --confdir "$conf" status
say $OE --confdir "$conf" trace 192.0.2.7 --src 192.0.2.2
say $OE --confdir "$conf" trace 192.0.2.53 --src 192.0.2.2
say $OE --confdir "$conf" trace 198.51.100.9 --src 192.0.2.2 --json
say $OE --confdir "$conf" trace 2001:db8:1::9 --src 2001:db8::2 --proto tcp --dport 22
say $OE --confdir "$conf" trace 203.0.113.5 --src 192.0.2.2
echo '192.0.2.0/33' >> "$conf/policies/private"
printf '\n$ %s\n' "echo 192.0.2.0/33 >> policies/private; oe policy   # a bad line: nothing loads"
$OE --confdir "$conf" policy || echo "(exit status $?)"
