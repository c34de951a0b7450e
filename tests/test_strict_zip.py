"""strict_zip: an untrusted zip is read once, strictly, and torch gets a canonical rebuild.

Every malformed archive here is assembled byte by byte (the builders below), one test per
rule, with its boundary. The attacks at the end first prove that Python's ``zipfile`` and
torch's reader (miniz, ``torch._C.PyTorchFileReader``) really read two different archives
from the one byte string, then that :func:`read_archive` refuses it.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

import poolexport  # noqa: F401  (registers the poolexport:: ops the shipped examples use)
from poolexport._untrusted import strict_zip
from poolexport._untrusted.errors import UntrustedFileError
from poolexport._untrusted.strict_zip import StrictArchive, canonical_bytes, read_archive

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PT2 = EXAMPLES / "resnet_softpool.pt2"
TS = EXAMPLES / "newcbam.ts"

# ----------------------------------------------------------------------------- builders
LOCAL = struct.Struct("<IHHHHHIIIHH")
CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
EOCD = struct.Struct("<IHHHHIIH")
ZIP64_END = struct.Struct("<IQHHIIQQQQ")
LOCATOR = struct.Struct("<IIQI")
SIG_LOCAL, SIG_CENTRAL, SIG_EOCD = 0x04034B50, 0x02014B50, 0x06054B50
SIG_ZIP64_END, SIG_LOCATOR, SIG_DESCRIPTOR = 0x06064B50, 0x07064B50, 0x08074B50
UTF8, DESCRIPTOR = 0x0800, 0x0008
U32 = 0xFFFFFFFF


def _raw(name) -> bytes:
    return name.encode("utf-8") if isinstance(name, str) else name


def extra_field(field_id: int, payload: bytes) -> bytes:
    return struct.pack("<HH", field_id, len(payload)) + payload


def zip64_extra(*values: int) -> bytes:
    return extra_field(0x0001, struct.pack(f"<{len(values)}Q", *values))


def entry(name, data: bytes = b"payload", **kw) -> dict:
    """One record for :func:`assemble`. kw: ``stored`` (the bytes in the file, default
    ``data``), ``local``/``central`` (field overrides), ``tail`` (bytes after the data)."""
    return {"name": name, "data": data, **kw}


def with_descriptor(name, data: bytes = b"payload", **kw) -> dict:
    """A record as torch writes it: flag bit 3, zeros in the local header, CRC and sizes after the data."""
    local = {"flags": UTF8 | DESCRIPTOR, "crc": 0, "csize": 0, "usize": 0, **kw.pop("local", {})}
    central = {"flags": UTF8 | DESCRIPTOR, **kw.pop("central", {})}
    tail = struct.pack("<IIII", SIG_DESCRIPTOR, zlib.crc32(data), len(data), len(data))
    return entry(name, data, local=local, central=central, tail=kw.pop("tail", tail), **kw)


def local_header(e: dict) -> bytes:
    stored = e.get("stored", e["data"])
    f = {"sig": SIG_LOCAL, "version": 0, "flags": UTF8, "method": 0, "crc": zlib.crc32(e["data"]),
         "csize": len(stored), "usize": len(e["data"]), "name": _raw(e["name"]), "extra": b"",
         **e.get("local", {})}
    name = _raw(f["name"])
    return LOCAL.pack(f["sig"], f["version"], f["flags"], f["method"], 0, 0, f["crc"], f["csize"], f["usize"],
                      len(name), len(f["extra"])) + name + f["extra"]


def central_header(e: dict, offset: int) -> bytes:
    stored = e.get("stored", e["data"])
    f = {"sig": SIG_CENTRAL, "version": 0, "flags": UTF8, "method": 0, "crc": zlib.crc32(e["data"]),
         "csize": len(stored), "usize": len(e["data"]), "name": _raw(e["name"]), "extra": b"", "comment": b"",
         "disk": 0, "offset": offset, **e.get("central", {})}
    name = _raw(f["name"])
    return CENTRAL.pack(f["sig"], 0, f["version"], f["flags"], f["method"], 0, 0, f["crc"], f["csize"], f["usize"],
                        len(name), len(f["extra"]), len(f["comment"]), f["disk"], 0, 0,
                        f["offset"]) + name + f["extra"] + f["comment"]


def assemble(entries, *, before=b"", gaps=None, before_cd=b"", after_cd=b"", zip64=False, eocd=None,
             z64=None, locator=None, between_z64=b"", trailer=b"", shift=0) -> bytes:
    """Local records, central directory, [zip64 end record + locator,] end record.
    ``shift`` moves every recorded offset (as if the archive started ``shift`` bytes later)."""
    gaps = gaps or {}
    out = bytearray(before)
    cd = bytearray()
    for i, e in enumerate(entries):
        offset = len(out) + shift
        out += local_header(e) + e.get("stored", e["data"]) + e.get("tail", b"")
        cd += central_header(e, offset)
        out += gaps.get(i, b"")
    out += before_cd
    cd_offset = len(out) + shift
    out += cd
    out += after_cd
    n = len(entries)
    if zip64:
        record_at = len(out) + shift
        f = {"size": 44, "disk": 0, "cd_disk": 0, "count_disk": n, "count": n, "cd_size": len(cd),
             "cd_offset": cd_offset, **(z64 or {})}
        out += ZIP64_END.pack(SIG_ZIP64_END, f["size"], 0x031E, 45, f["disk"], f["cd_disk"], f["count_disk"],
                              f["count"], f["cd_size"], f["cd_offset"])
        out += between_z64
        f = {"disk": 0, "offset": record_at, "disks": 1, **(locator or {})}
        out += LOCATOR.pack(SIG_LOCATOR, f["disk"], f["offset"], f["disks"])
    f = {"disk": 0, "cd_disk": 0, "count_disk": min(n, 0xFFFF), "count": min(n, 0xFFFF), "cd_size": len(cd),
         "cd_offset": cd_offset, "comment": b"", **(eocd or {})}
    out += EOCD.pack(SIG_EOCD, f["disk"], f["cd_disk"], f["count_disk"], f["count"], f["cd_size"], f["cd_offset"],
                     len(f["comment"])) + f["comment"]
    out += trailer
    return bytes(out)


def good(**kw) -> list:
    return [entry("m/a", b"alpha", **kw), entry("m/b", b"beta")]


def refused(data: bytes, *needles: str, path: str = "evil.pt2") -> str:
    with pytest.raises(UntrustedFileError) as info:
        read_archive(data, path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert message.endswith("refusing an ambiguous zip archive"), message
    for needle in needles:
        assert needle in message, message
    return message


# What each reader sees, without the top folder torch strips.
def zipfile_view(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}


def torch_view(data: bytes) -> dict[str, bytes]:
    reader = torch._C.PyTorchFileReader(io.BytesIO(data))
    return {n: bytes(reader.get_record(n)) for n in reader.get_all_records()}


def strip(entries: dict[str, bytes]) -> dict[str, bytes]:
    return {n.split("/", 1)[1]: d for n, d in entries.items()}


def torch_entries(folder="m", **more: bytes) -> list:
    """Enough for torch's reader to open (it needs a version record)."""
    return [with_descriptor(f"{folder}/{n}", d) for n, d in {".data/version": b"3\n", **more}.items()]


