"""What a served model accepts, checked before anything sized by a request is allocated.

Pure functions over the model's signature and what a request *declares* (input names,
datatypes, shapes, how many values or bytes it carries). No sockets, no numpy arrays, no
server: the HTTP and gRPC front ends (`gate.py`) and the model callable (`server.py`) all
call `check_inputs`, and so can whatever replaces PyTriton's proxy later.

Why before: the bundled tritonserver (2.51) sizes a buffer by the declared shape of a
KServe v2 JSON input (`element count * dtype size`) and allocates it before it compares
the shape with the model config, so a 99-byte body declaring 8x3x100000x100000 FP32 asks
for 960 GB and the process aborts on `std::bad_alloc`. Nothing of ours runs before that
allocation unless a front end rejects the request first.

A failed check raises `RequestError(status, message)`: status 400 (malformed or not what
the model takes) or 413 (larger than the configured caps); the message is one line.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Iterable, Mapping, Sequence

# Triton datatype name -> bytes per element (BYTES: variable, 0 here).
TRITON_ITEMSIZE = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
    "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
    "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8, "BYTES": 0,
}
DEFAULT_DYNAMIC_EXTENT = 1024   # a dynamic dim without a stated maximum, for the default cap
MIN_DEFAULT_ELEMENTS = 1 << 24  # the default element cap is at least this (64 MiB of FP32)
JSON_BYTES_PER_ELEMENT = 32     # "-1.2345678901234567e-05, " and some slack
REQUEST_OVERHEAD_BYTES = 1 << 20
MAX_JSON_DEPTH = 64             # nesting anywhere in a request's JSON header
MAX_STRUCTURE_COMMAS = 1 << 16  # commas of a JSON header that are not between values


class RequestError(ValueError):
    """A request the model does not take; `status` is the HTTP code (400 or 413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = one_line(message)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class InputRule:
    """One model input: `dims` are the full dims (batch first when batching), -1 dynamic;
    `bounds[i]` is (min, max or None) for dynamic dim i, unused for static dims."""
    name: str
    datatype: str
    dims: tuple[int, ...]
    bounds: tuple[tuple[int, int | None], ...]

    @property
    def itemsize(self) -> int:
        return TRITON_ITEMSIZE[self.datatype]


@dataclasses.dataclass(frozen=True)
class Limits:
    inputs: tuple[InputRule, ...]
    max_batch_size: int  # 0: no batch dim, shapes are full dims
    max_elements: int    # sum over a request's inputs of prod(shape)
    max_bytes: int       # request body (HTTP, after decompression) / message (gRPC)

    def rule(self, name: str) -> InputRule | None:
        return next((r for r in self.inputs if r.name == name), None)


def parse_dim_bound(text: str) -> tuple[str, int, int | None]:
    """`--dim` value: 'NAME=MIN:MAX' (MIN or MAX may be left out, 'NAME=N' means N:N).
    NAME is a symbolic dim name of the model ('height') or INPUT:AXIS ('input:2')."""
    key, sep, rng = text.rpartition("=")
    if not sep or not key:
        raise ValueError(f"--dim {text!r}: expected NAME=MIN:MAX (e.g. height=32:1024)")
    lo_s, colon, hi_s = rng.partition(":")
    if not colon:
        hi_s = lo_s
    try:
        lo = int(lo_s) if lo_s.strip() else 1
        hi = int(hi_s) if hi_s.strip() else None
    except ValueError:
        raise ValueError(f"--dim {text!r}: MIN and MAX must be integers") from None
    if lo < 1 or (hi is not None and hi < lo):
        raise ValueError(f"--dim {text!r}: need 1 <= MIN <= MAX")
    return key, lo, hi


def build_limits(signature, max_batch_size: int, max_elements: int | None = None,
                 max_bytes: int | None = None, dim_bounds: Iterable[str] = ()) -> Limits:
    """Limits for `signature` (serve.signature.Signature) served with `max_batch_size`
    (0: no batching). `dim_bounds`: `--dim` strings (see parse_dim_bound). Defaults:
    `default_max_elements`, and `REQUEST_OVERHEAD_BYTES + 32 * max_elements` bytes."""
    if max_batch_size < 0:
        raise ValueError(f"max_batch_size must be >= 0, got {max_batch_size}")
    parsed = [parse_dim_bound(b) for b in dim_bounds]
    used = set()
    rules = []
    for t in signature.inputs:
        names = tuple(getattr(t, "dim_names", ()) or ())
        bounds = []
        for axis, d in enumerate(t.dims):
            lo, hi = 1, None
            for key, b_lo, b_hi in parsed:
                named = axis < len(names) and names[axis] and key == names[axis]
                if named or key == f"{t.name}:{axis}":
                    if d != -1:
                        raise ValueError(f"--dim {key}: dim {axis} of input {t.name!r} is static ({d})")
                    if axis == 0 and max_batch_size > 0:
                        raise ValueError(f"--dim {key}: dim 0 of input {t.name!r} is the batch "
                                         "dim; bound it with --max-batch-size")
                    lo, hi = b_lo, b_hi
                    used.add(key)
            bounds.append((lo, hi))
        rules.append(InputRule(t.name, t.triton_dtype, tuple(t.dims), tuple(bounds)))
    unknown = [k for k, _, _ in parsed if k not in used]
    if unknown:
        known = sorted({n for t in signature.inputs for n in (getattr(t, "dim_names", ()) or ()) if n})
        raise ValueError(f"--dim {unknown[0]}: no dynamic dim of that name (named dims: "
                         f"{', '.join(known) or 'none'}; or use INPUT:AXIS)")
    rules = tuple(rules)
    if max_elements is None:
        max_elements = default_max_elements(rules, max_batch_size)
    if max_elements < 1:
        raise ValueError(f"max_request_elements must be >= 1, got {max_elements}")
    if max_bytes is None:
        max_bytes = REQUEST_OVERHEAD_BYTES + JSON_BYTES_PER_ELEMENT * max_elements
    if max_bytes < 1:
        raise ValueError(f"max_request_bytes must be >= 1, got {max_bytes}")
    return Limits(rules, max_batch_size, max_elements, max_bytes)


def default_max_elements(rules: Sequence[InputRule], max_batch_size: int) -> int:
    """The largest request the model's dims allow at `max_batch_size` (every dim static or
    bounded: exactly that). A dynamic dim without a stated maximum counts as
    DEFAULT_DYNAMIC_EXTENT, and then the cap is at least MIN_DEFAULT_ELEMENTS."""
    total, guessed = 0, False
    for r in rules:
        n = 1
        for axis, d in enumerate(r.dims):
            if axis == 0 and max_batch_size > 0:
                n *= max_batch_size
            elif d >= 0:
                n *= d
            else:
                hi = r.bounds[axis][1]
                guessed |= hi is None
                n *= hi if hi is not None else DEFAULT_DYNAMIC_EXTENT
        total += n
    return max(total, MIN_DEFAULT_ELEMENTS) if guessed else max(total, 1)


# ------------------------------------------------------------------------- the request


@dataclasses.dataclass(frozen=True)
class DeclaredInput:
    """One input as a request declares it. `values`: how many values it carries inline
    (JSON `data`, gRPC typed contents); `byte_size`: how many bytes it carries in binary
    (HTTP binary extension, gRPC raw contents, shared memory). Exactly one is set."""
    name: str
    datatype: str
    shape: tuple
    values: int | None = None
    byte_size: int | None = None


def _shape_of(d: DeclaredInput) -> tuple[int, ...]:
    shape = d.shape
    if not isinstance(shape, (list, tuple)):
        raise RequestError(400, f"input {d.name!r}: 'shape' must be a list of integers")
    for i, v in enumerate(shape):
        if type(v) is not int:  # bool, float, str, None, list: all refused
            raise RequestError(400, f"input {d.name!r}: dim {i} of 'shape' is {v!r}, not an integer")
        if v < 0:
            raise RequestError(400, f"input {d.name!r}: dim {i} of 'shape' is negative ({v})")
    return tuple(shape)


def check_inputs(declared: Sequence[DeclaredInput], limits: Limits) -> None:
    """Raise RequestError unless `declared` is exactly what the model takes: every input
    once, nothing else, the model's datatypes, shapes that fit the model's dims (static dims
    equal, dynamic dims within their bounds, batch 1..max_batch_size and equal across
    inputs), at most `max_elements` elements in all, and as many values/bytes as the
    shapes say. Only integers are multiplied: nothing is allocated."""
    seen = set()
    for d in declared:
        if not isinstance(d.name, str):
            raise RequestError(400, "an input has no name")
        if d.name in seen:
            raise RequestError(400, f"input {d.name!r} is given twice")
        seen.add(d.name)
        if limits.rule(d.name) is None:
            raise RequestError(400, f"unexpected input {d.name!r}; the model's inputs are "
                                    f"{', '.join(repr(r.name) for r in limits.inputs)}")
    missing = [r.name for r in limits.inputs if r.name not in seen]
    if missing:
        raise RequestError(400, f"missing input {missing[0]!r}")

    batch = None
    shapes = []
    for d in declared:
        rule = limits.rule(d.name)
        if d.datatype != rule.datatype:
            raise RequestError(400, f"input {d.name!r}: datatype {d.datatype!r}, the model takes {rule.datatype}")
        shape = _shape_of(d)
        if len(shape) != len(rule.dims):
            raise RequestError(400, f"input {d.name!r}: shape {list(shape)} has {len(shape)} dims, "
                                    f"the model takes {len(rule.dims)} ({_dims_text(rule, limits)})")
        for axis, (got, want) in enumerate(zip(shape, rule.dims)):
            if axis == 0 and limits.max_batch_size > 0:
                if not 1 <= got <= limits.max_batch_size:
                    raise RequestError(400, f"input {d.name!r}: batch-size {got} is not within 1.."
                                            f"{limits.max_batch_size} (--max-batch-size)")
                if batch is not None and got != batch:
                    raise RequestError(400, f"input {d.name!r}: batch-size {got} differs from the "
                                            f"other inputs' ({batch})")
                batch = got
            elif want >= 0:
                if got != want:
                    raise RequestError(400, f"input {d.name!r}: dim {axis} is {got}, the model takes "
                                            f"{want} ({_dims_text(rule, limits)})")
            else:
                lo, hi = rule.bounds[axis]
                if got < lo or (hi is not None and got > hi):
                    raise RequestError(400, f"input {d.name!r}: dim {axis} is {got}, not within "
                                            f"{lo}..{'' if hi is None else hi} ({_dims_text(rule, limits)})")
        shapes.append(shape)

    total = sum(math.prod(s) for s in shapes)
    if total > limits.max_elements:
        raise RequestError(413, f"request declares {total} elements, more than the "
                                f"{limits.max_elements} allowed (--max-request-elements)")

    for d, shape in zip(declared, shapes):
        rule = limits.rule(d.name)
        n = math.prod(shape)
        if (d.values is None) == (d.byte_size is None):
            raise RequestError(400, f"input {d.name!r}: give its values either in 'data' or as binary data")
        if d.values is not None and d.values != n:
            raise RequestError(400, f"input {d.name!r}: shape {list(shape)} needs {n} values, "
                                    f"'data' has {d.values}")
        if d.byte_size is not None and rule.itemsize and d.byte_size != n * rule.itemsize:
            raise RequestError(400, f"input {d.name!r}: shape {list(shape)} {rule.datatype} needs "
                                    f"{n * rule.itemsize} bytes, the request carries {d.byte_size}")


def _dims_text(rule: InputRule, limits: Limits) -> str:
    parts = []
    for axis, d in enumerate(rule.dims):
        if axis == 0 and limits.max_batch_size > 0:
            parts.append(f"1..{limits.max_batch_size}")
        elif d >= 0:
            parts.append(str(d))
        else:
            lo, hi = rule.bounds[axis]
            parts.append(f"{lo}..{'' if hi is None else hi}")
    return "dims [" + ", ".join(parts) + "]"


# ------------------------------------------------------------- KServe v2 HTTP/JSON bodies

_NUMBER = 0.0
_SCALARS = {float, int, bool}


def _number(_text):  # every JSON float becomes this one object: no per-value allocation
    return _NUMBER


def _json_depth_ok(obj, limit: int) -> bool:
    """Iterative: no recursion on attacker-chosen nesting."""
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(o, dict):
            stack.extend((v, depth + 1) for v in o.values() if isinstance(v, (dict, list)))
        elif isinstance(o, list) and not _all_scalars(o):
            stack.extend((v, depth + 1) for v in o if isinstance(v, (dict, list)))
    return True


def _all_scalars(lst: list) -> bool:
    """True when every item is a number or a bool, at C speed (floats are all the one
    object _NUMBER, found by identity first)."""
    return lst.count(_NUMBER) == len(lst) or set(map(type, lst)) <= _SCALARS


def _count_values(data, rank: int, name: str, kinds: set | None = None) -> int:
    """Scalars in `data`, a flat or nested list at most `rank` deep (KServe v2 allows both);
    `kinds` (when given) collects the Python types of the scalars."""
    if not isinstance(data, list):
        raise RequestError(400, f"input {name!r}: 'data' must be a list")
    count = 0
    stack = [(data, 1)]
    while stack:
        lst, depth = stack.pop()
        if _all_scalars(lst):
            count += len(lst)
            if kinds is not None and lst:
                kinds.update(map(type, lst))
            continue
        nested = [v for v in lst if isinstance(v, list)]
        if nested:
            if depth >= max(rank, 1):
                raise RequestError(400, f"input {name!r}: 'data' is nested deeper than its shape")
            if len(nested) != len(lst):
                raise RequestError(400, f"input {name!r}: 'data' mixes lists and values at one level")
            stack.extend((v, depth + 1) for v in nested)
            continue
        for v in lst:
            if isinstance(v, (dict, type(None))):
                raise RequestError(400, f"input {name!r}: 'data' holds {type(v).__name__ if v is not None else 'null'}")
        count += len(lst)
        if kinds is not None:
            kinds.update(map(type, lst))
    return count


_JSON_KIND = {str: "string", bool: "boolean"}


def _check_value_kinds(name: str, datatype: str, kinds: set) -> None:
    """A numeric input's JSON values must be numbers: tritonserver answers a string or a
    boolean there with a 500 ("attempt to access JSON non-number as double")."""
    if datatype in ("BYTES", "BOOL"):
        return
    bad = sorted(_JSON_KIND[k] for k in kinds if k in _JSON_KIND)
    if bad:
        raise RequestError(400, f"input {name!r}: 'data' holds {' and '.join(bad)} values; {datatype} takes numbers")


def parse_http_infer(body: bytes, header_length: int | None = None,
                     max_values: int | None = None) -> list[DeclaredInput]:
    """The inputs a KServe v2 HTTP infer body declares. `header_length`: the value of the
    Inference-Header-Content-Length header (binary tensor extension), None without it.
    `max_values`: refuse (413) before parsing a JSON header that can hold more values than
    this (counted by its commas), so parsing stays proportional to what is allowed.
    Floats are not materialized (one shared object); integers are (shapes need them)."""
    if header_length is None:
        header_length = len(body)
    if type(header_length) is not int or not 0 <= header_length <= len(body):
        raise RequestError(400, f"Inference-Header-Content-Length {header_length!r} does not fit "
                                f"the {len(body)}-byte body")
    head = body if header_length == len(body) else body[:header_length]
    if max_values is not None and head.count(b",") > max_values + MAX_STRUCTURE_COMMAS:
        raise RequestError(413, f"request carries more than the {max_values} values allowed "
                                "(--max-request-elements)")
    try:
        req = json.loads(bytes(head), parse_float=_number, parse_constant=_number)
    except RecursionError:
        raise RequestError(400, "malformed request: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise RequestError(400, f"malformed request: not JSON ({_json_error(e)})") from None
    if not _json_depth_ok(req, MAX_JSON_DEPTH):
        raise RequestError(400, f"malformed request: JSON nested deeper than {MAX_JSON_DEPTH}")
    if not isinstance(req, dict):
        raise RequestError(400, "malformed request: the body must be a JSON object")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "malformed request: 'inputs' must be a non-empty list")
    out = []
    binary_total = 0
    for i, inp in enumerate(inputs):
        if not isinstance(inp, dict):
            raise RequestError(400, f"malformed request: inputs[{i}] is not an object")
        name, datatype, shape = inp.get("name"), inp.get("datatype"), inp.get("shape")
        if not isinstance(name, str):
            raise RequestError(400, f"malformed request: inputs[{i}] has no 'name'")
        if not isinstance(datatype, str):
            raise RequestError(400, f"input {name!r}: no 'datatype'")
        if not isinstance(shape, list):
            raise RequestError(400, f"input {name!r}: 'shape' must be a list of integers")
        params = inp.get("parameters", {})
        if not isinstance(params, Mapping):
            raise RequestError(400, f"input {name!r}: 'parameters' must be an object")
        binary = params.get("binary_data_size")
        shm = params.get("shared_memory_region")
        has_data = "data" in inp
        if sum(x is not None for x in (binary, shm)) + has_data != 1:
            raise RequestError(400, f"input {name!r}: give exactly one of 'data', "
                                    "'binary_data_size' or 'shared_memory_region'")
        if binary is not None:
            if type(binary) is not int or binary < 0:
                raise RequestError(400, f"input {name!r}: 'binary_data_size' must be a non-negative integer")
            binary_total += binary
            out.append(DeclaredInput(name, datatype, tuple(shape), byte_size=binary))
        elif shm is not None:
            size = params.get("shared_memory_byte_size")
            if not isinstance(shm, str) or type(size) is not int or size < 0:
                raise RequestError(400, f"input {name!r}: shared memory needs a region name and "
                                        "'shared_memory_byte_size'")
            out.append(DeclaredInput(name, datatype, tuple(shape), byte_size=size))
        else:
            rank = len(shape)
            kinds: set = set()
            values = _count_values(inp["data"], rank, name, kinds)
            _check_value_kinds(name, datatype, kinds)
            out.append(DeclaredInput(name, datatype, tuple(shape), values=values))
    tail = len(body) - header_length
    if binary_total != tail:
        raise RequestError(400, f"binary data is {tail} bytes, the inputs declare {binary_total}")
    return out


def _json_error(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at byte {e.pos}"
    return type(e).__name__


# ---------------------------------------------------------------- gRPC ModelInferRequest

_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_ALL_CONTENTS = sorted(set(_CONTENTS_FIELD.values()))


def grpc_infer_inputs(request) -> list[DeclaredInput]:
    """The inputs a KServe v2 gRPC ModelInferRequest (a parsed protobuf message) declares."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(400, f"raw_input_contents has {len(raw)} entries for "
                                f"{len(request.inputs)} inputs")
    out = []
    for i, inp in enumerate(request.inputs):
        params = inp.parameters
        shape = tuple(int(v) for v in inp.shape)
        filled = [f for f in _ALL_CONTENTS if len(getattr(inp.contents, f))]
        if "shared_memory_region" in params:
            if raw or filled:
                raise RequestError(400, f"input {inp.name!r}: data given both inline and in shared memory")
            size = params["shared_memory_byte_size"].int64_param if "shared_memory_byte_size" in params else -1
            if size < 0:
                raise RequestError(400, f"input {inp.name!r}: shared memory needs 'shared_memory_byte_size'")
            out.append(DeclaredInput(inp.name, inp.datatype, shape, byte_size=size))
        elif raw:
            if filled:
                raise RequestError(400, f"input {inp.name!r}: data given both in contents and raw")
            out.append(DeclaredInput(inp.name, inp.datatype, shape, byte_size=len(raw[i])))
        else:
            want = _CONTENTS_FIELD.get(inp.datatype)
            if any(f != want for f in filled):
                raise RequestError(400, f"input {inp.name!r}: contents of another datatype than {inp.datatype}")
            n = len(getattr(inp.contents, want)) if want else 0
            out.append(DeclaredInput(inp.name, inp.datatype, shape, values=n))
    return out


# ------------------------------------------------------------- errors from the model run

_PATHISH = re.compile(r"\S*[/\\]\S*|\S*::\S*")


def client_fault(e: Exception) -> bool:
    """An ONNX Runtime failure caused by the input (too small for a kernel, a shape the
    graph cannot take), not by the server. Allocation failures are the server's."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as C
    except ImportError:
        return False
    return isinstance(e, (C.InvalidArgument, C.Fail)) and "alloc" not in str(e).lower()


def model_error_reason(text: str) -> str:
    """A model run's error text made safe to show a client: one line, no file paths or
    C++ symbols (ONNX Runtime puts both in its messages)."""
    text = str(text)
    if "Status Message:" in text:
        text = text.split("Status Message:", 1)[1]
    text = _PATHISH.sub("", text)
    return one_line(text, 200) or "the model rejected the input"
