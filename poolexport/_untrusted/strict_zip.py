"""Read an untrusted zip archive once, strictly, and rebuild it canonically.

``.pt2`` and TorchScript files are zip archives. Python's ``zipfile`` and torch's reader
(miniz, behind ``torch._C.PyTorchFileReader``) find the parts of a zip differently, so one
byte string can be two archives: one that a check written with ``zipfile`` approves and
another that torch loads. The two readers differ here (Python 3.11 Lib/zipfile.py; torch's
third_party/miniz-3.0.2/miniz.c, caffe2/serialize/inline_container.cc):

* the zip64 end record: miniz follows the locator's offset, ``zipfile`` assumes the record
  sits right before the locator;
* bytes before the archive: ``zipfile`` shifts every offset by them ("concat"), miniz
  takes offsets as written;
* the entry count: miniz indexes as many central records as the end record counts,
  ``zipfile`` every record in the central directory's size; a duplicate name resolves to
  the last record in ``zipfile``, to one of them (binary search) in miniz;
* names: miniz looks them up ASCII-case-insensitively and truncates them at 511 bytes;
  ``zipfile`` decodes names without the UTF-8 flag as cp437, miniz keeps the bytes;
* CRC-32: ``zipfile`` checks it, torch's miniz build does not (a corrupt entry loads);
* ``zipfile`` cuts a name at a NUL (ZipInfo.__init__) and, on Windows, turns backslashes
  into slashes; miniz keeps both.

:func:`read_archive` accepts only an archive in which every byte belongs to exactly one
structure at the place both readers look for it, and :func:`canonical_bytes` writes the
validated entries again the way torch's writer does, so only bytes we laid out ourselves
reach torch.

Standard library only: the sandbox's bootstrap imports it before torch.
"""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from .errors import UntrustedFileError

__all__ = ["StrictArchive", "canonical_bytes", "read_archive"]

# APPNOTE.TXT 4.3; the same layouts as miniz's MZ_ZIP_* offsets.
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # sig, version, flags, method, time, date, crc, csize, usize, nlen, xlen
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # sig, made_by, version, flags, method, time, date, crc,
#                                                 csize, usize, nlen, xlen, clen, disk, iattr, eattr, offset
_EOCD = struct.Struct("<IHHHHIIH")  # sig, disk, cd_disk, count_disk, count, cd_size, cd_offset, comment_len
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")  # sig, record size, made_by, version, disk, cd_disk, count_disk,
#                                            count, cd_size, cd_offset
_ZIP64_LOCATOR = struct.Struct("<IIQI")  # sig, disk of the zip64 end record, its offset, total disks
_DESCRIPTOR32 = struct.Struct("<IIII")  # sig, crc, csize, usize
_DESCRIPTOR64 = struct.Struct("<IIQQ")
_EXTRA_HEADER = struct.Struct("<HH")

_SIG_LOCAL = 0x04034B50
_SIG_CENTRAL = 0x02014B50
_SIG_EOCD = 0x06054B50
_SIG_ZIP64_END = 0x06064B50
_SIG_ZIP64_LOCATOR = 0x07064B50
_SIG_DESCRIPTOR = 0x08074B50

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF  # a 32-bit field holding this means "the value is in the zip64 extra field"
_ZIP64_RECORD_SIZE = _ZIP64_END.size - 12  # the record without its signature and size field (no extensible data)

_FLAG_ENCRYPTED = 0x0001
_FLAG_DESCRIPTOR = 0x0008  # sizes and CRC follow the data
_FLAG_UTF8 = 0x0800
_FLAGS_ALLOWED = _FLAG_DESCRIPTOR | _FLAG_UTF8  # all torch (miniz) and zipfile's ZIP_STORED ever set

# torch writes records stored, except TorchScript code and debug_pkl records, which it
# deflates (torch/csrc/jit/serialization/export_module.cpp, writeRecord(..., compress=true)).
_METHODS = {0: "stored", 8: "deflated"}
_DEFLATE_MAX_RATIO = 1032  # zlib's bound on what one deflated byte can expand to
_MAX_INFLATED = 1 << 30  # all deflated entries together; torch deflates only code and debug info

