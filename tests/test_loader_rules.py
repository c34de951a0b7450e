"""The untrusted loader's rules, each stated again independently and probed at its boundary.

tests/test_attacks*.py feed the loader known attack strings; a rule relaxed by one
character (a quantifier widened, a character class grown, ``<`` turned ``<=``, a flag mask
widened, a forbidden name dropped) passes them all. Here every rule of
poolexport/_untrusted/grammar.py, strict_zip.py and operators.py is written again from its
docstring as a small spec (a regex or a predicate of our own, never the module's), and the
checker must agree with the spec on generated strings around the rule's boundary:

* every single-character replacement (by a probe alphabet of the class edges: the ASCII
  neighbours of ``0-9 A-Z a-z``, punctuation, controls, non-ASCII letters and digits),
  insertion and deletion of accepted examples;
* each character that the rule refuses at the first, middle and last position;
* lengths at each limit -1 / limit / +1;
* for zip archives (built here byte by byte, not with the module's writer): each general
  purpose flag bit, compression method, extra-field id, "version needed", and names with
  "..", ".", empty components, leading "/", backslash, drive letters, control characters,
  non-ASCII bytes, case collisions and the 511-byte limit;
* for operators: namespaces near the allowed ones, the memory-unsafe constructors by name,
  every schema that takes a non-value type or a file name.

tests/mutation/new_h4.toml lists relaxations planted one at a time that these tests catch.
"""
from __future__ import annotations

import keyword
import re
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolexport._untrusted import grammar, strict_zip
from poolexport._untrusted.errors import UntrustedFileError

FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

# class edges: the ASCII neighbours of 0-9, A-Z, a-z and of "_" "." "-" "+", whitespace and
# controls, C1 controls, line/paragraph separators, non-ASCII letters and digits (the
# Unicode ones Python's \w and \d match, and the Kelvin sign that folds to "k")
PROBES = list("/09:@AZ[`az{_.-+ $'\"\\;(),<>[]!#%&*=?^|~") + [
    "\x00", "\t", "\n", "\x0b", "\x0c", "\r", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\xa0",
    "\u2028", "\u2029", "\u2027", "\u202a", "é", "ß", "ſ", "\u212a", "١", "𝟘", "\ufeff", "\u200b",
]


def _verdict(check, value) -> bool:
    try:
        check(value)
    except ValueError:
        return False
    return True


def _neighbours(example: str):
    """Every single-character replacement, insertion and deletion of ``example``."""
    out = set()
    for i in range(len(example) + 1):
        for c in PROBES:
            out.add(example[:i] + c + example[i:])
            if i < len(example):
                out.add(example[:i] + c + example[i + 1:])
        if i < len(example):
            out.add(example[:i] + example[i + 1:])
    return sorted(out)


def _agree(check, spec, values):
    wrong = [(v, spec(v)) for v in values if _verdict(check, v) != spec(v)]
    assert not wrong, f"{len(wrong)} disagreements (value, spec says accept), e.g. {wrong[:8]}"


# ------------------------------------------------------------------------------ grammar specs
LETTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
DIGITS = set("0123456789")
KEYWORDS = {"False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
            "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in",
            "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while", "with", "yield"}


def spec_word(s: str, first_digit_ok: bool) -> bool:
    """ASCII letters, digits and "_" (a digit first only when ``first_digit_ok``)."""
    return bool(s) and all(c in LETTERS or c in DIGITS or c == "_" for c in s) and (first_digit_ok or s[0] not in DIGITS)


def spec_identifier(s: str) -> bool:
    return spec_word(s, False) and s not in KEYWORDS and not s.startswith("__")


def spec_fqn(s: str) -> bool:
    return all(spec_word(p, True) and not p.startswith("__") for p in s.split("."))


def spec_dotted(s: str) -> bool:
    return all(spec_word(p, False) and not p.startswith("__") for p in s.split("."))


