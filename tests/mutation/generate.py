"""Mutants by rule, not by hand: every comparison and every numeric literal of the listed
files, changed one at a time, written as a mutation list that run.py plants.

    python tests/mutation/generate.py                     # counts per file and rule
    python tests/mutation/generate.py --write FILE        # all of them, as run.py's TOML
    python tests/mutation/generate.py --write FILE --sample 12 --seed 21
                                                          # at most 12 per file, drawn by seed
    python tests/mutation/generate.py --write FILE --sample 2 --fraction 0.03
                                                          # 3% of each file's, at least 2
    python tests/mutation/run.py --file FILE --report out.json

Rules (one change per mutant):
  boundary   ``<`` <-> ``<=``, ``>`` <-> ``>=``            (an off-by-one at a limit)
  negate     ``<`` -> ``>=``, ``<=`` -> ``>``, ..., ``==`` <-> ``!=``
  nudge      an integer literal n -> n + 1 and n - 1; a float literal by one unit in its
             last written digit, up and down. A nudge that leaves the float32 (C++) or
             float (Python) value unchanged is dropped: it compiles to the same program.

What is a comparison: in C/C++, an operator token with a space on both sides (the code is
formatted so; template brackets, ``<<``, ``->`` and ``#include <...>`` never are); in
Python, the ``ast`` Compare nodes' operators, located through ``tokenize``. Comments,
strings, preprocessor lines and ``static_assert`` lines are never mutated, and numbers on
a line, or in one Python dict/list/tuple/set display, that holds TABLE_NUMBERS or more
of them (syscall tables, lane index vectors) are data, not limits: they are not nudged (their comparisons still are).

The sample is drawn per file with a fixed seed, so a rerun plants the same mutants; its
kill rate estimates the file's (the README's Development section states both).
"""
from __future__ import annotations

import argparse
import ast
import io
import math
import random
import re
import sys
import tokenize
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

# The files the issue names, and the tests that must catch a change there (the fast ones
# that exercise each file; run.py stops at the first failure). Not test_fuzz_native.py:
# its AddressSanitizer build (about 2 minutes) would be redone for every native mutant.
_KERNEL_TESTS = [  # quickest and most pointed first: run.py stops at the first failure
    "tests/test_half_conversion.py", "tests/test_boundaries.py", "tests/test_ort_ops.py",
    "tests/test_finite_limits.py", "tests/test_torch_native.py", "tests/test_cpu_isa.py",
    "tests/test_kernels_emulated.py", "tests/test_soft_pool.py", "tests/test_stochastic_pool.py"]
TARGETS: dict[str, list[str]] = {
    "custom_ops/include/poolexport/*.h": _KERNEL_TESTS,
    "custom_ops/ort/*": _KERNEL_TESTS,
    "custom_ops/torch/*": _KERNEL_TESTS,
    "poolexport/onnx/domain.py": [
        "tests/test_shape_inference_grid.py", "tests/test_export_ops.py", "tests/test_ort_ops.py"],
    "poolexport/nn/replace.py": ["tests/test_replace_generated.py", "tests/test_layers.py"],
    "poolexport/_untrusted/*.py": [
        "tests/test_loader_rules.py", "tests/test_strict_zip.py", "tests/test_program_allowlist.py",
        "tests/test_torchscript_allowlist.py", "tests/test_untrusted_files.py", "tests/test_sandbox.py",
        "tests/test_containment.py"],
    # a file named exactly takes its own tests instead of its folder's
    "custom_ops/include/poolexport/ada_pool.h": ["tests/test_ada_pool.py"],
    "custom_ops/ort/ada_kernels.h": ["tests/test_ada_pool.py"],
    "poolexport/ops/_packed.py": ["tests/test_packed_eager.py"],
    "poolexport/_gmp.py": ["tests/test_gmp.py"],
    "serve/batcher.py": ["tests/test_serve_batcher.py"],
}
TABLE_NUMBERS = 6
C_SUFFIXES = {".h", ".hpp", ".cc", ".cpp", ".inc", ".cu", ".cuh"}

BOUNDARY = {"<": "<=", "<=": "<", ">": ">=", ">=": ">"}
NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


@dataclass(frozen=True)
class Mutant:
    file: str
    line: int       # 1-based
    col: int        # 0-based, in the line
    rule: str       # boundary / negate / nudge-up / nudge-down
    old: str        # the token replaced
    new: str
    text: str       # the whole original line

    @property
    def mutated_line(self) -> str:
        return self.text[:self.col] + self.new + self.text[self.col + len(self.old):]


# ------------------------------------------------------------------------------ numbers
_C_NUMBER = re.compile(r"(?<![\w.])(\d+\.\d*(?:[eE][-+]?\d+)?|\d*\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|0[xX][0-9a-fA-F]+|\d+)"
                       r"([fF]|[uU]?[lL]{0,2}|[lL]{1,2}[uU]?)?(?![\w.])")