_EXTRA_ZIP64 = 0x0001
_EXTRA_TORCH_PADDING = 0x4246  # "FB": caffe2/serialize/inline_container.cc getPadding, aligns data to 64 bytes
_CENTRAL_EXTRAS = frozenset({_EXTRA_ZIP64})  # all torch and zipfile write there
_LOCAL_EXTRAS = frozenset({_EXTRA_ZIP64, _EXTRA_TORCH_PADDING})
_MAX_VERSION = 45  # 4.5, zip64: the highest "version needed" a stored, unencrypted entry can need
_MAX_NAME_BYTES = 511  # miniz MZ_ZIP_MAX_ARCHIVE_FILENAME_SIZE (512, with the NUL); longer names come back cut

# Writer constants, as torch 2.13 writes (caffe2/serialize/inline_container.cc, miniz.c
# mz_zip_writer_add_mem_ex_v2 / mz_zip_writer_finalize_archive). A module constant so that
# tests can exercise the zip64 layout without writing 4 GiB.
_ZIP64_AT = 0xFFFFFFFF  # miniz adds a zip64 extra when a size or offset is >= this
_ALIGNMENT = 64  # torch.serialization._get_storage_alignment() default
_ZIP64_MADE_BY = 0x031E  # miniz: "TODO: always Unix"
_ZIP64_VERSION = 0x002D

_DRIVE = re.compile(r"\A[A-Za-z]:")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc: C0 controls, DEL, C1 controls


@dataclass(frozen=True)
class StrictArchive:
    """The entries of an archive that :func:`read_archive` accepted, in the archive's order."""

    entries: dict[str, bytes]

    def names(self) -> list[str]:
        return list(self.entries)


class _Refused(Exception):
    """Internal: the reason, turned into one UntrustedFileError line by read_archive."""


def _show(name) -> str:
    text = name if isinstance(name, str) else name.decode("utf-8", "replace")
    shown = ascii(text) if len(text) <= 80 else ascii(text[:77]) + "..."
    return shown  # ascii(): control characters and line breaks stay escaped, the message one line


def _extras(raw: bytes, where: str, allowed: frozenset[int]) -> dict[int, bytes]:
    """Split an extra field into (id -> data); it must be whole records, each id once."""
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise _Refused(f"{where} has a truncated extra field")
        field_id, size = _EXTRA_HEADER.unpack_from(raw, pos)
        if pos + 4 + size > len(raw):
            raise _Refused(f"{where} has an extra field longer than its extra data")
        if field_id not in allowed:
            raise _Refused(f"{where} has extra field 0x{field_id:04x}, which torch does not write "
                           f"(readers may interpret it differently)")
        if field_id in fields:
            raise _Refused(f"{where} has extra field 0x{field_id:04x} twice")
        fields[field_id] = raw[pos + 4:pos + 4 + size]
        pos += 4 + size
    return fields


def _zip64_values(fields: dict[int, bytes], values: list[int], where: str, exact: bool) -> list[int]:
    """Resolve 32-bit fields that hold 0xFFFFFFFF from the zip64 extra, in APPNOTE order
    (uncompressed size, compressed size, local header offset), as miniz
    (mz_zip_file_stat_internal) and zipfile (_decodeExtra) both read it.

    ``exact``: the extra must hold exactly those values (central records: both readers take
    them from here). A local header's zip64 extra only sizes its data descriptor (neither
    reader reads its values), and miniz writes it with fields the 32-bit ones do not flag.
    """
    zip64 = fields.get(_EXTRA_ZIP64)
    if zip64 is None and _U32 not in values:
        return values
    needed = [i for i, v in enumerate(values) if v == _U32]
    if zip64 is None:
        if needed:
            raise _Refused(f"{where} marks a size or offset as zip64 (0xFFFFFFFF) without a zip64 extra field")
        return values
    if len(zip64) % 8 or len(zip64) > 24:
        raise _Refused(f"{where} has a zip64 extra field of {len(zip64)} bytes")
    if exact and len(zip64) != 8 * len(needed):
        raise _Refused(f"{where} has a zip64 extra field with {len(zip64) // 8} values where its 32-bit "
                       f"fields ask for {len(needed)}")
    if len(zip64) < 8 * len(needed):
        raise _Refused(f"{where} has a zip64 extra field too short for the fields it replaces")
    out = list(values)
    for k, i in enumerate(needed):
        out[i] = struct.unpack_from("<Q", zip64, 8 * k)[0]
    return out