# ----------------------------------------------------------------------------- models
class SmallNet(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))


def torchscript_bytes(seed: int, extra_files=None) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(SmallNet(seed).eval()), buf, _extra_files=extra_files or {})
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_pt2() -> bytes:
    buf = io.BytesIO()
    torch.export.save(torch.export.export(SmallNet(1).eval(), (torch.randn(1, 3, 8, 8),)), buf)
    return buf.getvalue()


X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))  # the exported batch size


# ----------------------------------------------------------------------------- accepted
def test_well_formed_archive_reads_entries_in_order():
    archive = read_archive(assemble([entry("m/b", b"beta"), entry("m/a", b"alpha"), entry("m/empty", b"")]), "x")
    assert archive.names() == ["m/b", "m/a", "m/empty"]
    assert archive.entries == {"m/b": b"beta", "m/a": b"alpha", "m/empty": b""}


def test_one_entry_is_enough():
    assert read_archive(assemble([entry("m/a", b"alpha")]), "x").names() == ["m/a"]


def test_zip64_end_records_where_consistent_are_accepted():
    data = assemble([with_descriptor("m/a", b"alpha"), entry("m/b", b"beta")], zip64=True)
    assert read_archive(data, "x").entries == {"m/a": b"alpha", "m/b": b"beta"}


def test_zip64_entry_extras_where_consistent_are_accepted():
    # central sizes/offset flagged 0xFFFFFFFF with their values in a zip64 extra (APPNOTE 4.5.3)
    data = assemble([entry("m/a", b"alpha"),
                     entry("m/b", b"beta", central={"csize": U32, "usize": U32, "offset": U32,
                                                    "extra": zip64_extra(4, 4, 38)})])
    assert read_archive(data, "x").entries == {"m/a": b"alpha", "m/b": b"beta"}
    assert zipfile_view(data) == {"a": b"alpha", "b": b"beta"}  # what zipfile makes of the same fields


