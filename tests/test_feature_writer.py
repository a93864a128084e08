"""The features cache under concurrency and kills: one writer at a time, committed whole, leftovers cleared.

Real stores in ``tmp_path`` and real processes: writers run as ``python -c`` subprocesses of this
interpreter that pause (or kill themselves) at a chosen point, so the lock, the temporary array and
the commit are exercised as a second program or a crash would meet them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import napari_conformal
from napari_conformal.errors import ConformalError, StoreExistsError, StoreValidationError
from napari_conformal.io.lock import StoreBusyError
from napari_conformal.io.readers import read_store
from napari_conformal.io.store import create_store, open_store

pytestmark = pytest.mark.skipif(os.name != "posix", reason="kills and pids: POSIX")

N = 4
SHAPE = (6, 5)
ROOT = Path(napari_conformal.__file__).resolve().parents[1]
ARRAYS = {"images", "labels", "samples", "features", "zarr.json"}

#: A feature writer. argv: store, value, channels, ready file, go file, pause_at, kill_at.
#: Image i's features are all ``value``; the record says ``extractor = {"value": value}``. At image
#: ``pause_at`` it writes ``ready`` and waits for ``go`` (the parent may kill it then). ``kill_at``
#: names a point of the commit where it SIGKILLs itself: "aside" (after the previous cache was
#: renamed aside, before the new one is renamed in) or "committed" (new cache in place, the previous
#: one not yet removed).
WRITER = r"""
import os, signal, sys, time
from pathlib import Path
import numpy as np
from napari_conformal.io import feature_cache
from napari_conformal.io.store import open_store

path, value, channels = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
ready, go, pause_at, kill_at = Path(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6]), sys.argv[7]

if kill_at != "none":
    rename, rmtree = os.rename, feature_cache.shutil.rmtree

    def killing_rename(src, dst):
        rename(src, dst)
        if kill_at == "aside" and Path(dst).name.startswith(".features.old-"):
            os.kill(os.getpid(), signal.SIGKILL)

    def killing_rmtree(p, *a, **k):
        if kill_at == "committed" and Path(p).name.startswith(".features.old-"):
            os.kill(os.getpid(), signal.SIGKILL)
        return rmtree(p, *a, **k)

    feature_cache.os.rename = killing_rename
    feature_cache.shutil.rmtree = killing_rmtree

store = open_store(path, mode="r+")

def per_image():
    for i in range(store.n_images):
        if i == pause_at:
            ready.write_text("paused")
            while not go.exists():
                time.sleep(0.01)
        yield np.full((channels, *store.spatial_shape), value, np.float32)

store.write_features(per_image(), info={"extractor": {"value": value}}, overwrite=True)
print("done", flush=True)
"""


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(N, *SHAPE)).astype(np.float32)
    probs = rng.random((N, 3, 2, *SHAPE))
    probs /= probs.sum(axis=2, keepdims=True)
    labels = rng.integers(0, 2, size=(N, *SHAPE))
    return images, probs.astype(np.float32), labels


def _features(value: float, channels: int) -> np.ndarray:
    return np.full((N, channels, *SHAPE), value, np.float32)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A store whose cache holds 1.0 everywhere, 2 channels, recorded as extractor value 1."""
    path = tmp_path / "s.zarr"
    images, samples, labels = _data()
    create_store(
        path, images, samples, labels, features=_features(1.0, 2), features_info={"extractor": {"value": 1.0}}
    )
    return path