def _check_name(raw: bytes, flags: int, where: str) -> str:
    """The entry name as both readers see it; refuse anything they could see differently
    or that names a path outside the archive's folder."""
    if not raw:
        raise _Refused(f"{where} has an empty name")
    if len(raw) > _MAX_NAME_BYTES:
        raise _Refused(f"{where} has a name of {len(raw)} bytes; torch's reader (miniz) cuts names at "
                       f"{_MAX_NAME_BYTES} bytes")
    if flags & _FLAG_UTF8:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(f"{where} has a name that is flagged UTF-8 but is not UTF-8: {raw[:80]!r}") from None
    else:
        if not raw.isascii():
            # zipfile decodes it as cp437, torch compares the bytes: two different names
            raise _Refused(f"{where} has a non-ASCII name without the UTF-8 flag: {raw[:80]!r}")
        name = raw.decode("ascii")
    if _CONTROL.search(name):
        # zipfile cuts the name at a NUL, torch's lookups (c_str) do too, miniz keeps it
        raise _Refused(f"name {_show(name)} has a NUL or control character")
    if "\\" in name:
        raise _Refused(f"name {_show(name)} has a backslash")  # zipfile on Windows reads it as "/"
    if name.startswith("/"):
        raise _Refused(f"name {_show(name)} is an absolute path")
    if _DRIVE.match(name):
        raise _Refused(f"name {_show(name)} starts with a drive letter")
    parts = name.split("/")
    if "" in parts:
        raise _Refused(f"name {_show(name)} has an empty path component")
    if ".." in parts or "." in parts:
        raise _Refused(f"name {_show(name)} has a '..' or '.' path component")
    return name


def _inflate(raw: bytes, usize: int, where: str) -> bytes:
    """A raw deflate stream that ends exactly at the entry's end and yields exactly
    ``usize`` bytes. Only this inflater ever reads it: the rebuild stores the result, so
    torch's inflater (miniz tinfl) never sees attacker-written deflate data."""
    inflater = zlib.decompressobj(-15)
    try:
        out = inflater.decompress(raw, usize + 1)  # at most one byte more than declared
    except zlib.error as exc:
        raise _Refused(f"{where}: its deflate data is invalid ({exc})") from None
    if len(out) != usize or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        raise _Refused(f"{where}: its deflate data does not inflate to exactly the declared {usize} bytes "
                       f"and end at its compressed size")
    return out