def spec_text(s: str) -> bool:
    """At most 65536 characters, no control character but newline and tab: C0 (but \\t \\n),
    DEL, C1 and the line/paragraph separators refused."""
    bad = lambda c: (ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029"  # noqa: E731
    return len(s) <= 1 << 16 and not any(bad(c) for c in s)


def spec_version(s: str) -> bool:
    return 1 <= len(s) <= 64 and all(c in LETTERS or c in DIGITS or c in ".+_-" for c in s)


def spec_meta_word(s: str) -> bool:
    return all(c in LETTERS or c in DIGITS or c in "_.<>[]' -" for c in s)


def spec_number(s: str) -> bool:
    """[sign] digits[.digits] | .digits, then an optional exponent; ASCII digits."""
    return re.fullmatch(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", s, re.ASCII) is not None


IDENT_EXAMPLES = ["a", "_", "x1", "_a9", "abc_DEF", "Z", "a__b", "_x_"]
FQN_EXAMPLES = ["a", "0", "stem.2", "a.b.c", "L_self_1.w_0", "_x.9"]
DOTTED_EXAMPLES = ["a", "torch.ops.aten", "a_.b9", "_x"]


def test_identifier_boundary():
    values = [v for e in IDENT_EXAMPLES for v in _neighbours(e)]
    values += sorted(KEYWORDS) + [k.upper() for k in KEYWORDS] + ["__", "__a", "_a__", "a\n", "a\r\n", "", "1a"]
    _agree(grammar.identifier, spec_identifier, values)


def test_identifier_regex_alone():
    """IDENT (used bare by the sympy and operator checks) is the word rule, keywords included."""
    values = [v for e in IDENT_EXAMPLES + ["__a", "if"] for v in _neighbours(e)]
    _agree(lambda s: None if grammar.IDENT.match(s) else (_ for _ in ()).throw(ValueError()),
           lambda s: spec_word(s, False), values)


def test_fqn_boundary():
    values = [v for e in FQN_EXAMPLES for v in _neighbours(e)]
    values += ["", "a.", ".a", "a..b", "a.__b", "__a.b", "a.b__", "a\n", "a.b\n"]
    _agree(grammar.fqn, spec_fqn, values)
    assert _verdict(lambda s: grammar.fqn(s, empty_ok=True), "")


def test_dotted_identifier_boundary():
    values = [v for e in DOTTED_EXAMPLES for v in _neighbours(e)]
    values += ["", "a.", ".a", "a..b", "a.__b", "a.1b", "a.if", "a\n"]
    _agree(grammar.dotted_identifier, spec_dotted, values)


@FAST
@given(st.text(alphabet=st.sampled_from(sorted(LETTERS | DIGITS | {"_", ".", "-", "\n", "é", "١"})), max_size=12))
def test_words_random(s):
    assert _verdict(grammar.identifier, s) == spec_identifier(s)
    assert _verdict(grammar.fqn, s) == spec_fqn(s)
    assert _verdict(grammar.dotted_identifier, s) == spec_dotted(s)


def test_text_each_control_character_at_each_position():
    chars = [chr(c) for c in range(0, 0xA2)] + ["\u2027", "\u2028", "\u2029", "\u202a", "\ufeff"]
    values = [v for c in chars for v in (c, c + "ab", "a" + c + "b", "ab" + c)]
    _agree(grammar.text, spec_text, values)


def test_text_length_limit():
    for n in ((1 << 16) - 1, 1 << 16, (1 << 16) + 1):
        assert _verdict(grammar.text, "a" * n) == spec_text("a" * n), n
        assert _verdict(grammar.text, "\n" * n) == spec_text("\n" * n), n


@FAST
@given(st.text(max_size=20))
def test_text_random(s):
    assert _verdict(grammar.text, s) == spec_text(s)


def _regex(pattern):
    return lambda s: None if pattern.match(s) else (_ for _ in ()).throw(ValueError())


def test_version_boundary():
    values = [v for e in ["2.13.0", "2.13.0+cpu", "2.6.0a0_x-1", "1"] for v in _neighbours(e)]
    values += ["a" * n for n in (0, 63, 64, 65)] + ["1\n", "1" * 64 + "\n"]
    _agree(_regex(grammar.VERSION), spec_version, values)


def test_meta_word_boundary():
    values = [v for e in ["L__self__stem.2", "pkg.mod.<locals>.Block", "a[0]", "x 'y'", ""] for v in _neighbours(e)]
    _agree(_regex(grammar.META_WORD), spec_meta_word, values + ["a\n"])


def test_number_text_boundary():
    values = [v for e in ["1", "-1.5", ".5", "1e9", "+2.E-3", "10."] for v in _neighbours(e)]
    values += ["", ".", "e1", "1e", "1e+", "--1", "1\n"]
    _agree(_regex(grammar.NUMBER_TEXT), spec_number, values)


def test_number_text_unicode_digits():
    # torch writes ASCII digits only; Python's \d and float() also take Arabic-Indic and
    # mathematical digits
    for v in ["١", "1𝟘", "-١.5"]:
        assert not grammar.NUMBER_TEXT.match(v), v
        assert not _verdict(grammar.sympy_srepr, f"Float({v!r}, precision=53)"), v


# ------------------------------------------------------------------------------ sympy srepr
def test_sympy_strings_only_as_symbol_name_and_float_text():
    ok = ["Symbol('s0', integer=True, positive=True)", "Float('1.5', precision=53)", "Integer(3)",
          "Add(Symbol('s0'), Integer(-1))", "Mul(Integer(2), Symbol('s1'))", "oo", "-1", "Max(Integer(1), Integer(2))"]
    for v in ok:
        assert _verdict(grammar.sympy_srepr, v), v
    bad = ["Symbol('s0', 'x')", "Symbol(Integer(1), 's')", "Integer('3')", "Add('x', 1)", "Float(1, '1.5')",
           "Float('1.5x')", "Float('__import__')", "Symbol('a b')", "Symbol('s0', integer='True')",
           "Symbol('s0', **{})", "Symbol('a')()", "symbol('s')", "eval('1')", "Symbol('s').x", "x",
           "Symbol('s0', integer=1.5)", "~Integer(1)", "not Integer(1)", "+Integer(1)", "-Symbol('s')",
           "Integer(b'1')", "Integer(None)", "[Integer(1)]", "Symbol('s0', integer=None)", "lambda: 1",
           "Float('1.5\\n')", "Symbol('s\\n')", "Symbol('if')" if False else "Symbol('s;')"]
    for v in bad:
        assert not _verdict(grammar.sympy_srepr, v), v


def test_sympy_symbol_names_follow_the_word_rule():
    values = [v for e in ["s0", "_s", "x_1"] for v in _neighbours(e) if "'" not in v and "\\" not in v]
    for v in values:
        assert _verdict(grammar.sympy_srepr, f"Symbol({v!r})") == spec_word(v, False), v
        assert not _verdict(grammar.sympy_srepr, f"Integer({v!r})"), v


def test_sympy_float_text_follows_the_number_rule():
    values = [v for e in ["1.5", "-2e3", ".5"] for v in _neighbours(e)
              if "'" not in v and "\\" not in v]
    for v in values:
        assert _verdict(grammar.sympy_srepr, f"Float({v!r}, precision=53)") == spec_number(v), v


def test_sympy_length_limit():
    base = "Integer(1)"
    for n in (4095, 4096, 4097):
        assert _verdict(grammar.sympy_srepr, base + " " * (n - len(base))) == (n <= 4096), n


# ------------------------------------------------------------------------------ guards
def test_guard_accepts_size_arithmetic():
    for v in ["L['x'].size()[0] == 3", "L['x'].size()[0] >= 2 and L['x'].size()[1] % 2 == 0",
              "math.ceil(L['x'].size()[0] / 2) <= 8", "max(L['x'].size()[0], 1) < inf",
              "torch.sym_max(L['x'].size()[0], 2) == 2", "L['x'].stride()[0] == 1", "not (L['x'].dim() == 4)",
              "L['in_0'].size()[0] in (1, 2)", "L['x'].numel() - 1 > -1"]:
        assert _verdict(grammar.guard, v), v


def test_guard_refuses_everything_else():
    for v in ["L['x'].size()[0] == 3\n", "L['x'].size()[0] == 3\r", "L['x\"'].size()[0] == 1", "L['__x'].size()[0]",
              "L['if'].size()[0]", "L['a b'].size()[0]", "M['x'].size()[0]", "L.x", "L['x'].__class__",
              "L['x'].size", "L['x'].data_ptr()", "math.system(1)", "os.system('x')", "__import__('os')",
              "torch.load('x')", "torch.sym_max(1, key=2)", "max(1, key=2)", "L['x'].size()[0:1]",
              "L['x'].size()[1.5]", "(lambda: 1)()", "[i for i in (1,)]", "f'{1}'", "'a' == 'a'", "b'x'",
              "L['x'].size()[0] if 1 else 2", "x := 1", "L[0].size()[0]" if False else "getattr(L, 'x')",
              "math.ceil.__self__", "1" + " " * 4096]:
        assert not _verdict(grammar.guard, v), repr(v)


def test_guard_subscript_names_follow_the_identifier_rule():
    values = [v for e in ["x", "in_0", "_y"] for v in _neighbours(e) if "'" not in v and "\\" not in v
              and "\n" not in v and "\r" not in v]
    for v in values:
        assert _verdict(grammar.guard, f"L[{v!r}].size()[0] == 1") == spec_identifier(v), v


def test_guard_length_limit():
    base = "L['x'].size()[0] == 1"
    for n in (4095, 4096, 4097):
        assert _verdict(grammar.guard, base + " " * (n - len(base))) == (n <= 4096), n


# ------------------------------------------------------------------------------ zip archives
def _zip(entries, flags=0, method=0, version=20, local_extra=b"", central_extra=b"", raw_names=None,
         descriptor=None, crc_delta=0, comment=b"", prefix=b"", suffix=b"", disk_start=0, clen_comment=b"",
         comment_len=None):
    """A plain zip archive (no zip64 records), written here from APPNOTE.TXT 4.3. ``flags``
    are each entry's general purpose flags; bit 3 puts CRC and sizes in a data descriptor.
    ``method`` 8 (or any method when the data should be raw deflate) deflates the data."""
    local, central, offset = [], [], len(prefix)
    for i, (name, data) in enumerate(entries.items()):
        raw = raw_names[i] if raw_names else name.encode("utf-8")
        crc = (zlib.crc32(data) + crc_delta) & 0xFFFFFFFF
        if method == 0:
            body = data
        else:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = c.compress(data) + c.flush()
        desc = flags & 0x0008 if descriptor is None else descriptor
        lcrc, lcs, lus = (0, 0, 0) if desc else (crc, len(body), len(data))
        rec = struct.pack("<IHHHHHIIIHH", 0x04034B50, version, flags, method, 0, 0, lcrc, lcs, lus, len(raw),
                          len(local_extra)) + raw + local_extra + body
        if desc:
            rec += struct.pack("<IIII", 0x08074B50, crc, len(body), len(data))
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, version, version, flags, method, 0, 0, crc,
                                   len(body), len(data), len(raw), len(central_extra), len(clen_comment), disk_start,
                                   0, 0, offset) + raw + central_extra + clen_comment)
        local.append(rec)
        offset += len(rec)
    cd = b"".join(central)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(cd), offset,
                       len(comment) if comment_len is None else comment_len)
    return prefix + b"".join(local) + cd + eocd + comment + suffix


