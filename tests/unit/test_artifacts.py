from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest

from models.artifacts import MARKER_SUFFIX, ArtifactRef, ArtifactStore, digest_dir
from models.errors import ArtifactError, DigestMismatchError


def _make_artifact(root: Path, weights: bytes = b"\x00\x01weights") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text('{"kind": "tiny-embed"}')
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "head.pt").write_bytes(weights)
    return root


def test_digest_dir_is_deterministic_and_independent_of_creation_order(tmp_path):
    a = _make_artifact(tmp_path / "a")
    b = tmp_path / "b"
    (b / "sub").mkdir(parents=True)
    (b / "sub" / "head.pt").write_bytes(b"\x00\x01weights")
    (b / "manifest.json").write_text('{"kind": "tiny-embed"}')
    assert digest_dir(a) == digest_dir(b)
    assert len(digest_dir(a)) == 64


def test_digest_dir_changes_with_content_and_with_file_names(tmp_path):
    base = digest_dir(_make_artifact(tmp_path / "a"))
    assert digest_dir(_make_artifact(tmp_path / "b", weights=b"\x00\x02weights")) != base
    renamed = _make_artifact(tmp_path / "c")
    (renamed / "sub" / "head.pt").rename(renamed / "sub" / "head2.pt")
    assert digest_dir(renamed) != base


def test_digest_dir_does_not_confuse_path_and_content_boundaries(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    x.mkdir()
    y.mkdir()
    (x / "ab").write_bytes(b"c")
    (y / "a").write_bytes(b"bc")
    assert digest_dir(x) != digest_dir(y)


def test_digest_dir_of_a_missing_directory_raises_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="not a directory"):
        digest_dir(tmp_path / "nope")


def test_put_stores_under_the_digest_and_fetch_returns_the_stored_directory(tmp_path):
    src = _make_artifact(tmp_path / "src")
    store = ArtifactStore(str(tmp_path / "store"))
    ref = store.put(src)
    assert ref == ArtifactRef(uri=f"{tmp_path / 'store'}/{digest_dir(src)}", sha256=digest_dir(src))
    got = store.fetch(ref)
    assert got == tmp_path / "store" / ref.sha256
    assert (got / "sub" / "head.pt").read_bytes() == b"\x00\x01weights"
    assert (tmp_path / "store" / f"{ref.sha256}{MARKER_SUFFIX}").is_file()
    # No temp directories left behind.
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [ref.sha256, f"{ref.sha256}{MARKER_SUFFIX}"]


def test_put_twice_is_a_no_op(tmp_path):
    src = _make_artifact(tmp_path / "src")
    store = ArtifactStore(str(tmp_path / "store"))
    ref = store.put(src)
    mtime = (tmp_path / "store" / ref.sha256 / "manifest.json").stat().st_mtime_ns
    assert store.put(src) == ref
    assert (tmp_path / "store" / ref.sha256 / "manifest.json").stat().st_mtime_ns == mtime


def test_fetch_by_uri_infers_the_digest_from_the_address(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    ref = store.put(_make_artifact(tmp_path / "src"))
    assert store.fetch(ref.uri) == store.fetch(ref)
    assert store.fetch(ref.uri, sha256=ref.sha256) == store.fetch(ref)


def test_fetch_of_a_modified_artifact_names_both_digests(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    ref = store.put(_make_artifact(tmp_path / "src"))
    stored = tmp_path / "store" / ref.sha256
    (stored / "sub" / "head.pt").write_bytes(b"tampered")
    actual = digest_dir(stored)
    with pytest.raises(DigestMismatchError) as err:
        store.fetch(ref)
    msg = str(err.value)
    assert ref.sha256 in msg and actual in msg and "modified or corrupted" in msg


def test_fetch_with_a_wrong_expected_digest_raises(tmp_path):
    src = _make_artifact(tmp_path / "src")
    with pytest.raises(DigestMismatchError):
        ArtifactStore(str(tmp_path / "store")).fetch(str(src), sha256="0" * 64)


def test_fetch_of_a_missing_artifact_raises_artifact_error(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(ArtifactError, match="does not exist"):
        store.fetch(ArtifactRef(uri=store.uri_for("a" * 64), sha256="a" * 64))


def test_a_half_written_artifact_without_its_marker_is_not_fetched(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    ref = store.put(_make_artifact(tmp_path / "src"))
    (tmp_path / "store" / f"{ref.sha256}{MARKER_SUFFIX}").unlink()
    assert not store.exists(ref.sha256)
    with pytest.raises(ArtifactError, match="incomplete"):
        store.fetch(ref)


def test_fetch_of_a_uri_without_digest_needs_sha256(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        ArtifactStore(str(tmp_path)).fetch(str(tmp_path / "plain-dir"))


def test_put_of_an_empty_directory_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="empty"):
        ArtifactStore(str(tmp_path / "store")).put(tmp_path / "empty")


@pytest.fixture
def memory_root():
    # memory:// exercises the remote (non-local) code path with no network.
    root = f"memory://tandem-test-{uuid.uuid4().hex}/artifacts"
    yield root
    fs = fsspec.filesystem("memory")
    fs.rm(root.removeprefix("memory://").split("/")[0], recursive=True)


def test_remote_store_round_trips_through_the_local_cache(tmp_path, memory_root):
    src = _make_artifact(tmp_path / "src")
    store = ArtifactStore(memory_root, cache_dir=tmp_path / "cache")
    ref = store.put(src)
    assert ref.uri == f"{memory_root}/{ref.sha256}"
    assert store.exists(ref.sha256)
    local = store.fetch(ref)
    assert local == tmp_path / "cache" / ref.sha256
    assert digest_dir(local) == ref.sha256
    assert store.put(src) == ref


def test_remote_fetch_detects_tampering_in_the_store(tmp_path, memory_root):
    store = ArtifactStore(memory_root, cache_dir=tmp_path / "cache")
    ref = store.put(_make_artifact(tmp_path / "src"))
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{ref.uri.removeprefix('memory://')}/sub/head.pt", b"tampered")
    with pytest.raises(DigestMismatchError, match=ref.sha256):
        store.fetch(ref)
    assert not (tmp_path / "cache" / ref.sha256).exists()


def test_remote_fetch_replaces_a_damaged_cache_entry(tmp_path, memory_root):
    store = ArtifactStore(memory_root, cache_dir=tmp_path / "cache")
    ref = store.put(_make_artifact(tmp_path / "src"))
    local = store.fetch(ref)
    (local / "sub" / "head.pt").write_bytes(b"bit rot")
    assert digest_dir(store.fetch(ref)) == ref.sha256


def test_remote_half_written_artifact_is_invisible(tmp_path, memory_root):
    store = ArtifactStore(memory_root, cache_dir=tmp_path / "cache")
    ref = store.put(_make_artifact(tmp_path / "src"))
    fsspec.filesystem("memory").rm_file(f"{ref.uri.removeprefix('memory://')}{MARKER_SUFFIX}")
    with pytest.raises(ArtifactError, match="incomplete"):
        store.fetch(ref)


def test_put_refuses_to_publish_a_leftover_directory_with_other_content(tmp_path):
    src = _make_artifact(tmp_path / "src")
    sha = digest_dir(src)
    leftover = tmp_path / "store" / sha
    _make_artifact(leftover, weights=b"something else")
    with pytest.raises(DigestMismatchError):
        ArtifactStore(str(tmp_path / "store")).put(src)
    assert not (tmp_path / "store" / f"{sha}{MARKER_SUFFIX}").exists()
