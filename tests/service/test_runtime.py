"""ModelRuntime helpers that need no model."""

from __future__ import annotations


def test_freeze_startup_objects_collects_garbage_first_then_freezes_the_rest() -> None:
    import gc
    import weakref

    from dermagan.service.runtime import freeze_startup_objects

    class Node:
        pass

    garbage, alive = Node(), Node()
    garbage.self = garbage  # a cycle: only the collector can free it
    gone = weakref.ref(garbage)
    del garbage
    try:
        freeze_startup_objects()
        assert gone() is None  # collected, not frozen for the process's life
        assert gc.get_freeze_count() > 0
        assert not any(o is alive for o in gc.get_objects())  # frozen objects are out of the collector's reach
    finally:
        gc.unfreeze()
    assert any(o is alive for o in gc.get_objects())