def _parse(data: bytes) -> dict[str, bytes]:
    size = len(data)
    # ---- end of central directory: exactly the last 22 bytes, no comment. Both readers
    # take the last signature they find; with no comment that is this one, and nothing
    # can hide after it (a comment is where a second record would go).
    if size < _EOCD.size:
        raise _Refused(f"the file is {size} bytes, too short for a zip archive")
    eocd_at = size - _EOCD.size
    sig, disk, cd_disk, count_disk, count, cd_size, cd_offset, comment_len = _EOCD.unpack_from(data, eocd_at)
    if sig != _SIG_EOCD:
        raise _Refused("the file does not end with an end-of-central-directory record (a zip comment or "
                       "bytes after the archive)")
    if comment_len:
        raise _Refused(f"the end-of-central-directory record has a {comment_len}-byte comment; torch writes "
                       f"none, and a comment can hide a second record")
    if disk or cd_disk:
        raise _Refused(f"the end-of-central-directory record names disk {disk}/{cd_disk}; only disk 0 exists")
    if count_disk != count:
        raise _Refused(f"the end-of-central-directory record counts {count_disk} entries on this disk and "
                       f"{count} in all")

    # ---- zip64 end record and locator, where torch always writes them (miniz with
    # MZ_ZIP_FLAG_WRITE_ZIP64): right before the end record, the locator pointing at the
    # record that ends where the locator starts. miniz follows the locator's offset,
    # zipfile (_EndRecData64) reads the 56 bytes before the locator: they must be one.
    cd_end = eocd_at
    locator_at = eocd_at - _ZIP64_LOCATOR.size
    if locator_at >= 0 and struct.unpack_from("<I", data, locator_at)[0] == _SIG_ZIP64_LOCATOR:
        _, z_disk, z_offset, z_disks = _ZIP64_LOCATOR.unpack_from(data, locator_at)
        record_at = locator_at - _ZIP64_END.size
        if z_disk != 0 or z_disks != 1:
            raise _Refused(f"the zip64 locator names disk {z_disk} of {z_disks}; only disk 0 of 1 exists")
        if record_at < 0 or z_offset != record_at:
            raise _Refused(f"the zip64 locator points at offset {z_offset}, not at the zip64 end record right "
                           f"before it ({record_at}); two readers would read two central directories")
        (z_sig, z_size, _, _, z_this_disk, z_cd_disk, z_count_disk, z_count, z_cd_size,
         z_cd_offset) = _ZIP64_END.unpack_from(data, record_at)
        if z_sig != _SIG_ZIP64_END:
            raise _Refused("the zip64 locator is not preceded by a zip64 end-of-central-directory record")
        if z_size != _ZIP64_RECORD_SIZE:
            raise _Refused(f"the zip64 end record declares {z_size} bytes, not {_ZIP64_RECORD_SIZE} "
                           f"(zip64 extensible data is not read the same by all readers)")
        if z_this_disk or z_cd_disk or z_count_disk != z_count:
            raise _Refused("the zip64 end record names a disk other than 0 or counts entries per disk differently")
        if (count, cd_size, cd_offset) != (min(z_count, _U16), min(z_cd_size, _U32), min(z_cd_offset, _U32)):
            raise _Refused(f"the end record (entries {count}, directory {cd_size} bytes at {cd_offset}) "
                           f"disagrees with the zip64 end record (entries {z_count}, directory {z_cd_size} bytes "
                           f"at {z_cd_offset})")
        count, cd_size, cd_offset = z_count, z_cd_size, z_cd_offset
        cd_end = record_at

    # ---- central directory: ends exactly where the end records start (zipfile would
    # otherwise shift every offset by the difference, miniz would not).
    if cd_offset + cd_size != cd_end:
        raise _Refused(f"the central directory ({cd_size} bytes at {cd_offset}) does not end where the end "
                       f"record starts ({cd_end})")
    if count == 0:
        raise _Refused("the archive holds no entries")
    if count * _CENTRAL.size > cd_size:
        raise _Refused(f"the end record counts {count} entries, more than a {cd_size}-byte central "
                       f"directory can hold")

    records = []
    inflated = 0
    pos = cd_offset
    while pos < cd_end:
        index = len(records)
        where = f"central record {index}"
        if pos + _CENTRAL.size > cd_end:
            raise _Refused(f"{where} is cut off by the end of the central directory")
        (sig, _, version, flags, method, _, _, crc, csize, usize, nlen, xlen, clen, disk_start, _, _,
         offset) = _CENTRAL.unpack_from(data, pos)
        if sig != _SIG_CENTRAL:
            raise _Refused(f"{where} at offset {pos} has no central-directory signature")
        end = pos + _CENTRAL.size + nlen + xlen + clen
        if end > cd_end:
            raise _Refused(f"{where} runs past the end of the central directory")
        raw_name = data[pos + _CENTRAL.size:pos + _CENTRAL.size + nlen]
        extra = data[pos + _CENTRAL.size + nlen:pos + _CENTRAL.size + nlen + xlen]
        name = _check_name(raw_name, flags, where)
        shown = _show(name)
        where = f"entry {shown}"
        if flags & _FLAG_ENCRYPTED:
            raise _Refused(f"{where} is encrypted")
        if flags & ~_FLAGS_ALLOWED:
            raise _Refused(f"{where} has general-purpose flags 0x{flags:04x}; only 0x0008 (data descriptor) "
                           f"and 0x0800 (UTF-8 name) are accepted")
        if method not in _METHODS:
            raise _Refused(f"{where} is compressed with method {method}; only stored (0) and deflated (8) "
                           f"entries, the two torch writes, are accepted")
        if version > _MAX_VERSION:
            raise _Refused(f"{where} needs zip version {version / 10:.1f}")
        if clen:
            raise _Refused(f"{where} has a file comment; torch writes none")
        if disk_start:
            raise _Refused(f"{where} starts on disk {disk_start}; only disk 0 exists")
        fields = _extras(extra, f"{where} (central)", _CENTRAL_EXTRAS)
        usize, csize, offset = _zip64_values(fields, [usize, csize, offset], f"{where} (central)", exact=True)
        if csize > size:
            raise _Refused(f"{where} declares {csize} bytes, more than the whole file ({size})")
        if method == 0 and csize != usize:
            raise _Refused(f"{where} is stored but declares {csize} stored and {usize} uncompressed bytes")
        if usize > csize * _DEFLATE_MAX_RATIO + _DEFLATE_MAX_RATIO:
            # checked before inflating: the output buffer is sized from usize
            raise _Refused(f"{where} declares {usize} bytes inflated from {csize}, more than deflate can encode")
        if method == 8:
            inflated += usize
            if inflated > _MAX_INFLATED:
                raise _Refused(f"the deflated entries declare more than {_MAX_INFLATED >> 20} MiB in all")
        records.append((name, shown, raw_name, flags, method, crc, csize, usize, offset))
        pos = end
    if len(records) != count:
        # miniz indexes `count` records, zipfile every record in the directory
        raise _Refused(f"the end record counts {count} entries but the central directory holds {len(records)}")

    seen: dict[str, str] = {}
    for name, shown, *_ in records:
        folded = name.casefold()
        if folded in seen:
            other = seen[folded]
            if other == name:
                raise _Refused(f"entry {shown} appears twice; the readers would pick different copies")
            # miniz (mz_zip_reader_locate_file) compares names case-insensitively
            raise _Refused(f"entries {_show(other)} and {shown} differ only in case; torch's reader "
                           f"looks names up case-insensitively")
        seen[folded] = name

    # ---- local records tile [0, cd_offset): the first at 0, each where the previous one
    # ends, in central-directory order, no byte outside a record.
    entries: dict[str, bytes] = {}
    pos = 0
    for name, shown, raw_name, flags, method, crc, csize, usize, offset in records:
        where = f"entry {shown}"
        if offset != pos:
            if pos == 0:
                raise _Refused(f"the first central record places {shown} at {offset}, not at 0 (bytes "
                               f"before the first entry, or records out of order)")
            raise _Refused(f"{where} starts at {offset}, but the previous record ends at {pos} (a gap, an "
                           f"overlap, or records out of central-directory order)")
        if pos + _LOCAL.size > cd_offset:
            raise _Refused(f"{where}: its local header runs into the central directory")
        (sig, _, l_flags, l_method, _, _, l_crc, l_csize, l_usize, nlen, xlen) = _LOCAL.unpack_from(data, pos)
        if sig != _SIG_LOCAL:
            raise _Refused(f"{where}: no local header signature at offset {pos}")
        start = pos + _LOCAL.size + nlen + xlen
        end = start + csize
        if end > cd_offset:
            raise _Refused(f"{where}: its data ({csize} bytes at {start}) runs into the central directory")
        if data[pos + _LOCAL.size:pos + _LOCAL.size + nlen] != raw_name:
            raise _Refused(f"{where}: the local header names it "
                           f"{_show(data[pos + _LOCAL.size:pos + _LOCAL.size + nlen])}")
        if (l_flags, l_method) != (flags, method):
            raise _Refused(f"{where}: the local header's flags/method (0x{l_flags:04x}/{l_method}) differ from the "
                           f"central directory's (0x{flags:04x}/{method})")
        l_fields = _extras(data[pos + _LOCAL.size + nlen:start], f"{where} (local)", _LOCAL_EXTRAS)
        local_zip64 = _EXTRA_ZIP64 in l_fields
        if flags & _FLAG_DESCRIPTOR:
            # APPNOTE 4.4.4: CRC and sizes are zero in the local header and follow the data;
            # zipfile writes 0xFFFFFFFF sizes with a zip64 extra, miniz zeros.
            sentinel = {0, _U32} if local_zip64 else {0}
            if l_crc != 0 or l_csize not in sentinel or l_usize not in sentinel or l_csize != l_usize:
                raise _Refused(f"{where}: the local header has CRC/sizes although they follow the data")
            _zip64_values(l_fields, [l_usize, l_csize], f"{where} (local)", exact=False)
            # 64-bit sizes exactly when the local header has a zip64 extra (APPNOTE 4.3.9.1;
            # miniz's local_dir_footer, zipfile's _ZipWriteFile.close)
            desc = _DESCRIPTOR64 if local_zip64 else _DESCRIPTOR32
            if end + desc.size > cd_offset:
                raise _Refused(f"{where}: its data descriptor runs into the central directory")
            d_sig, d_crc, d_csize, d_usize = desc.unpack_from(data, end)
            if d_sig != _SIG_DESCRIPTOR:
                raise _Refused(f"{where}: no data descriptor signature after its data")
            if (d_crc, d_csize, d_usize) != (crc, csize, usize):
                raise _Refused(f"{where}: the data descriptor (CRC {d_crc:08x}, {d_csize}/{d_usize} bytes) disagrees "
                               f"with the central directory (CRC {crc:08x}, {csize}/{usize} bytes)")
            next_pos = end + desc.size
        else:
            l_usize, l_csize = _zip64_values(l_fields, [l_usize, l_csize], f"{where} (local)", exact=False)
            if (l_crc, l_csize, l_usize) != (crc, csize, usize):
                raise _Refused(f"{where}: the local header (CRC {l_crc:08x}, {l_csize}/{l_usize} bytes) disagrees "
                               f"with the central directory (CRC {crc:08x}, {csize}/{usize} bytes)")
            next_pos = end
        payload = data[start:end] if method == 0 else _inflate(data[start:end], usize, where)
        if zlib.crc32(payload) != crc:
            # torch's miniz build skips this check (MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS), zipfile does not
            raise _Refused(f"{where}: CRC-32 {zlib.crc32(payload):08x} of its data is not the declared {crc:08x}")
        entries[name] = payload
        pos = next_pos
    if pos != cd_offset:
        raise _Refused(f"{cd_offset - pos} bytes between the last entry and the central directory")
    return entries