class _Unseekable(io.RawIOBase):
    def __init__(self):
        self.buf = bytearray()

    def writable(self):
        return True

    def write(self, b):
        self.buf += b
        return len(b)


@pytest.mark.parametrize("force_zip64", [False, True])
@pytest.mark.parametrize("seekable", [True, False])
def test_python_zipfile_stored_archives_are_accepted(seekable, force_zip64):
    sink = io.BytesIO() if seekable else _Unseekable()  # unseekable: data descriptors
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as z:
        for name, data in {"m/a": b"alpha", "m/\u00e9t\u00e9": b"summer"}.items():
            with z.open(name, "w", force_zip64=force_zip64) as f:
                f.write(data)
    data = sink.getvalue() if seekable else bytes(sink.buf)
    assert read_archive(data, "x").entries == {"m/a": b"alpha", "m/\u00e9t\u00e9": b"summer"}


def test_deflated_entries_are_inflated():
    # torch.jit.save deflates code/ and .debug_pkl records (export_module.cpp, compress=true)
    text = b"def forward(self, x):\n    return x\n" * 20
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    stored = packed.compress(text) + packed.flush()
    data = assemble([entry("m/code.py", text, stored=stored, local={"method": 8}, central={"method": 8})])
    assert read_archive(data, "x").entries == {"m/code.py": text}


# ----------------------------------------------------------------------------- end records
def test_comment_of_one_byte_refused():
    assert read_archive(assemble(good(), eocd={"comment": b""}), "x")
    refused(assemble(good(), eocd={"comment": b"c"}), "does not end with an end-of-central-directory record")


def test_comment_length_without_comment_refused():
    data = bytearray(assemble(good()))
    data[-2:] = b"\x01\x00"  # the record at len-22 claims a 1-byte comment
    refused(bytes(data), "1-byte comment")


def test_second_end_record_in_comment_refused():
    # an end record whose comment is a second end record: the file's last 22 bytes are the
    # inner one, and the central directory does not end where it starts
    inner = assemble(good())[-22:]
    refused(assemble(good(), eocd={"comment": inner}), "does not end where the end record starts")


def test_byte_after_end_record_refused():
    refused(assemble(good(), trailer=b"\x00"), "does not end with an end-of-central-directory record")


@pytest.mark.parametrize("data", [b"", b"PK\x05\x06", b"\x00" * 21])
def test_too_short_refused(data):
    refused(data, "too short")


def test_not_a_zip_refused():
    refused(b"\x00" * 100, "does not end with an end-of-central-directory record")


@pytest.mark.parametrize("field", ["disk", "cd_disk"])
def test_end_record_disk_numbers_refused(field):
    refused(assemble(good(), eocd={field: 1}), "only disk 0")


def test_end_record_per_disk_count_refused():
    refused(assemble(good(), eocd={"count_disk": 1}), "on this disk")


@pytest.mark.parametrize("delta", [-1, 1])
def test_entry_count_off_by_one_refused(delta):
    message = refused(assemble(good(), eocd={"count": 2 + delta, "count_disk": 2 + delta}), "counts")
    assert "holds 2" in message or "more than" in message


def test_zero_entries_refused():
    refused(assemble([]), "no entries")


def test_central_directory_not_ending_at_end_record_refused():
    refused(assemble(good(), after_cd=b"\x00"), "does not end where the end record starts")


@pytest.mark.parametrize("delta", [-1, 1])
def test_central_directory_offset_off_by_one_refused(delta):
    base = assemble(good())
    cd_offset = EOCD.unpack_from(base, len(base) - 22)[6]
    refused(assemble(good(), eocd={"cd_offset": cd_offset + delta}), "does not end where")


# ----------------------------------------------------------------------------- zip64 end records
@pytest.mark.parametrize("delta", [-1, 1])
def test_zip64_locator_offset_refused(delta):
    base = assemble(good(), zip64=True)
    record_at = len(base) - 22 - 20 - 56
    refused(assemble(good(), zip64=True, locator={"offset": record_at + delta}), "zip64 locator points at")


def test_zip64_record_not_right_before_locator_refused():
    refused(assemble(good(), zip64=True, between_z64=b"\x00"), "zip64 locator points at")


@pytest.mark.parametrize("disks", [0, 2])
def test_zip64_locator_disk_count_refused(disks):
    refused(assemble(good(), zip64=True, locator={"disks": disks}), "only disk 0 of 1")