def _nudged(literal: str, up: bool) -> str | None:
    """The literal with its last written digit moved one unit (None where that is not a
    number any more, e.g. 0 - 1 for an unsigned hex mask stays allowed: -1 is dropped)."""
    if literal.lower().startswith("0x"):
        value = int(literal, 16) + (1 if up else -1)
        return None if value < 0 else f"0x{value:0{len(literal) - 2}X}" if literal[2:].isupper() else hex(value)
    if re.fullmatch(r"\d+", literal):
        value = int(literal) + (1 if up else -1)
        return None if value < 0 else str(value)
    mantissa, e, exponent = literal.partition("e") if "e" in literal else literal.partition("E")
    digits = mantissa.replace(".", "")
    frac = len(mantissa) - mantissa.index(".") - 1 if "." in mantissa else 0
    number = int(digits or "0") + (1 if up else -1)
    if number < 0:
        return None
    text = str(number).rjust(frac + 1, "0")
    new_mantissa = f"{text[:len(text) - frac]}.{text[len(text) - frac:]}" if "." in mantissa else text
    return new_mantissa + e + exponent


def _same_value(old: str, new: str, float32: bool) -> bool:
    try:
        a, b = float(old), float(new)
    except ValueError:
        return False
    return (np.float32(a) == np.float32(b)) if float32 else a == b


# ------------------------------------------------------------------------------ C / C++
def _c_code_spans(line: str, in_block_comment: bool) -> tuple[list[tuple[int, int]], bool]:
    """(start, end) spans of code in the line (comments, strings and char literals left
    out), and whether a block comment continues past it."""
    spans, i, start, n = [], 0, 0, len(line)
    if in_block_comment:
        end = line.find("*/")
        if end < 0:
            return [], True
        i = start = end + 2
    while i < n:
        two = line[i:i + 2]
        if two == "//":
            break
        if two == "/*":
            spans.append((start, i))
            end = line.find("*/", i + 2)
            if end < 0:
                return spans, True
            i = start = end + 2
            continue
        if line[i] in "\"'":
            spans.append((start, i))
            quote, i = line[i], i + 1
            while i < n and line[i] != quote:
                i += 2 if line[i] == "\\" else 1
            i = start = i + 1
            continue
        i += 1
    spans.append((start, min(i, n)))
    return [(a, b) for a, b in spans if b > a], False


_C_COMPARE = re.compile(r"(?<= )(<=|>=|==|!=|<|>)(?= )")


def c_mutants(path: Path, rel: str) -> list[Mutant]:
    out, in_comment = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        spans, in_comment_next = _c_code_spans(line, in_comment)
        in_comment = in_comment_next
        stripped = line.lstrip()
        if stripped.startswith("#") or "static_assert" in line:
            continue
        for a, b in spans:
            code = line[a:b]
            for m in _C_COMPARE.finditer(code):
                op, col = m.group(1), a + m.start(1)
                if op in BOUNDARY:
                    out.append(Mutant(rel, number, col, "boundary", op, BOUNDARY[op], line))
                out.append(Mutant(rel, number, col, "negate", op, NEGATE[op], line))
            numbers = list(_C_NUMBER.finditer(code))
            if sum(len(list(_C_NUMBER.finditer(line[x:y]))) for x, y in spans) >= TABLE_NUMBERS:
                numbers = []
            for m in numbers:
                literal, suffix, col = m.group(1), m.group(2) or "", a + m.start(1)
                is_float = any(c in literal for c in ".eE") and not literal.lower().startswith("0x")
                for up in (True, False):
                    new = _nudged(literal, up)
                    if new is None or (is_float and _same_value(literal, new, float32=suffix.lower() == "f")):
                        continue
                    out.append(Mutant(rel, number, col, "nudge-up" if up else "nudge-down", literal, new, line))
    return out


# ------------------------------------------------------------------------------ Python
_PY_OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


def py_mutants(path: Path, rel: str) -> list[Mutant]:
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    # Compare operators sit between their operands: find the operator token after the end
    # of the left operand, on the token stream (so strings and comments never match)
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.OP]
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    per_line = Counter(n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and type(n.value) in (int, float))
    table = set()  # numbers of a dict/list/tuple/set display that holds TABLE_NUMBERS or more
    for n in ast.walk(tree):
        if isinstance(n, (ast.Dict, ast.List, ast.Tuple, ast.Set)):
            numbers = [c for c in ast.walk(n) if isinstance(c, ast.Constant) and type(c.value) in (int, float)]
            if len(numbers) >= TABLE_NUMBERS:
                table.update(id(c) for c in numbers)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                symbol = _PY_OPS.get(type(op))
                if symbol:
                    after = (left.end_lineno, left.end_col_offset)
                    tok = next((t for t in tokens if t.start >= after and t.string == symbol), None)
                    if tok and tok.start < (right.lineno, right.col_offset):
                        line = lines[tok.start[0] - 1]
                        if symbol in BOUNDARY:
                            out.append(Mutant(rel, tok.start[0], tok.start[1], "boundary", symbol, BOUNDARY[symbol], line))
                        out.append(Mutant(rel, tok.start[0], tok.start[1], "negate", symbol, NEGATE[symbol], line))
                left = right
        elif (isinstance(node, ast.Constant) and type(node.value) in (int, float) and id(node) not in docstrings
              and node.lineno == node.end_lineno and per_line[node.lineno] < TABLE_NUMBERS
              and id(node) not in table):
            line = lines[node.lineno - 1]
            literal = line[node.col_offset:node.end_col_offset]
            if not re.fullmatch(r"\d[\d_]*(\.\d*)?([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|0[xX][0-9a-fA-F_]+", literal):
                continue
            literal_clean = literal.replace("_", "")
            for up in (True, False):
                new = _nudged(literal_clean, up)
                if new is None or (isinstance(node.value, float) and _same_value(literal_clean, new, float32=False)):
                    continue
                out.append(Mutant(rel, node.lineno, node.col_offset, "nudge-up" if up else "nudge-down", literal, new,
                                  line))
    return sorted(out, key=lambda m: (m.line, m.col, m.rule))


