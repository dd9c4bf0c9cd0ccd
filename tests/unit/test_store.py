"""The model store library: numbering, atomic pointers with history, compare-and-swap, concurrency."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from ioc.core.store import ModelStore, StoreConflict, StoreError
from tests.support.models import linear_model, manifest_for


def _push(store: ModelStore, scale: float = 1.0) -> int:
    return store.add_version(linear_model([[scale]], [0.0]), manifest_for(["a"], ["y"]))


def test_versions_are_numbered_and_published_whole(tmp_path):
    store = ModelStore(tmp_path / "s")
    assert store.versions() == [] and store.champion() is None
    assert [_push(store), _push(store), _push(store)] == [1, 2, 3]
    assert store.versions() == [1, 2, 3]
    assert not [p for p in store.versions_dir.iterdir() if p.name.startswith(".")]  # no staging left over
    assert oct(store.version_dir(1).stat().st_mode & 0o777) == "0o755"


def test_champion_changes_are_recorded_and_rollback_walks_back(tmp_path):
    store = ModelStore(tmp_path / "s")
    for _ in range(3):
        _push(store)
    assert store.write_pointer("champion", 1) is None
    assert store.write_pointer("champion", 2) == 1
    assert store.write_pointer("champion", 3) == 2
    assert store.champion_history() == [1, 2]
    assert store.rollback_target() == 2
    assert store.rollback() == (3, 2)
    assert store.rollback() == (2, 1)
    assert store.champion() == 1
    with pytest.raises(StoreError, match="no earlier champion"):
        store.rollback()
    assert (tmp_path / "s" / "champion").read_text() == "1\n"


def test_rollback_from_the_served_version_skips_a_rejected_pointer(tmp_path):
    """The IOC serves v2 while the pointer names a rejected v3: a rollback from v2 goes to v1, not "to" v2."""
    store = ModelStore(tmp_path / "s")
    for _ in range(3):
        _push(store)
    for n in (1, 2, 3):
        store.write_pointer("champion", n)  # history [1, 2]
    assert store.rollback_target() == 2  # from the pointer (the shell's view)
    assert store.rollback_target(current=2) == 1  # from what is served
    with pytest.raises(StoreConflict):
        store.rollback(expect_champion=2, current=2)
    assert store.rollback(expect_champion=3, current=2) == (3, 1)
    assert store.champion() == 1 and store.champion_history() == []


def test_promote_moves_challenger_to_champion(tmp_path):
    store = ModelStore(tmp_path / "s")
    _push(store), _push(store)
    store.write_pointer("champion", 1)
    with pytest.raises(StoreError, match="no challenger"):
        store.promote()
    store.write_pointer("challenger", 2)
    assert store.promote() == (1, 2)
    assert (store.champion(), store.challenger()) == (2, None)
    assert store.rollback() == (2, 1)


def test_compare_and_swap_refuses_a_stale_expectation(tmp_path):
    store = ModelStore(tmp_path / "s")
    _push(store), _push(store)
    store.write_pointer("champion", 1)
    with pytest.raises(StoreConflict):
        store.write_pointer("champion", 2, expect=None)
    store.write_pointer("champion", 2, expect=1)
    with pytest.raises(StoreConflict):
        store.rollback(expect_champion=1)
    with pytest.raises(StoreError, match="does not exist"):
        store.write_pointer("champion", 99)


def test_malformed_pointer_is_an_error_not_a_guess(tmp_path):
    store = ModelStore(tmp_path / "s")
    _push(store)
    (tmp_path / "s" / "champion").write_text("latest\n")
    with pytest.raises(StoreError, match="expected a version number"):
        store.champion()


def _many_pushes(root: str, n: int, queue) -> None:
    store = ModelStore(root)
    queue.put([_push(store) for _ in range(n)])


def test_concurrent_writers_never_share_a_version_number(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_many_pushes, args=(str(tmp_path / "s"), 8, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [n for _ in procs for n in queue.get(timeout=60)]
    for p in procs:
        p.join(10)
    assert sorted(got) == list(range(1, 33))
    store = ModelStore(tmp_path / "s")
    assert store.versions() == list(range(1, 33))
    for n in store.versions():  # every published version is whole and consistent
        assert store.manifest_path(n).is_file() and store.onnx_path(n).stat().st_size > 0


def test_events_are_one_json_line_each(tmp_path):
    store = ModelStore(tmp_path / "s")
    store.append_event("promote", from_version=1, to_version=2, user="op", host="console")
    store.append_event("rollback", from_version=2, to_version=1, reason="drift")
    events = store.events()
    assert [e["action"] for e in events] == ["promote", "rollback"]
    assert events[0]["user"] == "op" and events[1]["reason"] == "drift" and events[0]["time"] > 0
    assert len(store.events_path.read_text().splitlines()) == 2
    assert os.stat(store.events_path).st_size > 0


def test_a_store_with_a_template_is_created_from_it_once(tmp_path):
    from ioc.core.store import seed_store

    template = ModelStore(tmp_path / "shipped")
    n = template.add_version(b"onnx bytes", {"format": 1})
    template.write_pointer("champion", n)
    work = tmp_path / "data" / "store" / "m"
    assert seed_store(work, template.root)
    copy = ModelStore(work)
    assert copy.champion() == n and copy.onnx_path(n).read_bytes() == b"onnx bytes"
    copy.append_event("push", to_version=2)  # the working copy changes ...
    assert not seed_store(work, template.root)  # ... and is never replaced once it exists
    assert [e["action"] for e in copy.events()][-1] == "push" and template.events() == []
    assert sorted(p.name for p in work.parent.iterdir()) == ["m"]  # no staging left behind
