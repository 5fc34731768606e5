"""The RFC 6479 anti-replay window against a naive set model (RFC 4303 3.4.3)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from oe.datapath import ReplayWindow


class SetModel:
    """Accept a sequence number once, if it is above top - window (the RFC's definition)."""

    def __init__(self, window):
        self.window = window
        self.seen = set()
        self.top = 0

    def accept(self, seq):
        if seq == 0 or seq in self.seen or (seq <= self.top and self.top - seq >= self.window):
            return False
        self.seen.add(seq)
        self.top = max(self.top, seq)
        return True


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([1, 32, 64, 100, 128, 4096]),
       st.lists(st.integers(min_value=-5000, max_value=9000), max_size=300))
def test_window_agrees_with_set_model(window, steps):
    """Each step is an offset from the current top: replays, old, in-window and jumps."""
    ring, model = ReplayWindow(window), SetModel(window)
    for step in steps:
        seq = max(0, model.top + step)
        assert ring.accept(seq) == model.accept(seq), (seq, model.top)
        assert ring.top == model.top


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2 ** 20), max_size=200))
def test_check_does_not_update(seqs):
    """check() is side-effect free: forged packets (ICV failure) never move the window."""
    ring = ReplayWindow(64)
    for seq in seqs:
        before = ring.top
        ring.check(seq)
        assert ring.top == before


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=1, max_value=2 ** 63), st.sampled_from([32, 4096]),
       st.integers(min_value=-4095, max_value=2 ** 31 - 1))
def test_esn_inference_recovers_the_high_half(top, window, delta):
    """RFC 4303 A2.2: within the window or ahead of it, seq-low alone gives back the ESN."""
    ring = ReplayWindow(window)
    ring.update(top)
    seq = top + max(delta, -(window - 1))
    if seq <= 0:
        return
    assert ring.esn_seq(seq & 0xFFFFFFFF) == seq


def test_default_window_is_large():
    ring = ReplayWindow()
    ring.accept(10_000)
    assert ring.accept(10_000 - 4095)
    assert not ring.accept(10_000 - 4096)