# ------------------------------------------------------------------------------ listing
def files() -> list[tuple[str, list[str]]]:
    out = []
    chosen: dict[str, list[str]] = {}
    for pattern, tests in sorted(TARGETS.items(), key=lambda item: "*" not in item[0]):  # exact paths last: they win
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and (path.suffix in C_SUFFIXES or path.suffix == ".py"):
                chosen[path.relative_to(ROOT).as_posix()] = tests
    out.extend(sorted(chosen.items()))
    return out


def generate() -> list[tuple[Mutant, list[str]]]:
    out = []
    for rel, tests in files():
        path = ROOT / rel
        found = py_mutants(path, rel) if path.suffix == ".py" else c_mutants(path, rel)
        out.extend((m, tests) for m in found)
    return out


def sample(mutants, per_file: int | None, seed: int, fraction: float | None = None):
    """Per file: ``per_file`` mutants, or with ``fraction`` max(per_file, ceil(fraction * count));
    all of them when neither is given. Drawn with a seed of its own per file."""
    if per_file is None and fraction is None:
        return mutants
    by_file = defaultdict(list)
    for m, tests in mutants:
        by_file[m.file].append((m, tests))
    chosen = []
    for rel in sorted(by_file):
        group = by_file[rel]
        rng = random.Random(f"{seed}:{rel}")  # per file: adding a file does not reshuffle the others
        want = per_file or 0
        if fraction is not None:
            want = max(want, math.ceil(fraction * len(group)))
        chosen.extend(sorted(rng.sample(group, min(want, len(group))), key=lambda mt: (mt[0].line, mt[0].col)))
    return chosen


def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t") + '"'


def to_toml(mutants) -> str:
    lines = ["# Generated by tests/mutation/generate.py (rule-based mutants); do not edit by hand.", ""]
    texts = {}
    for m, tests in mutants:
        tests = [t for t in tests if (ROOT / t.split("::")[0]).exists()]  # the suite as it is now
        if m.file not in texts:
            texts[m.file] = (ROOT / m.file).read_text().splitlines()
        src = texts[m.file]
        # `original` is the whole line; `occurrence` picks it among identical lines
        occurrence = sum(1 for ln in src[:m.line - 1] if ln == m.text) + 1
        total = sum(1 for ln in src if ln == m.text)
        stem = Path(m.file).name.replace(".", "-")
        lines += ["[[mutation]]",
                  f"name = {_toml_string(f'gen-{stem}-L{m.line}c{m.col}-{m.rule}')}",
                  f"file = {_toml_string(m.file)}",
                  f"original = {_toml_string(m.text)}",
                  f"mutated = {_toml_string(m.mutated_line)}"]
        if total > 1:
            lines.append(f"occurrence = {occurrence}")
        lines += [f"tests = [{', '.join(_toml_string(t) for t in tests)}]",
                  f"description = {_toml_string(f'{m.rule}: {m.old} -> {m.new} at line {m.line}')}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", type=Path, help="write the mutants as a run.py list")
    ap.add_argument("--sample", type=int, help="at most this many per file (default: all)")
    ap.add_argument("--fraction", type=float, help="per file, at least this share of its mutants (with --sample a floor)")
    ap.add_argument("--seed", type=int, default=21)
    args = ap.parse_args(argv)
    mutants = generate()
    counts = Counter((m.file, m.rule.split("-")[0]) for m, _ in mutants)
    for rel, _ in files():
        row = {r: counts.get((rel, r), 0) for r in ("boundary", "negate", "nudge")}
        print(f"{rel:48} {sum(row.values()):5}  " + "  ".join(f"{k} {v}" for k, v in row.items()))
    print(f"{'total':48} {len(mutants):5}")
    if args.write:
        chosen = sample(mutants, args.sample, args.seed, args.fraction)
        args.write.write_text(to_toml(chosen))
        print(f"wrote {len(chosen)} mutants to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