def test_zip64_record_size_refused():
    refused(assemble(good(), zip64=True, z64={"size": 45}), "declares 45 bytes")


def test_zip64_record_disk_refused():
    refused(assemble(good(), zip64=True, z64={"disk": 1}), "zip64 end record names a disk")


@pytest.mark.parametrize("field", ["count", "cd_size", "cd_offset"])
def test_end_record_disagreeing_with_zip64_record_refused(field):
    base = assemble(good(), zip64=True)
    values = dict(zip(["count", "cd_size", "cd_offset"], EOCD.unpack_from(base, len(base) - 22)[4:7]))
    eocd = {field: values[field] + 1}
    if field == "count":
        eocd["count_disk"] = values["count"] + 1
    refused(assemble(good(), zip64=True, eocd=eocd), "disagrees with the zip64 end record")


def test_zip64_count_off_by_one_refused():
    refused(assemble(good(), zip64=True, z64={"count": 3, "count_disk": 3}, eocd={"count": 3, "count_disk": 3}),
            "counts 3 entries")


# ----------------------------------------------------------------------------- tiling
def test_byte_before_first_entry_refused():
    refused(assemble(good(), before=b"\x00"), "places 'm/a' at 1, not at 0")


def test_prepended_bytes_that_zipfile_tolerates_refused():
    # offsets written as if the archive started at 0: zipfile shifts them ("concat"), miniz does not
    data = assemble(good(), before=b"#!/bin/sh\n", shift=-10)
    assert zipfile_view(data) == {"a": b"alpha", "b": b"beta"}
    refused(data, "does not end where the end record starts")


def test_gap_of_one_byte_between_entries_refused():
    refused(assemble(good(), gaps={0: b"\x00"}), "previous record ends at")


def test_gap_between_last_entry_and_central_directory_refused():
    refused(assemble(good(), before_cd=b"\x00"), "1 bytes between the last entry and the central directory")


def test_overlapping_entries_refused():
    # the second central record points at the first local record again
    refused(assemble(good() + [entry("m/c", b"alpha", central={"offset": 0, "name": "m/a2"},
                                     local={"name": "m/a2"})]), "previous record ends at")


def test_entries_out_of_central_order_refused():
    a, b, c = entry("m/a", b"alpha"), entry("m/b", b"beta"), entry("m/c", b"gamma")
    out, offsets = b"", {}
    for e in (a, b, c):
        offsets[e["name"]] = len(out)
        out += local_header(e) + e["data"]
    cd = b"".join(central_header(e, offsets[e["name"]]) for e in (a, c, b))  # local order a, b, c
    refused(out + cd + EOCD.pack(SIG_EOCD, 0, 0, 3, 3, len(cd), len(out), 0), "'m/c' starts at")
    cd = b"".join(central_header(e, offsets[e["name"]]) for e in (b, a, c))
    refused(out + cd + EOCD.pack(SIG_EOCD, 0, 0, 3, 3, len(cd), len(out), 0), "not at 0")


def test_local_header_signature_refused():
    refused(assemble(good(local={"sig": SIG_CENTRAL})), "no local header signature")


# ----------------------------------------------------------------------------- local vs central
def test_local_name_differs_refused():
    refused(assemble([entry("m/a", b"alpha", local={"name": "m/b"})]), "local header names it")


def test_local_flags_differ_refused():
    refused(assemble([entry("m/a", b"alpha", local={"flags": 0})]), "flags/method")


def test_local_method_differs_refused():
    refused(assemble([entry("m/a", b"alpha", local={"method": 8})]), "flags/method")


def test_local_crc_differs_refused():
    refused(assemble([entry("m/a", b"alpha", local={"crc": zlib.crc32(b"alpha") ^ 1})]), "the local header (CRC")


def test_local_size_differs_refused():
    refused(assemble([entry("m/a", b"alpha", local={"csize": 4, "usize": 4})]), "the local header (CRC")


def test_torch_style_data_descriptor_accepted_and_checked():
    assert read_archive(assemble([with_descriptor("m/a", b"alpha")]), "x").entries == {"m/a": b"alpha"}
    bad = struct.pack("<IIII", SIG_DESCRIPTOR, zlib.crc32(b"alpha"), 5, 4)
    refused(assemble([with_descriptor("m/a", b"alpha", tail=bad)]), "data descriptor (CRC")


def test_data_descriptor_without_signature_refused():
    tail = struct.pack("<IIII", 0, zlib.crc32(b"alpha"), 5, 5)
    refused(assemble([with_descriptor("m/a", b"alpha", tail=tail)]), "no data descriptor signature")


