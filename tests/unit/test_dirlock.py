"""One process per state / recording directory (ioc/edges/dirlock.py)."""

from __future__ import annotations

import os

import pytest

from ioc.edges.dirlock import DirectoryLocked, DirLock


def test_a_held_directory_is_refused_with_its_holder_and_free_again_once_released(tmp_path):
    held = DirLock(tmp_path / "state", "state directory").acquire()
    with pytest.raises(DirectoryLocked, match=rf"state directory {tmp_path / 'state'} is in use by pid {os.getpid()} "):
        DirLock(tmp_path / "state", "state directory").acquire()
    held.release()
    DirLock(tmp_path / "state", "state directory").acquire().release()  # the .lock file left behind is no lock
