"""`poolexport serve` and `poolexport triton-repo`: argument definitions and run functions.

Registered with the main CLI through `register_command(name, add_arguments, run)`; also
runnable alone as `python -m poolexport.serve {serve,triton-repo} ...`.
"""
from __future__ import annotations

import argparse
import sys


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX file (onnxruntime) or serialized engine (tensorrt)")
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime")
    p.add_argument("--server", choices=("poolexport", "tritonserver"), default="poolexport",
                   help="poolexport: the session runs in this process, behind its own KServe v2 "
                        "HTTP/gRPC endpoints and dynamic batcher (one hop per request); "
                        "tritonserver: the bundled tritonserver with a Python-backend model, "
                        "behind the same request checks (two more process hops)")
    p.add_argument("--model-name", default=None, help="name served under (default: file stem)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind HTTP, gRPC and metrics (0.0.0.0 for all interfaces)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--max-batch-size", type=int, default=8,
                   help="dynamic batching up to this size; 0 disables batching")
    p.add_argument("--max-queue-delay-us", type=int, default=100,
                   help="how long the dynamic batcher waits to fill a batch")
    p.add_argument("--instances", type=int, default=1, help="model instances (parallel batches)")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="ONNX Runtime threads per run, per instance (0: one per core; with the "
                        "default server, 0 runs a lone request on one thread per core and runs "
                        "made while other requests wait on one thread, a second session of the "
                        "model)")
    p.add_argument("--allow-spinning", action="store_true",
                   help="let idle ONNX Runtime threads spin (lower latency on an otherwise idle "
                        "machine; off by default: spinning takes the cores tritonserver and "
                        "the request gate need)")
    p.add_argument("--log-verbose", type=int, default=0, help="Triton verbose log level")
    p.add_argument("--max-request-elements", type=int, default=None, metavar="N",
                   help="refuse (413) a request whose inputs declare more than N elements in all, "
                        "before anything is allocated for it. Default: the largest request the "
                        "model's dims allow at --max-batch-size; where a dynamic dim has no --dim "
                        "maximum it counts as 1024 and the default is at least 2^24")
    p.add_argument("--max-request-bytes", type=int, default=None, metavar="N",
                   help="refuse (413) a request body (HTTP, after gzip/deflate) or gRPC message "
                        "over N bytes. Default: 1 MiB + 32 bytes per allowed element")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=MIN:MAX", dest="dims",
                   help="bounds of a dynamic dim, by its name in the model (height=32:1024) or "
                        "as INPUT:AXIS (input:2=32:); MIN or MAX may be left out; repeatable. "
                        "Requests outside get 400. Unbounded dynamic dims take 1 and up")


def run_serve(args: argparse.Namespace) -> int:
    from .runtime import BackendUnavailable
    from .server import Server, serve_forever

    try:
        server = Server(args.model, backend=args.backend, server=args.server, model_name=args.model_name,
                        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                        metrics_port=args.metrics_port, max_batch_size=args.max_batch_size,
                        max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                        log_verbose=args.log_verbose, intra_op_threads=args.intra_op_threads,
                        allow_spinning=args.allow_spinning,
                        max_request_elements=args.max_request_elements,
                        max_request_bytes=args.max_request_bytes, dim_bounds=args.dims)
    except (BackendUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # missing file, invalid graph, op without kernel: one line
        msg = " ".join(str(e).split())[:500]
        print(f"error: serve: cannot load {args.model!r}: {type(e).__name__}: {msg}", file=sys.stderr)
        return 2
    return serve_forever(server)


def add_triton_repo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX file, or a TensorRT plan (.plan/.engine)")
    p.add_argument("-o", "--output", required=True, help="model repository directory")
    p.add_argument("--model-name", default=None, help="model folder name (default: file stem)")
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default=None,
                   help="default: tensorrt for .plan/.engine files, else onnxruntime")
    p.add_argument("--variant", choices=("onnxruntime", "python", "both"), default="onnxruntime",
                   help="onnxruntime: Triton's C++ ONNX Runtime backend (tensorrt_plan for a "
                        "plan) with the custom-op library in model_operations; python: the "
                        "Python backend running the session in its stub, as `poolexport serve` "
                        "does (needs numpy and onnxruntime in Triton's Python); both: the two, "
                        "the python one as <name>_python")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-queue-delay-us", type=int, default=100)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--kind", choices=("KIND_CPU", "KIND_GPU", "KIND_AUTO"), default="KIND_AUTO",
                   help="instance group kind")
    p.add_argument("--signature-from", default=None,
                   help="for a TensorRT plan: the ONNX file it was built from (names, dtypes, dims)")
    p.add_argument("--plugin-library", default=None,
                   help="for a TensorRT plan: plugin library to copy beside the plan")
    p.add_argument("--mount-path", default=None,
                   help="where the repository is mounted on the server (e.g. /models, "
                        "/mnt/models for KServe); the custom-op library path is written for it")


def run_triton_repo(args: argparse.Namespace) -> int:
    from .repository import write_repository

    try:
        path = write_repository(
            args.model, args.output, model_name=args.model_name, backend=args.backend,
            max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
            instances=args.instances, kind=args.kind, signature_from=args.signature_from,
            plugin_library=args.plugin_library, mount_path=args.mount_path, variant=args.variant)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"poolexport triton-repo: wrote {path}")
    if args.variant == "both":
        print(f"poolexport triton-repo: wrote {path}_python")
    return 0


COMMANDS = {
    "serve": (add_serve_arguments, run_serve,
              "serve an ONNX file (or TensorRT engine) over KServe v2 HTTP/gRPC (bundled tritonserver)"),
    "triton-repo": (add_triton_repo_arguments, run_triton_repo,
                    "write a Triton model repository (onnxruntime/tensorrt backend, or python backend)"),
}


def register(register_command) -> None:
    """Hook for poolexport.cli: `serve.cli.register(register_command)`."""
    for name, (add, run, help_) in COMMANDS.items():
        register_command(name, add, run, help=help_)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poolexport.serve")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, run, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        add(sp)
        sp.set_defaults(_run=run)
    args = parser.parse_args(argv)
    return args._run(args)
