"""The Triton Python-backend model behind `poolexport serve`, also written as `model.py` by
`poolexport triton-repo --variant python`.

The ONNX Runtime session (with poolexport's custom-op library registered) lives in the
Python backend's own stub process: a request goes tritonserver -> stub -> session and
back, with no further process in between.

Self-contained on purpose: numpy and onnxruntime are all it needs, so the same file runs
in a stock Triton container. poolexport itself is imported only when the config asks for
a TensorRT engine or for the request re-check (`limits`, set by `poolexport serve`).

Parameters (config.pbtxt `parameters`, all strings):
  model_file        the ONNX file or engine; relative paths are relative to the model folder
  op_library        the custom-op library, same rule; empty for none
  backend           "onnxruntime" (default) or "tensorrt"
  intra_op_threads  ONNX Runtime threads per run; "0" leaves ONNX Runtime's default
  allow_spinning    "0" keeps idle ONNX Runtime threads from spinning (default "1")
  limits            JSON of poolexport.serve.validation.build_limits' arguments
  reject_marker     prefix for errors the client caused, so the front end can answer 4xx

`poolexport serve` puts the parameters that name its files and its marker in
serve_parameters.json beside config.pbtxt instead: the config is readable by any client
(GET /v2/models/<name>/config), that file is not.
"""
from __future__ import annotations

import json
import os
import re
import sys
import traceback

import numpy as np

PRIVATE_PARAMETERS = "serve_parameters.json"


def group_by_shape(feeds_list):
    """Indices of requests that can run as one batch: same input shapes past the batch
    dim (Triton's dynamic batcher may hand over requests of different spatial sizes)."""
    groups: dict[tuple, list[int]] = {}
    for i, feeds in enumerate(feeds_list):
        key = tuple((n, a.shape[1:]) for n, a in feeds.items())
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def run_batched(run, feeds_list, names):
    """Run the requests of one group as one batch: concatenate along dim 0, run once,
    split the outputs back. Returns one output dict per request."""
    if len(feeds_list) == 1:
        return [run(feeds_list[0])]
    merged = {n: np.concatenate([f[n] for f in feeds_list]) for n in names}
    outs = run(merged)
    sizes = np.cumsum([f[names[0]].shape[0] for f in feeds_list])[:-1]
    split = {n: np.split(a, sizes) for n, a in outs.items()}
    return [{n: split[n][i] for n in outs} for i in range(len(feeds_list))]


_PATHISH = re.compile(r"\S*[/\\]\S*|\S*::\S*")


def error_reason(e: Exception) -> str:
    """A run failure's text safe to show a client: one line, no paths or C++ symbols."""
    text = str(e)
    if "Status Message:" in text:
        text = text.split("Status Message:", 1)[1]
    text = " ".join(_PATHISH.sub("", text).split())[:200]
    return text or "the model rejected the input"


class _Session:
    """ONNX Runtime session with the custom-op library; `run(feeds) -> {name: array}`."""

    def __init__(self, path, library, intra_op_threads, allow_spinning):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if intra_op_threads > 0:
            so.intra_op_num_threads = intra_op_threads
        if not allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if library:
            so.register_custom_ops_library(library)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(path, so, providers=providers)
        self.out_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds):
        return dict(zip(self.out_names, self.session.run(self.out_names, feeds)))


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb

        self.pb = pb
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        model_dir = args["model_repository"]
        private = os.path.join(model_dir, PRIVATE_PARAMETERS)
        if os.path.isfile(private):
            with open(private) as f:
                params.update(json.load(f))

        def path(p):
            return p if not p or os.path.isabs(p) else os.path.join(model_dir, p)

        backend = params.get("backend", "onnxruntime")
        model_file = path(params.get("model_file", "model.onnx"))
        if backend == "tensorrt":
            from poolexport.serve.runtime import TensorRTBackend
            self.runner = TensorRTBackend(model_file)
        else:
            self.runner = _Session(model_file, path(params.get("op_library", "")),
                                   int(params.get("intra_op_threads", "0") or 0),
                                   params.get("allow_spinning", "1") != "0")
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [(i["name"], pb.triton_string_to_numpy(i["data_type"]))
                       for i in config["input"]]
        self.names = [n for n, _ in self.inputs]
        self.marker = params.get("reject_marker", "")
        self.limits = None
        if params.get("limits"):
            from poolexport.serve.signature import Signature, TensorSpec
            from poolexport.serve.validation import build_limits

            lim = json.loads(params["limits"])
            sig = Signature(tuple(TensorSpec(t["name"], np.dtype(t["dtype"]), tuple(t["dims"]),
                                             tuple(t["dim_names"])) for t in lim["inputs"]), ())
            self.limits = build_limits(sig, lim["max_batch_size"], lim["max_elements"],
                                       lim["max_bytes"], lim["dim_bounds"])

    def _error(self, status, message):
        pb = self.pb
        text = f"{self.marker}:{status}:{message}" if self.marker else message
        try:
            code = pb.TritonError.INVALID_ARG if status < 500 else pb.TritonError.INTERNAL
            return pb.TritonError(text, code)
        except (AttributeError, TypeError):  # python backends before error codes
            return pb.TritonError(text)

    def _check(self, feeds):
        """The front end checked this request already; this covers whatever reaches
        tritonserver's own loopback ports. Returns an error message or None."""
        from poolexport.serve.validation import DeclaredInput, RequestError, check_inputs

        rules = {r.name: r for r in self.limits.inputs}
        declared = [DeclaredInput(n, rules[n].datatype, tuple(a.shape),
                                  byte_size=int(np.prod(a.shape, dtype=np.int64)) * rules[n].itemsize)
                    for n, a in feeds.items()]
        try:
            check_inputs(declared, self.limits)
        except RequestError as e:
            return self._error(e.status, e.message)
        return None

    def execute(self, requests):
        pb = self.pb
        responses = [None] * len(requests)
        feeds_list, index = [], []
        for i, request in enumerate(requests):
            feeds = {}
            for name, dtype in self.inputs:
                t = pb.get_input_tensor_by_name(request, name)
                if t is not None:
                    a = t.as_numpy()
                    feeds[name] = a if a.dtype == dtype else a.astype(dtype)
            error = self._check(feeds) if self.limits is not None else None
            if error is None and len(feeds) != len(self.inputs):
                error = self._error(400, "missing input")
            if error is not None:
                responses[i] = pb.InferenceResponse(output_tensors=[], error=error)
                continue
            feeds_list.append(feeds)
            index.append(i)
        groups = group_by_shape(feeds_list) if self.batching else [[k] for k in range(len(feeds_list))]
        for group in groups:
            batch = [feeds_list[k] for k in group]
            try:
                outs = run_batched(self.runner.run, batch, self.names)
            except Exception as e:
                from poolexport.serve.validation import client_fault

                if client_fault(e):
                    shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in batch[0].items())
                    error = self._error(400, f"the model cannot run on this input ({shapes}): "
                                             f"{error_reason(e)}")
                else:  # the server's fault: details to tritonserver's log, not to the client
                    traceback.print_exc(file=sys.stderr)
                    error = self._error(500, "inference failed on the server (details are in "
                                             f"the server's log): {type(e).__name__}")
                for k in group:
                    responses[index[k]] = pb.InferenceResponse(output_tensors=[], error=error)
                continue
            for k, out in zip(group, outs):
                responses[index[k]] = pb.InferenceResponse(output_tensors=[
                    pb.Tensor(n, np.ascontiguousarray(a)) for n, a in out.items()])
        return responses

    def finalize(self):
        self.runner = None
