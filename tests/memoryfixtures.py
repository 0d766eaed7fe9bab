"""Helpers shared by the memory tests (here and in tests/eval)."""


def stream(memory, feats, chunks, state=None):
    """Push ``feats`` through ``memory.update`` in chunks of the given sizes; the (same) state afterwards."""
    state = memory.init_state() if state is None else state
    start = 0
    for size in chunks:
        assert memory.update(state, feats[start:start + size]) is state
        start += size
    assert start == len(feats)
    return state
