"""`.npz` archives written member by member, large arrays streamed in as their rows come.

numpy's `savez` needs every array in memory at once; an animation of ten minutes is 1.3 GB of
vertices at the release's 6172 vertices. `NpzWriter` writes each member straight into the zip
(stored, ZIP64): a streamed member's `.npy` header carries its final shape, known up front, and its
rows follow as they are computed. `np.load` reads the result like any `.npz`.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError


class ArrayStream:
    """One member of an `NpzWriter` being written: rows along its first axis, in order."""

    def __init__(
        self, handle, path: Path, name: str, shape: tuple[int, ...], dtype, owner=None
    ) -> None:
        self.handle, self.path, self.name, self.owner = handle, path, name, owner
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.rows = 0
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        with _failing(owner):
            np.lib.format.write_array_header_1_0(handle, header)

    def write(self, rows: np.ndarray) -> None:
        """Append rows (n, *shape[1:]) of the member."""
        rows = np.asarray(rows)
        if rows.shape[1:] != self.shape[1:]:
            raise ValueError(
                f"{self.name}: rows of shape {rows.shape[1:]} where the member has {self.shape[1:]}"
            )
        if self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.name}: more than the {self.shape[0]} rows announced")
        with _failing(self.owner):
            self.handle.write(memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B"))
        self.rows += len(rows)

    def close(self) -> None:
        """Finish the member; a ValueError if fewer rows came than announced."""
        with _failing(self.owner):
            self.handle.close()
        if self.rows != self.shape[0]:
            raise ValueError(
                f"{self.name}: {self.rows} rows written of the {self.shape[0]} announced"
            )


@dataclass(frozen=True)
class Rows:
    """A member given as chunks of rows (a long signal read back in blocks, say) for `add_rows`."""

    shape: tuple[int, ...]
    """The member's whole shape."""
    dtype: np.dtype | type
    """Its dtype."""
    chunks: Iterable[np.ndarray]
    """(n, *shape[1:]) chunks of rows, in order, as many rows as shape[0] in all."""


class NpzWriter:
    """Write an `.npz` archive one member at a time (zip members cannot interleave).

    Use as a context manager; `add` writes a whole array, `stream` opens a member whose rows are
    written as they come (close it before the next member). The caller makes the path atomic.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self.names: set[str] = set()
        self.open_stream: ArrayStream | None = None

    def _member(self, name: str):
        if self.open_stream is not None and not self.open_stream.handle.closed:
            raise ValueError(f"{self.open_stream.name} is still being written")
        if name in self.names:
            raise ValueError(f"{name} is already in {self.path}")
        self.names.add(name)
        return self.zip.open(f"{name}.npy", "w", force_zip64=True)

    def add(self, name: str, array) -> None:
        """Write a whole array as member `name` (no pickled objects)."""
        array = np.asanyarray(array)
        with _failing(self), self._member(name) as handle:
            np.lib.format.write_array(handle, array, allow_pickle=False)

    def stream(self, name: str, shape: tuple[int, ...], dtype) -> ArrayStream:
        """Open member `name` of a known final shape; write its rows, then close it."""
        with _failing(self):
            handle = self._member(name)
        self.open_stream = ArrayStream(handle, self.path, name, shape, dtype, owner=self)
        return self.open_stream

    def add_rows(self, name: str, rows: Rows) -> None:
        """Write member `name` from chunks of rows, holding one chunk at a time."""
        stream = self.stream(name, rows.shape, rows.dtype)
        for chunk in rows.chunks:
            stream.write(chunk)
        stream.close()

    def close(self) -> None:
        with _failing(self):
            self.zip.close()

    def abort(self) -> None:
        """Give up the archive after a failed write (a full disk, say): close what is open,
        quietly, so that nothing tries to finish it later (the caller discards the file)."""
        if self.open_stream is not None:
            with contextlib.suppress(Exception):
                self.open_stream.handle.close()
        with contextlib.suppress(Exception):
            self.zip.close()

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.open_stream is not None and not self.open_stream.handle.closed:
            self.open_stream.handle.close()  # an unfinished member: the caller discards the file
        self.close()


@contextlib.contextmanager
def _failing(writer: NpzWriter | None) -> Iterator[None]:
    """An OSError inside aborts the archive and names its file (zipfile's errors name none)."""
    try:
        yield
    except OSError as error:
        if writer is None:
            raise
        writer.abort()
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(writer.path)) from None
        raise


CHUNK_BYTES = 4 << 20
"""Chunks of about 4 MB when no row count is given: small enough that numpy's temporaries reuse
freed memory (an 82 MB chunk of a 26k-vertex head was a fresh mmap and page faults every time)."""


