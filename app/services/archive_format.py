"""The tenant archive as bytes: a tar stream (optionally gzipped), written and read in chunks.

`manifest.json` comes first, then one `<table>.copy` member per table in load order. Both
directions are streams over async byte chunks, so neither ever holds a table: a member's
size goes in its tar header, so export spools each table to a temporary file (memory up to
SPOOL_MEMORY_BYTES, then disk) while hashing it; import hashes and counts as it loads.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import IO

from pydantic import ValidationError

from app.core.errors import UnprocessableEntity
from app.schemas.archive import MANIFEST_NAME, ArchiveManifest

BLOCK = 512
CHUNK_BYTES = 256 * 1024  # what one read, write or COPY message carries
SPOOL_MEMORY_BYTES = 1024 * 1024  # per table, before its spool moves to disk
MANIFEST_MAX_BYTES = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class InvalidArchive(UnprocessableEntity):
    """Not a complete, intact Tessera archive: nothing of it was kept."""

    code = "invalid_archive"
    title = "Invalid tenant archive"


class ArchiveSchemaUnsupported(UnprocessableEntity):
    """The archive's schema version is not in this build's tenant migration history."""

    code = "archive_schema_unsupported"
    title = "Archive schema version not supported"


# --- writing ------------------------------------------------------------------------------


class SpooledTable:
    """One table's COPY data on its way into the archive: spooled, hashed, measured."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        self._hash = hashlib.sha256()
        self.size = 0

    async def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.file.write(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self.file.close()


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


async def archive_chunks(
    manifest: ArchiveManifest, spools: Iterable[SpooledTable], *, gzip: bool = False
) -> AsyncIterator[bytes]:
    """The archive's bytes: manifest, then each spooled table (in manifest order)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31) if gzip else None

    def out(data: bytes) -> bytes:
        return compressor.compress(data) if compressor is not None else data

    mtime = int(time.time())
    body = manifest.model_dump_json(indent=2).encode()
    yield out(_header(MANIFEST_NAME, len(body), mtime) + body + _padding(len(body)))
    for table, spool in zip(manifest.tables, spools, strict=True):
        yield out(_header(table.member, spool.size, mtime))
        spool.file.seek(0)
        while chunk := spool.file.read(CHUNK_BYTES):
            if piece := out(chunk):
                yield piece
        yield out(_padding(spool.size))
    yield out(b"\0" * (2 * BLOCK))
    if compressor is not None:
        yield compressor.flush()


# --- reading ------------------------------------------------------------------------------


async def _gunzipped(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Decompress in bounded pieces: a small input never becomes one huge output chunk."""
    inflater = zlib.decompressobj(31)

    async def inputs() -> AsyncIterator[bytes]:
        yield first
        async for chunk in rest:
            yield chunk

    try:
        async for chunk in inputs():
            data = chunk
            while data:
                if inflater.eof:
                    raise InvalidArchive("The archive has data after its gzip stream ends.")
                piece = inflater.decompress(data, CHUNK_BYTES)
                data = inflater.unconsumed_tail
                if piece:
                    yield piece
    except zlib.error as exc:
        raise InvalidArchive("The archive's gzip stream is corrupt.") from exc
    if not inflater.eof:
        raise InvalidArchive("The archive is truncated (its gzip stream ends early).")


class ArchiveReader:
    """Reads an archive's members in order from async byte chunks, gzipped or not."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self._started = False
        self._buffer = b""

    async def _chunk(self) -> bytes | None:
        if not self._started:
            self._started = True
            first = b""
            async for chunk in self._source:
                first += chunk
                if len(first) >= len(_GZIP_MAGIC):
                    break
            if first.startswith(_GZIP_MAGIC):
                self._source = _gunzipped(first, self._source)
            else:
                return first or None
        async for chunk in self._source:
            if chunk:
                return chunk
        return None

    async def _exactly(self, size: int, what: str) -> bytes:
        while len(self._buffer) < size:
            chunk = await self._chunk()
            if chunk is None:
                raise InvalidArchive(f"The archive is truncated (in {what}).")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    async def next_member(self) -> tuple[str, int] | None:
        """The next member's name and size, or None at the archive's end."""
        block = await self._exactly(BLOCK, "a member header")
        if block == b"\0" * BLOCK:
            await self._exactly(BLOCK, "the end-of-archive marker")
            rest: bytes | None = self._buffer
            while rest is not None:  # tar pads to whole records, with zeros only
                if rest.strip(b"\0"):
                    raise InvalidArchive("The archive has data after its end.")
                rest = await self._chunk()
            self._buffer = b""
            return None
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeDecodeError) as exc:
            raise InvalidArchive("Not a Tessera tenant archive (not a tar stream).") from exc
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise InvalidArchive(f"The archive's member {info.name!r} is not a plain file.")
        return info.name, info.size

    async def member_chunks(self, size: int) -> AsyncIterator[bytes]:
        """A member's data in chunks of up to CHUNK_BYTES, then past its padding."""
        remaining = size
        while remaining:
            if not self._buffer:
                chunk = await self._chunk()
                if chunk is None:
                    raise InvalidArchive("The archive is truncated (in a table's rows).")
                self._buffer = chunk
            take = min(remaining, len(self._buffer), CHUNK_BYTES)
            piece, self._buffer = self._buffer[:take], self._buffer[take:]
            remaining -= take
            yield piece
        await self._exactly(-size % BLOCK, "a member's padding")

    async def manifest(self) -> ArchiveManifest:
        """The first member, which must be a valid manifest."""
        member = await self.next_member()
        if member is None or member[0] != MANIFEST_NAME:
            raise InvalidArchive(f"Not a Tessera tenant archive (no {MANIFEST_NAME} first).")
        if member[1] > MANIFEST_MAX_BYTES:
            raise InvalidArchive(f"The archive's {MANIFEST_NAME} is too large.")
        body = b"".join([chunk async for chunk in self.member_chunks(member[1])])
        try:
            return ArchiveManifest.model_validate(json.loads(body))
        except (ValueError, ValidationError) as exc:
            problem = _first(exc)
            raise InvalidArchive(f"The archive's {MANIFEST_NAME} is invalid: {problem}") from exc


def _first(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "(top)"
        return f"{where}: {error['msg']}"
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


class CheckedRows:
    """Counts and hashes a member's bytes on their way to COPY, to compare with the manifest."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    async def through(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self._hash.update(chunk)
            self.size += len(chunk)
            yield chunk

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()