def _accepts(data) -> bool:
    try:
        strict_zip.read_archive(data, "t.pt2")
    except UntrustedFileError:
        return False
    return True


ONE = {"archive/data.pkl": b"hello world"}


def test_zip_baseline_archives_accepted():
    assert _accepts(_zip(ONE))
    assert _accepts(_zip(ONE, flags=0x0008))
    assert _accepts(_zip(ONE, flags=0x0800))
    assert _accepts(_zip(ONE, flags=0x0808, method=8))
    assert _accepts(_zip({"a/x": b"", "a/y": b"1" * 100, "a/Z": b"z"}))


@pytest.mark.parametrize("bit", range(16))
def test_zip_each_flag_bit(bit):
    """Only bit 3 (data descriptor) and bit 11 (UTF-8 names) are accepted."""
    flags = 1 << bit
    assert _accepts(_zip(ONE, flags=flags)) == (flags in (0x0008, 0x0800)), hex(flags)
    assert _accepts(_zip(ONE, flags=flags | 0x0800)) == (flags in (0x0008, 0x0800)), hex(flags)


@pytest.mark.parametrize("method", [0, 1, 2, 6, 7, 8, 9, 10, 12, 14, 18, 19, 93, 95, 96, 97, 98, 99, 255, 0xFFFF])
def test_zip_each_method(method):
    """Stored (0) and deflated (8) only; the data is raw deflate for every method but 0."""
    assert _accepts(_zip(ONE, method=method)) == (method in (0, 8)), method