def rows_per_chunk(shape: tuple[int, ...], dtype) -> int:
    """Rows of a member of `shape` and `dtype` in about CHUNK_BYTES (at least one)."""
    row_bytes = np.dtype(dtype).itemsize * int(np.prod(shape[1:], dtype=np.int64))
    return max(1, CHUNK_BYTES // max(row_bytes, 1))


def iter_rows(path: str | Path, name: str, rows: int | None = None) -> Iterator[np.ndarray]:
    """The rows of an `.npz` member `rows` at a time, without reading the whole array.

    Args:
        path: an `.npz` archive.
        name: the member (without `.npy`).
        rows: rows per chunk along the first axis (None: about CHUNK_BYTES a chunk).

    Yields:
        (n, *shape[1:]) arrays, n <= rows, in order.
    """
    path = Path(path)
    with _open_archive(path) as archive, _open_member(archive, path, name) as handle:
        shape, fortran, dtype = _read_header(handle)
        if fortran or dtype.hasobject or not shape:
            raise MeshtalkError(path, f"member {name} is not a C-ordered array of rows")
        row_bytes = dtype.itemsize * int(np.prod(shape[1:]))
        rows = rows_per_chunk(shape, dtype) if rows is None else rows
        for first in range(0, shape[0], rows):
            count = min(rows, shape[0] - first)
            try:
                data = handle.read(count * row_bytes)
            except (zipfile.BadZipFile, OSError, EOFError) as error:  # a failed CRC, say
                raise MeshtalkError(path, f"member {name} is damaged ({error})") from None
            if len(data) != count * row_bytes:
                raise MeshtalkError(path, f"member {name} is truncated")
            yield np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])


def mapped_member(path: str | Path, name: str) -> np.ndarray | None:
    """A read-only memory map of a stored (uncompressed) `.npz` member, or None when it is
    compressed or not a plain C-ordered array. For repeated passes over a member already read
    once through `iter_rows` (which checks its CRC): no copy, no checksum, pages from the cache."""
    path = Path(path)
    with _open_archive(path) as archive:
        try:
            info = archive.getinfo(f"{name}.npy")
        except KeyError:
            raise MeshtalkError(path, f"has no member '{name}'") from None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise MeshtalkError(path, f"member {name} is damaged (no local header)")
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little")
            start += int.from_bytes(local[28:30], "little")
            raw.seek(start)
            shape, fortran, dtype = _read_header(raw)
            offset = raw.tell()
    if fortran or dtype.hasobject or not shape:
        return None
    size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if offset - start + size != info.file_size or offset + size > path.stat().st_size:
        raise MeshtalkError(path, f"member {name} is truncated")
    if size == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def chunks_of(array: np.ndarray, rows: int | None = None) -> Iterator[np.ndarray]:
    """(n, ...) slices of an array (a memory map, say) along its first axis, about CHUNK_BYTES
    each unless `rows` is given."""
    rows = rows_per_chunk(array.shape, array.dtype) if rows is None else rows
    for first in range(0, len(array), rows):
        yield array[first : first + rows]


def first_nonfinite_row(path: str | Path, name: str, rows: int | None = None) -> int | None:
    """Index of the first row of member `name` holding NaN or infinity (None: all finite).

    Read a chunk at a time, so checking a long animation before any work costs no memory.
    """
    first = 0
    for chunk in iter_rows(path, name, rows):
        if chunk.dtype.kind == "f":
            finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
            if not finite.all():
                return first + int(np.argmin(finite))
        first += len(chunk)
    return None


def load_npz(path: str | Path) -> np.lib.npyio.NpzFile:
    """`np.load` of an `.npz` archive with no pickles; a file that is not one is a one-line error
    (numpy alone calls any non-zip file "pickled data")."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise MeshtalkError(path, "not a readable .npz archive (not a zip file)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise MeshtalkError(path, f"not a readable .npz archive ({error})") from None


def member_shape(path: str | Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an `.npz` member, read from its header only."""
    path = Path(path)
    with _open_archive(path) as archive, _open_member(archive, path, name) as handle:
        shape, _, dtype = _read_header(handle)
    return shape, dtype


def _open_archive(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise MeshtalkError(path, f"not a readable .npz archive ({error})") from None


def _open_member(archive: zipfile.ZipFile, path: Path, name: str):
    try:
        return archive.open(f"{name}.npy")
    except KeyError:
        raise MeshtalkError(path, f"has no member '{name}'") from None


def _read_header(handle) -> tuple[tuple[int, ...], bool, np.dtype]:
    major, _ = np.lib.format.read_magic(handle)
    if major == 1:
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)
