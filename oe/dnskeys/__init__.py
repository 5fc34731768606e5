"""Peers' public keys from DNS: IPSECKEY (RFC 4025), FreeS/WAN's TXT X-IPsec-Server and KEY.

records  the RFC 3110 blob and the three record codecs (pure)
choice   which record and key a target publishes, RFC 4322 3.2 (pure)
delegation  does a client's record delegate to a gateway: pluto's "our client" and "his
         client" checks, RFC 4322 3.3 (pure)
fetcher  the DNS and zone-file I/O, cache and budget
unbound  the validating source: libunbound, each answer secure, insecure or bogus
"""

from oe.dnskeys.choice import KeyLookup, Target, Verdict, check_own, choose, dnssec_advice
from oe.dnskeys.records import KeyRecord, RecordError, RsaPublicKey, fingerprint, key_id

__all__ = ["KeyLookup", "KeyRecord", "RecordError", "RsaPublicKey", "Target", "Verdict",
           "check_own", "choose", "dnssec_advice", "fingerprint", "key_id"]