def read_archive(data: bytes, path) -> StrictArchive:
    """Parse ``data`` strictly; raise UntrustedFileError (one line naming the rule) for
    anything that two zip readers could read differently. ``path`` is only for messages.

    Accepted: [local records][central directory][zip64 end record + locator][end record],
    every byte in one of them, found by position, never by searching:

    * the end record is the last 22 bytes (no comment), disk 0, its counts equal;
    * a zip64 locator, if the 20 bytes before the end record are one, points at the zip64
      end record right before it (44-byte record, disk 0 of 1), whose values the end
      record repeats (saturated at 0xFFFF / 0xFFFFFFFF);
    * the central directory ends where those records start and holds exactly the counted
      records; at least one entry;
    * local records tile [0, central directory) in central order: header, name, extra,
      data and, with flag bit 3, a data descriptor (64-bit iff the local extra has zip64);
    * each local header repeats its central record's name bytes, flags, method, CRC and
      sizes (zeros when a descriptor follows); the data matches the CRC;
    * methods 0 (stored) and 8 (deflated: an exact, complete stream of the declared size);
      flags only 0x0008 and 0x0800; no encryption, comments, other disks, version > 4.5;
    * extra fields: zip64 (central and local) and torch's "FB" padding (local), well formed,
      each once; a zip64 extra exactly where a 32-bit field holds 0xFFFFFFFF;
    * names: non-empty, at most 511 bytes, UTF-8 (ASCII without the UTF-8 flag), no control
      characters, backslash, leading "/", drive letter, empty, "." or ".." component;
      unique, also ignoring case;
    * sizes no larger than the file (inflated: within deflate's 1032:1 and 1 GiB in all).
    """
    try:
        return StrictArchive(_parse(bytes(data)))
    except _Refused as exc:
        raise UntrustedFileError(f"{path}: {exc}; refusing an ambiguous zip archive") from None