def test_data_descriptor_flag_with_local_sizes_refused():
    refused(assemble([with_descriptor("m/a", b"alpha", local={"csize": 5, "usize": 5})]),
            "has CRC/sizes although they follow the data")


def test_crc_off_by_one_bit_refused_though_torch_would_load_it():
    crc = zlib.crc32(b"weights") ^ 1
    data = assemble(torch_entries() + [
        with_descriptor("m/w", b"weights", tail=struct.pack("<IIII", SIG_DESCRIPTOR, crc, 7, 7),
                        central={"crc": crc})])
    assert torch_view(data)["w"] == b"weights"  # torch's miniz build does not check CRCs
    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        zipfile_view(data)
    refused(data, "CRC-32")


# ----------------------------------------------------------------------------- methods and flags
def test_compressed_entry_method_refused():
    refused(assemble(good(local={"method": 12}, central={"method": 12})), "compressed with method 12")


def test_deflate_with_trailing_bytes_refused():
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    stored = packed.compress(b"alpha" * 10) + packed.flush() + b"\x00"
    refused(assemble([entry("m/a", b"alpha" * 10, stored=stored, local={"method": 8}, central={"method": 8})]),
            "does not inflate to exactly")


def test_deflate_declared_size_off_by_one_refused():
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    stored = packed.compress(b"alpha" * 10) + packed.flush()
    f = {"method": 8, "usize": 51}
    refused(assemble([entry("m/a", b"alpha" * 10, stored=stored, local=f, central=f)]), "does not inflate to exactly")


def test_deflate_invalid_stream_refused():
    f = {"method": 8}
    refused(assemble([entry("m/a", b"alpha", stored=b"\xff\xff\xff", local=f, central=f)]), "deflate data")


def test_deflate_bomb_declared_size_refused_before_inflating():
    f = {"method": 8, "usize": 10 ** 9}
    refused(assemble([entry("m/a", b"alpha", stored=b"\x03\x00", local=f, central=f)]),
            "more than deflate can encode")


def test_deflated_total_capped(monkeypatch):
    monkeypatch.setattr(strict_zip, "_MAX_INFLATED", 49)
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    stored = packed.compress(b"alpha" * 10) + packed.flush()
    refused(assemble([entry("m/a", b"alpha" * 10, stored=stored, local={"method": 8}, central={"method": 8})]),
            "in all")
    monkeypatch.setattr(strict_zip, "_MAX_INFLATED", 50)
    assert read_archive(assemble([entry("m/a", b"alpha" * 10, stored=stored, local={"method": 8},
                                        central={"method": 8})]), "x")


def test_encrypted_entry_refused():
    f = {"flags": UTF8 | 1}
    refused(assemble([entry("m/a", b"alpha", local=f, central=f)]), "encrypted")


@pytest.mark.parametrize("flag", [0x0002, 0x0040, 0x2000])
def test_other_flags_refused(flag):
    f = {"flags": UTF8 | flag}
    refused(assemble([entry("m/a", b"alpha", local=f, central=f)]), "general-purpose flags")


def test_version_needed_boundary():
    assert read_archive(assemble(good(central={"version": 45})), "x")
    refused(assemble(good(central={"version": 46})), "needs zip version 4.6")


def test_file_comment_refused():
    refused(assemble(good(central={"comment": b"hi"})), "file comment")


def test_entry_on_other_disk_refused():
    refused(assemble(good(central={"disk": 1})), "starts on disk 1")


# ----------------------------------------------------------------------------- extra fields
def test_torch_padding_extra_accepted_in_local_header_only():
    pad = extra_field(0x4246, b"ZZZZ")
    assert read_archive(assemble(good(local={"extra": pad})), "x")
    refused(assemble(good(central={"extra": pad})), "extra field 0x4246")


def test_unicode_path_extra_refused():
    # Info-ZIP's Unicode Path field: a second name that some readers prefer to the header's
    refused(assemble(good(central={"extra": extra_field(0x7075, b"\x01\x00\x00\x00\x00m/x")})),
            "extra field 0x7075")


def test_unknown_local_extra_refused():
    refused(assemble(good(local={"extra": extra_field(0x5455, b"\x00")})), "extra field 0x5455")


def test_truncated_extra_refused():
    refused(assemble(good(central={"extra": b"\x01\x00\x08"})), "truncated extra field")
    refused(assemble(good(central={"extra": b"\x01\x00\x08\x00\x00"})), "longer than its extra data")