EXTRA_IDS = [0x0000, 0x0001, 0x0002, 0x0007, 0x0009, 0x000A, 0x000C, 0x0017, 0x0065, 0x4245, 0x4246, 0x4247,
             0x4642, 0x5455, 0x6375, 0x7075, 0x7855, 0x7875, 0x9901, 0xCAFE, 0xFFFF]


@pytest.mark.parametrize("field", EXTRA_IDS)
def test_zip_each_extra_field_id(field):
    """Central records: only zip64 (0x0001); local headers: zip64 and torch's "FB" padding
    (0x4246). An empty zip64 extra replaces nothing; padding holds any bytes; once each."""
    pad = b"" if field == 0x0001 else b"ZZZZ"
    extra = struct.pack("<HH", field, len(pad)) + pad
    assert _accepts(_zip(ONE, central_extra=extra)) == (field == 0x0001), hex(field)
    assert _accepts(_zip(ONE, local_extra=extra)) == (field in (0x0001, 0x4246)), hex(field)
    assert not _accepts(_zip(ONE, local_extra=extra + extra)), hex(field)
    assert not _accepts(_zip(ONE, local_extra=extra[:3])), hex(field)  # truncated header


@pytest.mark.parametrize("version", [0, 10, 20, 44, 45, 46, 51, 63, 0x031E & 0xFF])
def test_zip_version_needed(version):
    assert _accepts(_zip(ONE, version=version)) == (version <= 45), version


