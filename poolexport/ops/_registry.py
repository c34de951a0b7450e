"""The one place the ``poolexport`` torch ops are registered.

Each op file (``soft_pool.py``, ``stochastic_pool.py``, ``ada_pool.py``) states its ops' arguments and
its Python functions, and calls :func:`define_pair`, which for a forward op and its
backward op:

* defines both schemas, with the ONNX attribute names of the ``poolexport`` domain;
* registers the CPU kernels compiled in the custom-op library
  (``custom_ops/torch/stable_ops.cc``, through torch's stable C ABI): a call costs what
  a torch-native op costs and runs on torch's own intra-op threads. Where that is
  unavailable (a torch older than 2.10, a library built without it, or
  ``POOLEXPORT_TORCH_REGISTRATION=python``), the Python kernel takes CPU instead: the same
  native kernels through ctypes (``_native.py``) or the reference;
* registers the Python kernel for CUDA (the library's CUDA launchers through ctypes);
* defines ``_reference_<name>``, the pure-torch twin with the same schema, which the
  compiled kernels hand float64/bfloat16 inputs and the ``reference_kernels()`` case to;
* registers the fake (meta) kernels for torch.compile / torch.export, and the autograd
  formula (backward = the backward op, on the saved input; an op with a second
  differentiable tensor, AdaPool's Beta, has a backward op returning both gradients).

An op may have further overloads (``define_pair(..., overload="tensor_seed")``): the same
registration under ``name.overload``, with the overload's own schema and kernels.

:func:`direct` wraps a forward op for the layers (``poolexport.functional``,
``poolexport.nn``): it skips the (Python) autograd layer when no graph can be recorded, so
eval and inference calls cost the dispatcher and the compiled kernel only.
"""
from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from typing import Callable

import torch

from . import _native

LIB = torch.library.Library("poolexport", "FRAGMENT")
REGISTRATION_ENV = "POOLEXPORT_TORCH_REGISTRATION"  # "python": skip the compiled kernels (debugging)

# the schemas' shared argument lists (ONNX attribute names)
WINDOW_ARGS = "int[] kernel_shape, int[] strides, int[] pads, int[] dilations, bool ceil_mode, str auto_pad"
REDUCE_ARGS = "int[]? axes, bool keepdims"


@lru_cache(maxsize=1)
def compiled_cpu_kernels() -> tuple[bool, str]:
    """(registered, why not): registers the library's compiled CPU kernels of every op
    with torch's dispatcher, once."""
    if os.environ.get(REGISTRATION_ENV, "").lower() == "python":
        return False, f"{REGISTRATION_ENV}=python"
    lib = _native._library()
    if lib is None or not hasattr(lib, "poolexport_torch_register_cpu"):
        return False, "the custom-op library is not built, or was built without the compiled registration"
    libtorch_cpu = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    register = lib.poolexport_torch_register_cpu
    register.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    register.restype = ctypes.c_int
    err = ctypes.create_string_buffer(512)
    if register(libtorch_cpu.encode(), err, len(err)) != 0:
        return False, err.value.decode(errors="replace")
    lib.poolexport_torch_select_reference.argtypes = [ctypes.c_int]
    lib.poolexport_torch_select_reference.restype = ctypes.c_int
    return True, ""


_BELOW_AUTOGRAD = torch._C._AutoDispatchBelowAutograd


def direct(op):
    """``op`` as a function that, for a plain tensor that autograd will not track (no
    requires_grad, or grad mode off) and outside tracing (torch.compile, torch.export,
    torch.jit.trace record the op itself), dispatches below the autograd layer: the
    Python autograd kernel that register_autograd installs costs more than the op."""

    def call(X, *args):
        if (type(X) is torch.Tensor and not (X.requires_grad and torch.is_grad_enabled())
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing()):
            with _BELOW_AUTOGRAD():
                return op(X, *args)
        return op(X, *args)

    call.__name__ = call.__qualname__ = op._schema.name.split("::")[-1]
    call.__doc__ = f"torch.ops.{op._schema.name.replace('::', '.')}.default, without the autograd layer when unused"
    call.op = op
    return call


def _define(name: str, schema_args: str, reference: Callable, python_kernel: Callable, fake: Callable,
            returns: str = "Tensor") -> None:
    """``name`` may be ``op.overload``."""
    LIB.define(f"{name}({schema_args}) -> {returns}")
    LIB.define(f"_reference_{name}({schema_args}) -> {returns}")
    LIB.impl(f"_reference_{name}", reference, "CompositeExplicitAutograd")
    LIB.impl(name, python_kernel, "CUDA")
    # the Python kernel takes CPU where the compiled library registered none for this op
    # (no compiled registration, or a library older than the op's overload)
    if not (compiled_cpu_kernels()[0] and torch._C._dispatch_has_kernel_for_dispatch_key(f"poolexport::{name}", "CPU")):
        LIB.impl(name, python_kernel, "CPU")
    torch.library.register_fake(f"poolexport::{name}", fake, lib=LIB)


def define_pair(
    name: str,
    args: str,
    forward: tuple[Callable, Callable, Callable],
    backward: tuple[Callable, Callable, Callable],
    overload: str = "",
    grads: int = 1,
):
    """Define ``name(Tensor X, args)`` and ``name_backward(Tensor grad, Tensor X, args)``
    (as their ``overload`` if one is given); each of ``forward``/``backward`` is
    (reference, python kernel, fake). ``grads``: how many leading tensor arguments get a
    gradient (X, then those that open ``args``, like AdaPool's Beta); the backward op
    returns one tensor per gradient. Returns the two OpOverloads."""
    suffix = f".{overload}" if overload else ""
    _define(name + suffix, f"Tensor X, {args}", *forward)
    returns = "Tensor" if grads == 1 else "(" + ", ".join(["Tensor"] * grads) + ")"
    _define(f"{name}_backward{suffix}", f"Tensor grad, Tensor X, {args}", *backward, returns=returns)
    op = getattr(getattr(torch.ops.poolexport, name), overload or "default")
    backward_op = getattr(getattr(torch.ops.poolexport, f"{name}_backward"), overload or "default")
    # tensor arguments besides X (a seed tensor) are saved for the backward like X is
    tensor_at = [i for i, a in enumerate(op._schema.arguments) if isinstance(a.type, torch.TensorType)]

    if tensor_at == [0]:
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.attrs = inputs[1:]

        def grad_fn(ctx, grad):
            (x,) = ctx.saved_tensors
            return (backward_op(grad, x, *ctx.attrs),) + (None,) * len(ctx.attrs)
    else:
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*(inputs[i] for i in tensor_at))
            ctx.attrs = [None if i in tensor_at else v for i, v in enumerate(inputs)]

        def grad_fn(ctx, grad):
            args = list(ctx.attrs)
            for i, t in zip(tensor_at, ctx.saved_tensors):
                args[i] = t
            result = backward_op(grad, *args)
            result = (result,) if grads == 1 else tuple(result)
            return result + (None,) * (len(args) - grads)

    torch.library.register_autograd(f"poolexport::{name}{suffix}", grad_fn, setup_context=setup_context, lib=LIB)
    return op, backward_op
