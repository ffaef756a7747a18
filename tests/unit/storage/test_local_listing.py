"""LocalStore.list walks the folders lazily, one at a time, in key order: a listing of millions of
keys (a month of one-second segments) never sits in memory whole."""
import shutil

from backupkit.storage.local import LocalStore


def test_list_is_in_key_order_and_walks_lazily(tmp_path):
    store = LocalStore(tmp_path / "repo")
    keys = ["a-b", "a/x", "a/y/z", "b/1", "b/2", "c/1", "c.d"]
    for k in keys:
        store.put(k, b"1")
    assert [i.key for i in store.list("")] == sorted(keys)
    assert [i.key for i in store.list("a")] == ["a-b", "a/x", "a/y/z"]
    assert [i.key for i in store.list("a/")] == ["a/x", "a/y/z"]
    it = store.list("")
    assert next(it).key == "a-b"
    shutil.rmtree(tmp_path / "repo" / "c")  # a folder not walked yet: never read
    assert [i.key for i in it] == ["a/x", "a/y/z", "b/1", "b/2", "c.d"]