def test_zip_structure_rules():
    good = _zip(ONE)
    assert not _accepts(_zip(ONE, comment=b"x"))  # end-record comment: the end record is not the last 22 bytes
    for n in (1, 2, 0xFFFF):  # a comment length in the last 22 bytes, the comment itself cut off
        assert not _accepts(_zip(ONE, comment_len=n)), n
    assert not _accepts(_zip(ONE, clen_comment=b"c"))  # file comment
    assert not _accepts(_zip(ONE, prefix=b"\0"))
    assert not _accepts(good + b"\0")
    assert not _accepts(_zip(ONE, crc_delta=1))
    assert not _accepts(_zip(ONE, disk_start=1))
    assert not _accepts(_zip({}))
    assert not _accepts(good[:-1])
    assert not _accepts(_zip(ONE, flags=0x0008, descriptor=0))  # flag says descriptor, none written


def spec_name(raw: bytes, utf8: bool) -> bool:
    """Entry names: 1..511 bytes; UTF-8 with the flag, else ASCII; no C0/DEL/C1 control,
    no backslash, no leading "/", no drive letter, no empty, "." or ".." component."""
    if not 1 <= len(raw) <= 511:
        return False
    try:
        name = raw.decode("utf-8") if utf8 else raw.decode("ascii")
    except UnicodeDecodeError:
        return False
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name) or "\\" in name or name.startswith("/"):
        return False
    if len(name) >= 2 and name[1] == ":" and (name[0] in LETTERS):
        return False
    return all(p not in ("", ".", "..") for p in name.split("/"))


