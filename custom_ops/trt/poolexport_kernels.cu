// TensorRT entry of the poolexport CUDA kernels: nvcc -ptx of this file gives the PTX that
// the ahead-of-time plugins (poolexport/tensorrt/plugins.py) embed in engines. It compiles
// the very kernel definitions the ONNX Runtime CUDA build uses, so both runtimes run one
// math; the entry points and their parameter lists are those of kernel_abi.h.
// Built by poolexport/tensorrt/ptx.py: nvcc -ptx -arch=compute_75 -std=c++17 -I include.
#include "../cuda/kernels.cu"