def test_repeated_extra_refused():
    pad = extra_field(0x4246, b"")
    refused(assemble(good(local={"extra": pad + pad})), "twice")


def test_zip64_flagged_field_without_extra_refused():
    refused(assemble(good(central={"offset": U32})), "without a zip64 extra field")


def test_zip64_extra_with_unflagged_values_refused():
    refused(assemble(good(central={"extra": zip64_extra(5)})), "with 1 values where its 32-bit fields ask for 0")


def test_zip64_extra_too_short_refused():
    refused(assemble(good(central={"csize": U32, "usize": U32, "extra": zip64_extra(5)})), "ask for 2")


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize("name, flags, needle", [
    (b"", UTF8, "empty name"),
    (b"..", UTF8, "'..' or '.' path component"),
    (b"m/..", UTF8, "'..' or '.' path component"),
    (b"a/../b", UTF8, "'..' or '.' path component"),
    (b"m/./b", UTF8, "'..' or '.' path component"),
    (b"a\\b", UTF8, "backslash"),
    (b"/abs", UTF8, "absolute path"),
    (b"C:/x", UTF8, "drive letter"),
    (b"c:x", UTF8, "drive letter"),
    (b"a//b", UTF8, "empty path component"),
    (b"m/", UTF8, "empty path component"),
    (b"m/a\x00b", UTF8, "NUL or control character"),
    (b"m/a\nb", UTF8, "NUL or control character"),
    (b"m/a\x7f", UTF8, "NUL or control character"),
    (b"m/\xc2\x85", UTF8, "NUL or control character"),  # U+0085, a C1 control
    (b"m/\xff", UTF8, "not UTF-8"),
    (b"m/\xc3\xa9", 0, "non-ASCII name without the UTF-8 flag"),
])
def test_bad_names_refused(name, flags, needle):
    f = {"flags": flags}
    refused(assemble([entry("m/ok", b"ok"), entry(name, b"x", local=f, central=f)]), needle)


def test_utf8_and_plain_ascii_names_accepted():
    f = {"flags": 0}
    data = assemble([entry("m/caf\u00e9", b"x"), entry("m/plain", b"y", local=f, central=f)])
    assert read_archive(data, "x").names() == ["m/caf\u00e9", "m/plain"]


def test_name_length_boundary():
    ok = "m/" + "a" * 509
    assert read_archive(assemble([entry(ok, b"x")]), "x").names() == [ok]
    refused(assemble([entry(ok + "a", b"x")]), "512 bytes", "cuts names")


def test_duplicate_names_refused():
    refused(assemble([entry("m/a", b"one"), entry("m/a", b"two")]), "appears twice")


def test_names_differing_only_in_case_refused_and_torch_confuses_them():
    data = assemble(torch_entries() + [with_descriptor("m/w", b"lower"), with_descriptor("m/W", b"upper")])
    assert zipfile_view(data)["w"] != zipfile_view(data)["W"]
    reader = torch._C.PyTorchFileReader(io.BytesIO(data))
    assert bytes(reader.get_record("w")) == bytes(reader.get_record("W"))  # one of them is unreachable
    refused(data, "differ only in case")


def test_message_stays_one_line_for_hostile_names():
    message = refused(assemble([entry("m/a\r\nb" + "x" * 300, b"x")]), "control character")
    assert len(message) < 400


# ----------------------------------------------------------------------------- sizes
def test_declared_size_larger_than_file_refused():
    f = {"csize": 0xFFFFFFF0, "usize": 0xFFFFFFF0}
    refused(assemble([entry("m/a", b"alpha", local=f, central=f)]), "more than the whole file")


def test_size_one_byte_too_large_refused():
    f = {"csize": 6, "usize": 6}
    refused(assemble([entry("m/a", b"alpha", local=f, central=f), entry("m/b", b"beta")]))
    refused(assemble([entry("m/a", b"alpha", local=f, central=f)]), "runs into the central directory")


def test_stored_sizes_disagreeing_refused():
    f = {"csize": 5, "usize": 6}
    refused(assemble([entry("m/a", b"alpha", local=f, central=f)]), "is stored but declares")


