"""Content-addressed artifact store over fsspec: a local path or any fsspec URI (s3://, gs://, memory://).

Layout under `root`:

    <root>/<sha256>/...            the artifact's files, exactly as in the source directory
    <root>/<sha256>.complete       JSON marker written last; an artifact is visible only once it exists

The sha256 is `digest_dir` of the directory, so the address names the content and `fetch`
re-hashes before returning: a modified or half-written artifact is never handed to a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from models.errors import ArtifactError, DigestMismatchError

__all__ = ["ArtifactRef", "ArtifactStore", "digest_dir"]

MARKER_SUFFIX = ".complete"
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def digest_dir(path: Path) -> str:
    """sha256 over every file's relative POSIX path and bytes, in sorted path order."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"cannot digest {root}: not a directory")
    h = hashlib.sha256()
    for rel in _list_files(root):
        # Length-prefix both path and content so (a, bc) and (ab, c) can never collide.
        name = rel.encode()
        h.update(len(name).to_bytes(8, "big") + name)
        file = root / rel
        h.update(file.stat().st_size.to_bytes(8, "big"))
        with file.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ArtifactRef:
    """Where a stored artifact lives and the digest it must hash to."""

    uri: str
    sha256: str


class ArtifactStore:
    """Put directories by content digest; fetch them back as verified local directories."""

    def __init__(self, root: str, storage_options: dict | None = None, cache_dir: Path | None = None):
        if not root:
            raise ValueError("root must be a path or fsspec URI, e.g. '/var/tandem/artifacts' or 's3://bucket/artifacts'")
        self.root = str(root).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs, self._root_path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "tandem-artifact-cache"

    @property
    def is_local(self) -> bool:
        return isinstance(self._fs, LocalFileSystem)

    def uri_for(self, sha256: str) -> str:
        return f"{self.root}/{sha256}"

    def exists(self, sha256: str) -> bool:
        return self._fs.exists(self._marker_path(f"{self._root_path}/{sha256}"))

    def put(self, src_dir: Path) -> ArtifactRef:
        """Store `src_dir` under its digest; a no-op when that digest is already stored."""
        src = Path(src_dir)
        if not src.is_dir():
            raise ArtifactError(f"cannot store {src}: not a directory")
        files = _list_files(src)
        if not files:
            raise ArtifactError(f"cannot store {src}: the directory is empty")
        sha = digest_dir(src)
        ref = ArtifactRef(uri=self.uri_for(sha), sha256=sha)
        if self.exists(sha):
            return ref
        final = f"{self._root_path}/{sha}"
        if self.is_local:
            self._put_local(src, Path(final), sha)
        else:
            # Object stores have no atomic directory rename: upload in place, publish via the marker.
            for rel in files:
                self._fs.put_file(str(src / rel), f"{final}/{rel}")
        self._write_marker(final, sha, files)
        return ref

    def fetch(self, ref_or_uri: ArtifactRef | str, sha256: str | None = None) -> Path:
        """Return a local directory holding the artifact, after checking it hashes to its digest."""
        uri, expected = self._resolve(ref_or_uri, sha256)
        fs, path = fsspec.core.url_to_fs(uri, **self.storage_options)
        path = path.rstrip("/")
        if not fs.isdir(path):
            raise ArtifactError(f"artifact {uri} does not exist")
        if _is_content_addressed(path, expected) and not fs.exists(self._marker_path(path)):
            raise ArtifactError(
                f"artifact {uri} is incomplete (no {MARKER_SUFFIX} marker): a put is in progress or was interrupted"
            )
        if isinstance(fs, LocalFileSystem):
            local = Path(path)
            _verify(local, expected, uri)
            return local
        return self._fetch_remote(fs, path, uri, expected)

    def _resolve(self, ref_or_uri: ArtifactRef | str, sha256: str | None) -> tuple[str, str]:
        if isinstance(ref_or_uri, ArtifactRef):
            if sha256 is not None and sha256 != ref_or_uri.sha256:
                raise ValueError(f"sha256={sha256!r} contradicts the ref's sha256 {ref_or_uri.sha256!r}")
            return ref_or_uri.uri, ref_or_uri.sha256
        uri = str(ref_or_uri).rstrip("/")
        if sha256 is None:
            tail = uri.rsplit("/", 1)[-1]
            if not _SHA256.match(tail):
                raise ValueError(f"cannot tell the expected digest of {uri!r}; pass sha256=... or an ArtifactRef")
            sha256 = tail
        return uri, sha256

    def _put_local(self, src: Path, final: Path, sha: str) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{sha[:12]}-{uuid.uuid4().hex}"
        try:
            shutil.copytree(src, tmp)
            # The source could change while we copy; store only what hashes to the address.
            _verify(tmp, sha, str(src))
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                # A concurrent put won the race, or an earlier put died before its marker:
                # publish that copy only if it really is this content.
                _verify(final, sha, str(final))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_marker(self, path: str, sha: str, files: list[str]) -> None:
        body = json.dumps({"sha256": sha, "files": files}, sort_keys=True).encode()
        marker = self._marker_path(path)
        if self.is_local:
            tmp = f"{marker}.tmp-{uuid.uuid4().hex}"
            Path(tmp).write_bytes(body)
            os.replace(tmp, marker)
        else:
            self._fs.pipe_file(marker, body)

    def _fetch_remote(self, fs, path: str, uri: str, expected: str) -> Path:
        target = self.cache_dir / expected
        if target.is_dir():
            if digest_dir(target) == expected:
                return target
            # A damaged cache entry is only a cache miss: drop it and download again.
            shutil.rmtree(target, ignore_errors=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".tmp-{expected[:12]}-{uuid.uuid4().hex}"
        try:
            prefix = path + "/"
            for remote in fs.find(path):
                if not remote.startswith(prefix):
                    continue
                rel = remote[len(prefix) :]
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(dest))
            tmp.mkdir(parents=True, exist_ok=True)
            _verify(tmp, expected, uri)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    @staticmethod
    def _marker_path(path: str) -> str:
        return path.rstrip("/") + MARKER_SUFFIX


def _list_files(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(out)


def _is_content_addressed(path: str, sha: str) -> bool:
    return path.rsplit("/", 1)[-1] == sha


def _verify(local: Path, expected: str, uri: str) -> None:
    actual = digest_dir(local)
    if actual != expected:
        raise DigestMismatchError(
            f"artifact {uri} hashes to sha256 {actual} but {expected} was recorded: "
            "it was modified or corrupted after it was stored"
        )
