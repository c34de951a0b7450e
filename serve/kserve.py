"""KServe v2 for the model `poolexport serve` runs in its own process: request bodies to
numpy feeds, outputs to response bodies (HTTP JSON with the binary tensor extension,
gRPC ModelInferResponse), and the metadata, config, statistics and Prometheus metrics
a Triton server would answer, in Triton's field names, so tritonclient and curl see the
same server.

Every function here runs after serve/validation.py has accepted the request: shapes,
datatypes, value counts and byte sizes are already known to agree, so decoding sizes
nothing from unchecked numbers.
"""
from __future__ import annotations

import json

import numpy as np

from .validation import RequestError

TRITON_TO_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
# little-endian on the wire, as Triton sends and takes raw tensors
_WIRE = {k: np.dtype(v).newbyteorder("<") for k, v in TRITON_TO_NUMPY.items()}
_GRPC_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}
MODEL_VERSION = "1"
_INT64_FIELDS = {"dims", "max_queue_delay_microseconds"}


class ServedModel:
    """What the front ends need to answer for one model: its name, signature, limits,
    the batcher that runs it, and its Triton-style config."""

    def __init__(self, name, signature, limits, batcher, config, platform: str = "onnxruntime_onnx"):
        self.name, self.signature, self.limits, self.batcher = name, signature, limits, batcher
        self.config = config  # tritonclient.grpc.model_config_pb2.ModelConfig
        self.platform = platform
        self.output_names = [o.name for o in signature.outputs]
        self.output_dtypes = {o.name: o.triton_dtype for o in signature.outputs}
        self.ready = True

    # -- metadata ------------------------------------------------------------------------
    def metadata(self) -> dict:
        def tensors(specs):
            return [{"name": t.name, "datatype": t.triton_dtype,
                     "shape": [int(d) for d in t.dims]} for t in specs]
        return {"name": self.name, "versions": [MODEL_VERSION], "platform": self.platform,
                "inputs": tensors(self.signature.inputs), "outputs": tensors(self.signature.outputs)}

    def config_json(self) -> dict:
        from google.protobuf.json_format import MessageToDict

        def numbers(o):  # protobuf's JSON writes int64 as strings; Triton writes numbers
            if isinstance(o, dict):
                return {k: (int(v) if k in _INT64_FIELDS and isinstance(v, str) else
                            [int(x) for x in v] if k in _INT64_FIELDS and isinstance(v, list) else numbers(v))
                        for k, v in o.items()}
            if isinstance(o, list):
                return [numbers(v) for v in o]
            return o
        return numbers(MessageToDict(self.config, preserving_proto_field_name=True))

    def statistics(self) -> dict:
        s = self.batcher.stats
        ok = {"count": s.success, "ns": s.request_ns}
        return {"name": self.name, "version": MODEL_VERSION, "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count, "execution_count": s.execution_count,
                "inference_stats": {"success": ok, "fail": {"count": s.failure, "ns": s.failure_ns},
                                    "queue": {"count": s.success, "ns": s.queue_ns},
                                    "compute_infer": {"count": s.success, "ns": s.compute_ns}}}

    def metrics_text(self) -> str:
        """Prometheus text (Triton's metric names, microseconds)."""
        s = self.batcher.stats
        label = f'{{model="{self.name}",version="{MODEL_VERSION}"}}'
        rows = [("nv_inference_request_success", "counter", "Number of successful inference requests", s.success),
                ("nv_inference_request_failure", "counter", "Number of failed inference requests", s.failure),
                ("nv_inference_count", "counter", "Number of inferences performed (batch rows)", s.inference_count),
                ("nv_inference_exec_count", "counter", "Number of model executions (batches)", s.execution_count),
                ("nv_inference_request_duration_us", "counter", "Cumulative request duration", s.request_ns // 1000),
                ("nv_inference_queue_duration_us", "counter", "Cumulative time requests spent queued", s.queue_ns // 1000),
                ("nv_inference_compute_infer_duration_us", "counter", "Cumulative model run time", s.compute_ns // 1000)]
        out = []
        for name, kind, text, value in rows:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{label} {value}"]
        return "\n".join(out) + "\n"

    # -- HTTP ----------------------------------------------------------------------------
    def http_infer(self, body: bytes, header_length: int | None, timeout: float,
                   ticket=None) -> tuple[bytes, int | None]:
        """Run a checked HTTP infer body; returns (response body, Inference-Header-Content-Length
        or None when the response is all JSON). Raises RequestError or batcher.RunError."""
        head_len = len(body) if header_length is None else header_length
        req = json.loads(body[:head_len])
        feeds, offset = {}, head_len
        for inp in req["inputs"]:
            name, dtype, shape = inp["name"], inp["datatype"], tuple(inp["shape"])
            params = inp.get("parameters") or {}
            if "shared_memory_region" in params:
                raise RequestError(400, f"input {name!r}: shared memory is not served")
            if "binary_data_size" in params:
                n = params["binary_data_size"]
                a = np.frombuffer(body, _WIRE[dtype], count=n // _WIRE[dtype].itemsize, offset=offset)
                offset += n
            else:
                try:
                    a = np.asarray(inp["data"], dtype=TRITON_TO_NUMPY[dtype])
                except (ValueError, TypeError, OverflowError):
                    raise RequestError(400, f"input {name!r}: 'data' does not fit shape {list(shape)} "
                                            f"{dtype}") from None
            try:
                feeds[name] = a.reshape(shape)
            except ValueError:  # nested lists of other lengths than the shape's
                raise RequestError(400, f"input {name!r}: 'data' does not fit shape {list(shape)}") from None
        wanted = self._http_outputs(req)
        outs = self.batcher.infer(feeds, timeout, ticket)
        header = {"model_name": self.name, "model_version": MODEL_VERSION}
        if isinstance(req.get("id"), str):
            header["id"] = req["id"]
        header["outputs"], blobs = [], []
        for name, binary in wanted:
            a = outs[name]
            entry = {"name": name, "datatype": self.output_dtypes[name], "shape": list(a.shape)}
            if binary:
                raw = np.ascontiguousarray(a, dtype=_WIRE[self.output_dtypes[name]]).tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = a.ravel().tolist()
            header["outputs"].append(entry)
        head = json.dumps(header, separators=(",", ":")).encode()
        if not blobs:
            return head, None
        return b"".join([head, *blobs]), len(head)

    def _http_outputs(self, req) -> list[tuple[str, bool]]:
        params = req.get("parameters") or {}
        default_binary = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
        asked = req.get("outputs")
        if asked is None:
            return [(n, default_binary) for n in self.output_names]
        if not isinstance(asked, list):
            raise RequestError(400, "malformed request: 'outputs' must be a list")
        wanted = []
        for o in asked:
            name = o.get("name") if isinstance(o, dict) else None
            if name not in self.output_dtypes:
                raise RequestError(400, f"unknown output {str(name)[:100]!r}; the model's outputs are "
                                        f"{', '.join(repr(n) for n in self.output_names)}")
            p = o.get("parameters") or {}
            if not isinstance(p, dict):
                raise RequestError(400, f"output {name!r}: 'parameters' must be an object")
            if "classification" in p or "shared_memory_region" in p:
                raise RequestError(400, f"output {name!r}: classification and shared memory are not served")
            wanted.append((name, bool(p.get("binary_data", default_binary))))
        return wanted

    # -- gRPC ----------------------------------------------------------------------------
    def grpc_feeds(self, req) -> tuple[dict, list[str]]:
        """Feeds of a checked ModelInferRequest and the outputs it asks for."""
        raw = req.raw_input_contents
        feeds = {}
        for i, inp in enumerate(req.inputs):
            shape = tuple(int(d) for d in inp.shape)
            if raw:
                a = np.frombuffer(raw[i], _WIRE[inp.datatype])
            else:
                a = np.asarray(getattr(inp.contents, _GRPC_CONTENTS[inp.datatype]),
                               dtype=TRITON_TO_NUMPY[inp.datatype])
            feeds[inp.name] = a.reshape(shape)
        names = [o.name for o in req.outputs] or self.output_names
        for n in names:
            if n not in self.output_dtypes:
                raise RequestError(400, f"unknown output {n[:100]!r}; the model's outputs are "
                                        f"{', '.join(repr(o) for o in self.output_names)}")
        return feeds, names

    def grpc_response(self, pb, req, names, outs):
        resp = pb.ModelInferResponse(model_name=self.name, model_version=MODEL_VERSION, id=req.id)
        for n in names:
            a = outs[n]
            dtype = self.output_dtypes[n]
            resp.outputs.add(name=n, datatype=dtype, shape=list(a.shape))
            resp.raw_output_contents.append(np.ascontiguousarray(a, dtype=_WIRE[dtype]).tobytes())
        return resp


def server_metadata() -> dict:
    return {"name": "poolexport", "version": _version(),
            "extensions": ["model_configuration", "statistics", "binary_tensor_data"]}


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("poolexport")
    except Exception:  # noqa: BLE001 - a source checkout
        return "0"