def relative_to_root(entries: dict[str, bytes]) -> dict[str, bytes] | None:
    """``entries`` with their one top-level folder taken off (torch writes every record of an
    archive under one root), or None when they are not all under one root."""
    roots = {n.split("/", 1)[0] for n in entries}
    if len(roots) != 1 or any("/" not in n for n in entries):
        return None
    return {n.split("/", 1)[1]: data for n, data in entries.items()}


def canonical_bytes(archive: StrictArchive) -> bytes:
    """A fresh archive holding exactly ``archive.entries``, laid out byte for byte as
    torch's PyTorchStreamWriter (miniz with MZ_ZIP_FLAG_WRITE_ZIP64) lays out stored
    records: UTF-8 flag, zero time, 64-byte aligned data via an "FB" local extra field,
    CRC and sizes in a data descriptor (non-empty entries), zip64 extras only for values
    >= 4 GiB, and always a zip64 end record + locator. Every entry is stored, also the
    TorchScript code that torch deflates: torch then inflates nothing an attacker wrote.

    Not written with ``torch._C.PyTorchFileWriter`` itself: it renames the top folder
    ("archive/" for buffers, the file's stem for paths) and rewrites
    ``.data/serialization_id`` and missing ``version``/``byteorder`` records
    (inline_container.cc writeRecord / writeEndOfFile), so the entries would not be exactly
    the ones validated. The result is re-read with :func:`read_archive` before it is returned.
    """
    chunks: list[bytes] = []  # joined once at the end: payloads are not copied twice
    central: list[bytes] = []
    offset = 0
    for name, payload in archive.entries.items():
        raw = name.encode("utf-8")
        length = len(payload)
        crc = zlib.crc32(payload)
        big_size, big_offset = length >= _ZIP64_AT, offset >= _ZIP64_AT
        flags = _FLAG_UTF8 | (_FLAG_DESCRIPTOR if length else 0)  # miniz: no descriptor for empty data
        local_zip64 = central_zip64 = b""
        if big_size or big_offset:
            # miniz writes the local zip64 extra before it knows the compressed size (0)
            local_vals = ([length, 0] if big_size else []) + ([offset] if big_offset else [])
            central_vals = ([length, length] if big_size else []) + ([offset] if big_offset else [])
            local_zip64 = struct.pack(f"<HH{len(local_vals)}Q", _EXTRA_ZIP64, 8 * len(local_vals), *local_vals)
            central_zip64 = struct.pack(f"<HH{len(central_vals)}Q", _EXTRA_ZIP64, 8 * len(central_vals),
                                        *central_vals)
        # inline_container.cc getPadding: data starts on a multiple of the alignment
        unpadded = offset + _LOCAL.size + len(raw) + len(local_zip64) + _EXTRA_HEADER.size
        pad = -unpadded % _ALIGNMENT
        extra = local_zip64 + _EXTRA_HEADER.pack(_EXTRA_TORCH_PADDING, pad) + b"Z" * pad
        record = [_LOCAL.pack(_SIG_LOCAL, 0, flags, 0, 0, 0, 0, 0, 0, len(raw), len(extra)), raw, extra, payload]
        if length:
            desc = _DESCRIPTOR64 if local_zip64 else _DESCRIPTOR32
            record.append(desc.pack(_SIG_DESCRIPTOR, crc, length, length))
        size32 = _U32 if big_size else length  # miniz: MZ_MIN(size, MZ_UINT32_MAX)
        central += [_CENTRAL.pack(_SIG_CENTRAL, 0, 0, flags, 0, 0, 0, crc, size32, size32, len(raw),
                                  len(central_zip64), 0, 0, 0, 0, _U32 if big_offset else offset), raw, central_zip64]
        chunks += record
        offset += sum(map(len, record))
    count = len(archive.entries)
    cd_offset = offset if count else 0  # miniz leaves it 0 for an empty archive
    cd_size = sum(map(len, central))
    record_at = offset + cd_size
    chunks += central
    chunks.append(_ZIP64_END.pack(_SIG_ZIP64_END, _ZIP64_RECORD_SIZE, _ZIP64_MADE_BY, _ZIP64_VERSION, 0, 0, count,
                                  count, cd_size, cd_offset))
    chunks.append(_ZIP64_LOCATOR.pack(_SIG_ZIP64_LOCATOR, 0, record_at, 1))
    chunks.append(_EOCD.pack(_SIG_EOCD, 0, 0, min(count, _U16), min(count, _U16), min(cd_size, _U32),
                             min(cd_offset, _U32), 0))
    result = b"".join(chunks)
    again = read_archive(result, "canonical archive")  # self-check: what torch gets is what was validated
    if again.entries != archive.entries:
        raise AssertionError("canonical_bytes: the rebuilt archive does not hold the validated entries")
    return result