def _spawn(path: Path, tmp: Path, value: float, channels: int, pause_at: int = N + 1, kill_at: str = "none"):
    ready, go = tmp / f"ready-{value}", tmp / f"go-{value}"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-c", WRITER, str(path), str(value), str(channels), str(ready), str(go)]
    proc = subprocess.Popen(
        [*argv, str(pause_at), kill_at], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc, ready, go


def _wait_for(proc: subprocess.Popen, ready: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("writer never paused")
        time.sleep(0.01)


def _cache(path: Path) -> tuple[float, int] | None:
    """(value, channels) of the store's cache, after checking that its record and every image agree."""
    store = open_store(path)
    if not store.has_features:
        assert store.features_info is None and "features" not in store.attrs
        return None
    info = store.features_info
    assert info == store.attrs["features"]
    value = info["extractor"]["value"]
    assert (info["n_channels"], *info["grid_shape"]) == store.feature_shape
    for i in range(N):
        np.testing.assert_array_equal(store.features(i), np.full(store.feature_shape, value, np.float32))
    return value, info["n_channels"]


def _leftovers(path: Path) -> list[str]:
    return sorted(set(os.listdir(path)) - ARRAYS)


# -- two writers --------------------------------------------------------------------------------------


def test_second_writer_is_refused_and_the_first_completes(store_path: Path, tmp_path: Path):
    first, ready, go = _spawn(store_path, tmp_path, value=2.0, channels=3, pause_at=2)
    try:
        _wait_for(first, ready)  # it holds the lock, two images in its temporary array
        second = open_store(store_path, mode="r+")
        message = rf"another process \(pid {first.pid}\b.*\) is writing features to the store at .*s\.zarr"
        with pytest.raises(StoreBusyError, match=message) as caught:
            second.write_features(_features(3.0, 4), info={"extractor": {"value": 3.0}}, overwrite=True)
        assert isinstance(caught.value, ConformalError)  # one line on the command line, exit status 2
        assert _cache(store_path) == (1.0, 2)  # readers meanwhile see the previous cache, whole
    finally:
        go.write_text("go")
        _out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert _cache(store_path) == (2.0, 3)  # the first writer's result, intact
    assert _leftovers(store_path) == []
    second.write_features(_features(3.0, 4), info={"extractor": {"value": 3.0}}, overwrite=True)  # now free
    assert _cache(store_path) == (3.0, 4)


def test_second_writer_in_the_same_process_is_refused(store_path: Path):
    a, b = open_store(store_path, mode="r+"), open_store(store_path, mode="r+")
    writer = a.iter_write_features(
        iter(_features(2.0, 3)), info={"extractor": {"value": 2.0}}, overwrite=True
    )
    next(writer)
    with pytest.raises(StoreBusyError, match=rf"another writer in this process \(pid {os.getpid()}\b"):
        b.write_features(_features(3.0, 1), overwrite=True)
    for _ in writer:
        pass
    assert _cache(store_path) == (2.0, 3)


def test_overwrite_false_sees_features_written_since_opening(tmp_path: Path):
    images, samples, labels = _data()
    path = tmp_path / "bare.zarr"
    create_store(path, images, samples, labels)
    stale = open_store(path, mode="r+")
    open_store(path, mode="r+").write_features(_features(5.0, 1), info={"extractor": {"value": 5.0}})
    assert not stale.has_features  # opened before: its view is old, the disk is checked under the lock
    with pytest.raises(StoreExistsError, match="already has features"):
        stale.write_features(_features(6.0, 1))
    assert _cache(path) == (5.0, 1)


# -- killed writers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.parametrize("old_cache", [True, False])
def test_writer_killed_mid_write(store_path: Path, tmp_path: Path, sig, old_cache):
    if not old_cache:
        path = tmp_path / "bare.zarr"
        create_store(path, *_data())
    else:
        path = store_path
    before = _cache(path)
    opened_before = open_store(path, mode="r+")  # its open-time clean-up ran before the leftover existed
    proc, ready, _go = _spawn(path, tmp_path, value=2.0, channels=3, pause_at=2)
    _wait_for(proc, ready)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == -sig
    assert any(name.startswith(".features.tmp-") for name in _leftovers(path))  # what the kill left

    assert _cache(path) == before  # the store opens, with the old cache (or none), never half of one
    assert any(name.startswith(".features.tmp-") for name in _leftovers(path))  # reading clears nothing

    # the next write clears the leftover; replacing the cache (what `features --overwrite` does) works
    writer = opened_before.iter_write_features(
        iter(_features(3.0, 1)), info={"extractor": {"value": 3.0}}, overwrite=True
    )
    for _ in writer:
        pass
    assert _leftovers(path) == []
    assert _cache(path) == (3.0, 1)


def test_leftover_cleared_on_open_for_writing(store_path: Path, tmp_path: Path):
    proc, ready, _go = _spawn(store_path, tmp_path, value=2.0, channels=3, pause_at=1)
    _wait_for(proc, ready)
    proc.kill()
    proc.wait(timeout=60)
    assert _leftovers(store_path)
    open_store(store_path)  # read-only: leaves it
    assert _leftovers(store_path)
    open_store(store_path, mode="r+")
    assert _leftovers(store_path) == []
    assert _cache(store_path) == (1.0, 2)


@pytest.mark.parametrize(("kill_at", "expect"), [("aside", (1.0, 2)), ("committed", (2.0, 3))])
def test_writer_killed_while_committing(store_path: Path, tmp_path: Path, kill_at, expect):
    """Killed between its two renames (no ``features`` for an instant) or before removing the old cache."""
    proc, _ready, _go = _spawn(store_path, tmp_path, value=2.0, channels=3, kill_at=kill_at)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    aside = [n for n in _leftovers(store_path) if n.startswith(".features.old-")]
    assert aside
    seen = _cache(store_path)
    assert seen in (None, (1.0, 2)) if kill_at == "aside" else seen == (2.0, 3)
    open_store(store_path, mode="r+")  # the previous cache is put back, or the remains removed
    assert _leftovers(store_path) == []
    assert _cache(store_path) == expect
    open_store(store_path, mode="r+").write_features(
        _features(4.0, 2), info={"extractor": {"value": 4.0}}, overwrite=True
    )
    assert _cache(store_path) == (4.0, 2)


def test_leftover_of_a_live_process_is_kept(store_path: Path):
    """Only a leftover whose process is gone is cleared: a writer that is alive may still be using it."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = __import__("socket").gethostname()
        host = "".join(c if c.isalnum() or c in "_." else "_" for c in host)
        live = store_path / f".features.tmp-{host}-{sleeper.pid}-0123456789ab"
        live.mkdir()
        (live / "zarr.json").write_text("{half-writ")  # what a writer in mid-metadata looks like
        assert _cache(store_path) == (1.0, 2)  # never read as part of the store
        assert len(read_store(store_path)) == 4  # nor by the napari reader
        open_store(store_path, mode="r+")
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    open_store(store_path, mode="r+")
    assert not live.exists()


# -- readers never see a half-written cache -------------------------------------------------------------

#: Rewrites the cache of argv[1] argv[2] times, value k and 1 + k % 3 channels, as fast as it can.
REWRITER = r"""
import sys
import numpy as np
from napari_conformal.io.store import open_store
store = open_store(sys.argv[1], mode="r+")
for k in range(2, 2 + int(sys.argv[2])):
    c = 1 + k % 3
    feats = np.full((store.n_images, c, *store.spatial_shape), float(k), np.float32)
    store.write_features(feats, info={"extractor": {"value": float(k)}}, overwrite=True)
"""


def test_record_and_data_agree_for_a_reader_during_rewrites(store_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    writer = subprocess.Popen(
        [sys.executable, "-c", REWRITER, str(store_path), "40"], env=env, stderr=subprocess.PIPE
    )
    seen, replaced, absent = set(), 0, 0
    try:
        while writer.poll() is None:
            try:
                got = _cache(store_path)
            except StoreValidationError as exc:  # the cache changed under an open store: refused, not mixed
                assert "was replaced while this store was open" in str(exc), exc
                replaced += 1
                continue
            if got is None:
                absent += 1  # the instant of the swap
            else:
                value, channels = got
                assert channels == 1 + int(value) % 3 if value != 1.0 else channels == 2
                seen.add(value)
    finally:
        _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    print(f"seen {sorted(seen)}, replaced {replaced}, absent {absent}")
    assert len(seen) >= 3, (seen, replaced, absent)  # the reader really ran during many writes
    assert _cache(store_path) == (41.0, 1 + 41 % 3)
    assert _leftovers(store_path) == []


# -- the record lives with the data -------------------------------------------------------------------


def test_record_is_stored_in_the_features_array(store_path: Path):
    doc = json.loads((store_path / "features" / "zarr.json").read_text())
    assert doc["attributes"]["features"] == {
        "extractor": {"value": 1.0},
        "n_channels": 2,
        "grid_shape": list(SHAPE),
    }
    assert "features" not in json.loads((store_path / "zarr.json").read_text())["attributes"]
    store = open_store(store_path, mode="r+")
    store.write_features(_features(2.0, 3), info={"extractor": {"value": 2.0}}, overwrite=True)
    assert "features" not in json.loads((store_path / "zarr.json").read_text())["attributes"]
    doc2 = json.loads((store_path / "features" / "zarr.json").read_text())
    assert doc2["attributes"]["write_id"] != doc["attributes"]["write_id"]


def test_record_disagreeing_with_its_array_is_damage(store_path: Path):
    meta = store_path / "features" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["features"]["n_channels"] = 7
    meta.write_text(json.dumps(doc))
    with pytest.raises(
        StoreValidationError, match=r"features: its record says n_channels=7.*\(C, \*S'\) = \(2, 6, 5\)"
    ):
        open_store(store_path)


def test_legacy_group_record(store_path: Path):
    """Stores of older writers keep the record as a group attribute: used only while it fits the array."""
    meta = store_path / "features" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"] = {}
    meta.write_text(json.dumps(doc))
    group = store_path / "zarr.json"
    gdoc = json.loads(group.read_text())
    gdoc["attributes"]["features"] = {"extractor": "old", "n_channels": 2, "grid_shape": list(SHAPE)}
    group.write_text(json.dumps(gdoc))
    assert open_store(store_path).features_info == {
        "extractor": "old",
        "n_channels": 2,
        "grid_shape": list(SHAPE),
    }
    # a legacy record left from before a swap (the old writer's kill window): not trusted
    gdoc["attributes"]["features"] = {"extractor": "old", "n_channels": 9, "grid_shape": list(SHAPE)}
    group.write_text(json.dumps(gdoc))
    store = open_store(store_path, mode="r+")
    assert store.has_features and store.features_info is None and "features" not in store.attrs
    store.write_features(_features(2.0, 3), info={"extractor": {"value": 2.0}}, overwrite=True)
    assert _cache(store_path) == (2.0, 3)  # the array's own record wins over the stale group one


def test_legacy_shared_temporary_is_cleared(store_path: Path):
    """``features.partial``, the fixed temporary name of writers without the lock, is removed by the next write."""
    partial = store_path / "features.partial"
    partial.mkdir()
    (partial / "zarr.json").write_text("{}")
    assert _cache(store_path) == (1.0, 2)
    store = open_store(store_path, mode="r+")
    assert not partial.exists()
    store.write_features(_features(2.0, 3), info={"extractor": {"value": 2.0}}, overwrite=True)
    assert _cache(store_path) == (2.0, 3)
