"""The cyclic garbage collector paused while the engine allocates what it keeps."""
from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def paused_gc():
    """Pause the cyclic garbage collector, and hand what survives to its oldest generation.

    A simulation allocates a few hundred thousand tuples (records, actions, producer lists) that
    all stay alive; each allocation burst triggers collections that rescan them, which cost as
    much as the simulation itself on large schedules. The engine makes no reference cycles, so
    nothing is lost by not collecting. Re-enabled as it was, the collector would scan them all at the
    next allocation (a young collection of every object made meanwhile: a fifth of the simulation's
    time at p = 64, m = 1024); ``gc.freeze()`` then ``gc.unfreeze()`` moves them to the oldest
    generation instead, which a full collection scans when Python next runs one. Skipped while the
    caller keeps objects frozen (``gc.get_freeze_count()``), whose freeze this must not undo.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
