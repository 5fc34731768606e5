"""Sans-IO IKEv2 (RFC 7296): codecs, key schedule, authentication and the SA engine.

Nothing in this package opens a socket, reads the clock or draws randomness by itself: the
caller passes ``now`` and an ``rng``. The asyncio shell is oe.ike.runner.
"""
