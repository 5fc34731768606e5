# cython: language_level=3
"""The per-packet engine: compiled eroute classifier (ESP and loops to follow)."""