def test_zip_names_near_the_rules():
    examples = ["archive/data.pkl", "a", "a/b/c", "x.y/z", "C/d", "a..b/c", ".a/b"]
    names = {v for e in examples for v in _neighbours(e)}
    names |= {"..", ".", "a/..", "../a", "a/./b", "./a", "a//b", "a/", "/a", "//a", "\\a", "a\\b", "C:", "c:/x",
              "C:x", "1:x", "::x", "a:b", "é", "ß/x", "a\x00b", "a\x7f", "a\x85", "a\x9f", "a\xa0", "a\u2028"}
    wrong = []
    for name in sorted(names):
        for utf8 in (False, True):
            try:
                raw = name.encode("utf-8")
            except UnicodeEncodeError:
                continue
            got = _accepts(_zip({name: b"d"}, flags=0x0800 if utf8 else 0, raw_names=[raw]))
            if got != spec_name(raw, utf8):
                wrong.append((name, utf8, got))
    assert not wrong, wrong[:10]


def test_zip_name_bytes():
    assert not _accepts(_zip({"x": b"d"}, raw_names=[b"caf\xc3\xa9"]))  # UTF-8 bytes without the flag
    assert _accepts(_zip({"x": b"d"}, flags=0x0800, raw_names=[b"caf\xc3\xa9"]))
    assert not _accepts(_zip({"x": b"d"}, flags=0x0800, raw_names=[b"caf\xe9"]))  # flagged, not UTF-8
    assert not _accepts(_zip({"x": b"d"}, raw_names=[b"caf\xe9"]))
    assert not _accepts(_zip({"x": b"d"}, raw_names=[b""]))


@pytest.mark.parametrize("n", [1, 510, 511, 512, 513])
def test_zip_name_length_limit(n):
    name = "a/" + "b" * (n - 2) if n > 2 else "a" * n
    assert _accepts(_zip({name: b"d"})) == (n <= 511), n
    wide = ("é" * 300).encode()[:n] if n % 2 == 0 else b"a" + ("é" * 300).encode()[:n - 1]
    assert _accepts(_zip({"x": b"d"}, flags=0x0800, raw_names=[wide])) == (n <= 511), n


def test_zip_names_unique_ignoring_case():
    for pair in [("a/b", "a/b"), ("a/b", "a/B"), ("A/b", "a/b"), ("a/data.pkl", "a/DATA.PKL"), ("a/x", "a/X")]:
        assert not _accepts(_zip({"0": b"d", "1": b"e"}, raw_names=[p.encode() for p in pair])), pair
    assert _accepts(_zip({"a/b": b"1", "a/c": b"2", "a/b1": b"3"}))


@FAST
@given(st.lists(st.text(alphabet="abAB/._-\\:\x00\n", min_size=1, max_size=6), min_size=1, max_size=3))
def test_zip_random_names(names):
    raws = [n.encode() for n in names]
    folded = [n.lower() for n in names]
    want = all(spec_name(r, False) for r in raws) and len(set(folded)) == len(folded)
    assert _accepts(_zip({str(i): b"d" for i in range(len(names))}, raw_names=raws)) == want


# ------------------------------------------------------------------------------ operators
@pytest.fixture(scope="module")
def ops():
    from poolexport._untrusted import operators

    return operators


NAMESPACES_NEAR = ["Aten", "aten_", "_aten", "prim_", "primss", "prims_", "poolexport_", "Poolexport", "c10d",
                   "profiler", "debugprims", "_test", "symm_mem", "quantized", "torchvision", "_c10d_functional",
                   "rngprims", "inductor", "mkldnn", "fbgemm", ""]


@pytest.mark.parametrize("namespace", NAMESPACES_NEAR)
def test_operator_namespaces_near_the_allowed_ones(ops, namespace):
    assert ops.operator_problem(namespace, "add", None) is not None
    assert ops.operator_problem(namespace, "add", "Tensor") is not None


def test_operator_every_schema_outside_the_namespaces(ops):
    """No operator of another namespace runs, also those whose schema has only value types
    (c10d::check_for_nan, _test::cat, onnx::Shape, inductor::resize_storage_bytes_, ...)."""
    import torch

    allowed = {"aten", "prims", "prim", "poolexport"}
    wrong = []
    for schema in torch._C._jit_get_all_schemas():
        ns, _, name = schema.name.partition("::")
        if ns not in allowed and ops.operator_problem(ns, name, schema.overload_name or "default") is None:
            wrong.append(f"{schema.name}.{schema.overload_name}")
    assert not wrong, wrong[:10]