# ----------------------------------------------------------------------------- canonical rebuild
def _torch_writer_bytes(records: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(buf)
    for name, data in records.items():
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return buf.getvalue()


def test_canonical_is_byte_for_byte_what_torch_writes(tiny_pt2):
    # stored archives written by torch 2.13 come back unchanged: same layout, same bytes
    for original in (PT2.read_bytes(), tiny_pt2, _torch_writer_bytes({"empty": b"", "w": b"\x01" * 100})):
        assert canonical_bytes(read_archive(original, "x")) == original


def test_canonical_matches_torch_past_65535_entries():
    # the end record's 16-bit count saturates at 0xFFFF; the zip64 end record holds the count
    original = _torch_writer_bytes({f"r{i}": b"a" for i in range(65536)})
    assert struct.unpack_from("<H", original, len(original) - 12)[0] == 0xFFFF
    archive = read_archive(original, "many")
    assert len(archive.entries) == 65539  # + version, byteorder, serialization_id
    assert canonical_bytes(archive) == original


def test_canonical_zip64_entries_load_in_torch(monkeypatch):
    # the >= 4 GiB layout (zip64 extras, 64-bit descriptors) with the threshold lowered
    monkeypatch.setattr(strict_zip, "_ZIP64_AT", 100)
    original = torchscript_bytes(0)
    rebuilt = canonical_bytes(read_archive(original, "x"))
    assert b"\x01\x00\x18\x00" in rebuilt  # a zip64 extra with size, size, offset
    assert torch_view(rebuilt) == strip(read_archive(original, "x").entries)
    assert zipfile_view(rebuilt) == strip(read_archive(original, "x").entries)
    assert torch.equal(torch.jit.load(io.BytesIO(rebuilt))(X), torch.jit.load(io.BytesIO(original))(X))


def test_canonical_pt2_example_loads_with_same_outputs():
    original = PT2.read_bytes()
    rebuilt = canonical_bytes(read_archive(original, PT2))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = torch.export.load(PT2).module()(x)
    assert torch.equal(torch.export.load(io.BytesIO(rebuilt)).module()(x), expected)


def test_canonical_tiny_exported_program_loads_with_same_outputs(tiny_pt2):
    rebuilt = canonical_bytes(read_archive(tiny_pt2, "tiny.pt2"))
    expected = torch.export.load(io.BytesIO(tiny_pt2)).module()(X)
    assert torch.equal(torch.export.load(io.BytesIO(rebuilt)).module()(X), expected)
    assert torch.equal(expected, SmallNet(1).eval()(X))


def test_canonical_torchscript_loads_with_same_outputs_and_extra_files():
    original = torchscript_bytes(0, {"poolexport.json": b'{"input_shape": [1, 3, 8, 8]}'})
    archive = read_archive(original, "small.pt")
    assert any(n.endswith(".py") for n in archive.names())  # code records, deflated by torch
    rebuilt = canonical_bytes(archive)
    extra = {"poolexport.json": b""}
    loaded = torch.jit.load(io.BytesIO(rebuilt), _extra_files=extra)
    assert extra == {"poolexport.json": b'{"input_shape": [1, 3, 8, 8]}'}
    assert torch.equal(loaded(X), torch.jit.load(io.BytesIO(original))(X))


def test_canonical_torchscript_example_loads_with_same_outputs():
    original = TS.read_bytes()
    rebuilt = canonical_bytes(read_archive(original, TS))
    extra = {"poolexport.json": b""}
    a, b = torch.jit.load(io.BytesIO(original)).eval(), torch.jit.load(io.BytesIO(rebuilt), _extra_files=extra).eval()
    assert b"input_shape" in extra["poolexport.json"]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    expected = a(x)
    torch.manual_seed(0)
    assert torch.equal(b(x), expected)


def test_canonical_refuses_entries_it_would_not_read():
    with pytest.raises(UntrustedFileError, match="'..' or '.' path component"):
        canonical_bytes(StrictArchive({"m/../x": b""}))


def test_canonical_of_python_zipfile_archive_keeps_entries():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("m/a", b"alpha" * 100)
        z.writestr("m/b", b"")
    archive = read_archive(buf.getvalue(), "x")
    assert read_archive(canonical_bytes(archive), "y") == archive


# ----------------------------------------------------------------------------- two readers, two archives
def _records(entries: dict[str, bytes], base: int) -> tuple[bytes, bytes]:
    """Local records and central directory for ``entries``, placed at file offset ``base``."""
    local, central = bytearray(), bytearray()
    for name, data in entries.items():
        e = with_descriptor(name, data)
        central += central_header(e, base + len(local))
        local += local_header(e) + data + e["tail"]
    return bytes(local), bytes(central)


def _zip64_end(count: int, cd_size: int, cd_offset: int) -> bytes:
    return ZIP64_END.pack(SIG_ZIP64_END, 44, 0x031E, 45, 0, 0, count, count, cd_size, cd_offset)


def _end(count: int, cd_size: int, cd_offset: int, record_at: int | None) -> bytes:
    loc = b"" if record_at is None else LOCATOR.pack(SIG_LOCATOR, 0, record_at, 1)
    return loc + EOCD.pack(SIG_EOCD, 0, 0, count, count, cd_size, cd_offset, 0)


def attack_zip64_locator(benign: dict, evil: dict) -> bytes:
    """Two central directories; the locator points at the evil one's zip64 record (miniz
    follows it), the benign one's record sits right before the locator (zipfile reads it)."""
    e_local, e_cd = _records(evil, 0)
    b_local, b_cd = _records(benign, len(e_local))
    out = bytearray(e_local + b_local)
    e_cd_at = len(out)
    out += e_cd
    e_record_at = len(out)
    out += _zip64_end(len(evil), len(e_cd), e_cd_at)
    b_cd_at = len(out)
    out += b_cd
    out += _zip64_end(len(benign), len(b_cd), b_cd_at)
    out += _end(len(benign), len(b_cd), b_cd_at, record_at=e_record_at)
    return bytes(out)


def attack_prepended(benign: dict, evil: dict) -> bytes:
    """The benign archive, whole, after a prefix. zipfile shifts its offsets by the prefix
    ("concat"); miniz reads them as written and lands in the prefix: the evil archive."""
    b_local, b_cd = _records(benign, 0)
    b_record_at = len(b_local) + len(b_cd)
    tail = _zip64_end(len(benign), len(b_cd), len(b_local)) + _end(len(benign), len(b_cd), len(b_local),
                                                                   record_at=b_record_at)
    e_local, e_cd = _records(evil, 0)
    filler = b_record_at - len(e_local) - len(e_cd)
    assert filler >= 0, "the evil archive must fit before the benign one's zip64 record"
    prefix = e_local + e_cd + b"\x00" * filler + _zip64_end(len(evil), len(e_cd), len(e_local))
    return prefix + b_local + b_cd + tail


def attack_count_shadow(benign: dict, evil: dict) -> bytes:
    """One central directory, evil records first; the end record counts only those (miniz
    indexes that many), zipfile reads every record and lets the last of a name win."""
    e_local, e_cd = _records(evil, 0)
    b_local, b_cd = _records(benign, len(e_local))
    cd = e_cd + b_cd
    at = len(e_local) + len(b_local)
    return e_local + b_local + cd + _end(len(evil), len(cd), at, record_at=None)


ATTACKS = {"zip64_locator": attack_zip64_locator, "prepended": attack_prepended, "count_shadow": attack_count_shadow}


def _same_folder(entries: dict, like: dict) -> dict:
    folder = next(iter(like)).split("/", 1)[0]
    return {f"{folder}/{n.split('/', 1)[1]}": d for n, d in entries.items()}


@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_two_readers_two_archives_pt2(kind, tiny_pt2):
    benign = read_archive(PT2.read_bytes(), PT2).entries  # what a zipfile-based check approves
    evil = _same_folder(read_archive(tiny_pt2, "tiny").entries, benign)  # what torch would load
    data = ATTACKS[kind](benign, evil)
    seen_by_zipfile, seen_by_torch = zipfile_view(data), torch_view(data)
    assert seen_by_torch == strip(evil)
    assert {n: seen_by_zipfile[n] for n in strip(benign)} == strip(benign)
    assert seen_by_zipfile != seen_by_torch
    if kind == "zip64_locator":  # torch.export.load really runs the other model
        loaded = torch.export.load(io.BytesIO(data)).module()
        assert torch.equal(loaded(X), SmallNet(1).eval()(X))
    refused(data, path="evil.pt2")


@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_two_readers_two_archives_torchscript(kind):
    benign = read_archive(TS.read_bytes(), TS).entries
    evil = _same_folder(read_archive(torchscript_bytes(7, {"evil.txt": b"x"}), "small").entries, benign)
    data = ATTACKS[kind](benign, evil)
    seen_by_zipfile, seen_by_torch = zipfile_view(data), torch_view(data)
    assert seen_by_torch == strip(evil)
    assert {n: seen_by_zipfile[n] for n in strip(benign)} == strip(benign)
    assert seen_by_zipfile != seen_by_torch
    extra = {"evil.txt": b""}
    assert torch.equal(torch.jit.load(io.BytesIO(data), _extra_files=extra)(X), SmallNet(7).eval()(X))
    assert extra == {"evil.txt": b"x"}
    refused(data, path="evil.pt")
