"""oe: FreeS/WAN's Opportunistic Encryption with IKEv2 and a Cython ESP datapath."""

__version__ = "0.1.0"
