# Declares nvcc's PTX at an older PTX ISA (as poolexport/tensorrt/ptx.py does) so that
# CUDA 12 drivers read it, then has ptxas check that the kernels need nothing newer.
#   cmake -DIN=k.ptx -DOUT=out.ptx -DISA=8.0 -DPTXAS=/path/ptxas -DSM=sm_75 -P lower_isa.cmake
file(READ "${IN}" _ptx)
string(REGEX MATCH "\n\\.version ([0-9]+\\.[0-9]+)" _m "${_ptx}")
if(NOT _m)
  message(FATAL_ERROR "poolexport: ${IN} has no .version directive")
endif()
if(CMAKE_MATCH_1 VERSION_GREATER ISA)
  string(REPLACE "${_m}" "\n.version ${ISA}" _ptx "${_ptx}")
endif()
file(WRITE "${OUT}" "${_ptx}")
if(EXISTS "${PTXAS}")
  execute_process(COMMAND "${PTXAS}" "-arch=${SM}" "${OUT}" -o /dev/null RESULT_VARIABLE _rc ERROR_VARIABLE _err)
  if(_rc)
    file(REMOVE "${OUT}")
    message(FATAL_ERROR "poolexport: the kernels need a newer PTX ISA than ${ISA}: ${_err}")
  endif()
endif()