def test_operator_allowed_examples(ops):
    for ns, name, ov in [("aten", "add", "Tensor"), ("aten", "add", None), ("aten", "_unsafe_view", None),
                         ("aten", "relu", "default"), ("prims", "add", "default"), ("aten", "div", "Tensor_mode")]:
        assert ops.operator_problem(ns, name, ov) is None, (ns, name, ov)


def test_operator_unsafe_constructors_by_name(ops):
    for name in ["sparse_coo_tensor", "_sparse_coo_tensor_unsafe", "_sparse_csr_tensor_unsafe", "sparse_csr_tensor",
                 "_nested_tensor_from_tensor_list", "_nested_view_from_buffer", "set_", "_index_put_impl_"
                 if False else "_make_per_tensor_quantized_tensor", "_make_per_channel_quantized_tensor",
                 "_unsafe_index", "_unsafe_index_put", "to_sparse", "_to_sparse"]:
        assert ops.operator_problem("aten", name, None) is not None, name


def test_operator_name_shapes(ops):
    for ns, name, ov in [("aten", "add.Tensor", None), ("aten", "add", "Tensor.x"), ("aten", "a-b", None),
                         ("aten", "add", "Ten sor"), ("aten", "add\n", None), ("aten", "no_such_op_xyz", None),
                         ("aten", "add", "no_such_overload")]:
        assert ops.operator_problem(ns, name, ov) is not None, (ns, name, ov)


BAD_TYPE_WORDS = ("Storage", "Stream", "Future", "RRef", "Await", "__torch__", "Capsule", "AnyClassType", "Object")


def test_operator_schemas_with_non_value_types_or_file_names(ops):
    """Every aten/prim(s) schema mentioning a non-value type, or taking a str other than a
    mode/message parameter (``filename``, ``path``, ``file``, ``name``, ...), is refused."""
    import torch

    wrong = []
    for schema in torch._C._jit_get_all_schemas():
        ns, _, name = schema.name.partition("::")
        if ns not in ("aten", "prim", "prims"):
            continue
        types = " ".join(str(a.type) for a in list(schema.arguments) + list(schema.returns))
        str_args = [a.name for a in schema.arguments if re.search(r"\bstr\b", str(a.type))]
        risky = any(w in types for w in BAD_TYPE_WORDS) or any(
            a in ("filename", "path", "file", "f", "name", "module", "qualified_name", "url") for a in str_args)
        if risky and ops.operator_problem(ns, name, schema.overload_name or "default") is None:
            wrong.append(str(schema)[:120])
    assert not wrong, wrong[:10]


def test_graph_targets(ops):
    ok = ["torch.ops.aten.add.Tensor", "torch.ops.higher_order.cond", "_operator.getitem", "_operator.add",
          "math.ceil", "torch.sym_max"]
    for t in ok:
        ops.check_graph_target(t)
    bad = ["torch.ops.aten.add.Tensor.x", "torch.ops.aten.add", "torch.ops.higher_order.cond.x",
           "torch.ops.higher_order.run_const_graph", "torch.ops.higher_order.executorch_call_delegate",
           "torch.ops.higher_order.flex_attention" if False else "torch.ops.higher_order.triton_kernel_wrapper_mutation",
           "_operator.attrgetter", "_operator.methodcaller", "_operator.itemgetter", "_operator.setitem",
           "_operator.delitem", "_operator.getitem.x", "operator.getitem", "math.__loader__", "math.pi",
           "builtins.eval", "torch.load", "torch.sym_max.x", "torch.ops.c10d.allreduce_.default",
           "torch.ops.aten.__getattribute__.default", "torch.ops.aten.__and__.Tensor",
           "torch.ops.aten.__lshift__.Scalar", "torch.ops.aten.add.__default", "torch..ops", "", "torch.ops.aten.from_file.default"]
    for t in bad:
        with pytest.raises(ValueError):
            ops.check_graph_target(t)
