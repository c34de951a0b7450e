# Locate the ONNX Runtime C/C++ headers (the onnxruntime wheel ships none).
#
# Order: -DONNXRUNTIME_INCLUDE_DIR=... ; a system install ; Debian trixie's
# libonnxruntime-dev (1.21), fetched into the build tree with apt's own tools. The
# mirror comes from this machine's own apt sources (never hard-coded here); apt runs
# with a private state/cache directory under the build tree, so the system is untouched.
# The C API is backward compatible: headers of 1.21 build a library that loads in newer
# onnxruntime releases (RegisterCustomOps negotiates the API version).

set(ONNXRUNTIME_INCLUDE_DIR "" CACHE PATH "Directory holding onnxruntime_c_api.h")

function(_poolexport_has_headers dir out)
  if(dir AND EXISTS "${dir}/onnxruntime_c_api.h" AND EXISTS "${dir}/onnxruntime_lite_custom_op.h")
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

# First URI of an apt source that serves the Debian main archive (a suite without '-',
# like "bookworm"), from one-line .list files and deb822 .sources files.
function(_poolexport_debian_mirror out)
  file(GLOB _lists /etc/apt/sources.list /etc/apt/sources.list.d/*.list)
  foreach(f IN LISTS _lists)
    file(STRINGS "${f}" _lines REGEX "^[ \t]*deb[ \t]")
    foreach(l IN LISTS _lines)
      string(REGEX REPLACE "\\[[^]]*\\]" "" l "${l}")
      string(REGEX MATCH "^[ \t]*deb[ \t]+([^ \t]+)[ \t]+([^ \t]+)" _m "${l}")
      if(_m AND NOT CMAKE_MATCH_2 MATCHES "-" AND CMAKE_MATCH_1 MATCHES "/debian/?$")
        set(${out} "${CMAKE_MATCH_1}" PARENT_SCOPE)
        return()
      endif()
    endforeach()
  endforeach()
  file(GLOB _sources /etc/apt/sources.list.d/*.sources)
  foreach(f IN LISTS _sources)
    file(READ "${f}" _text)
    string(REPLACE "\n\n" ";" _stanzas "${_text}")
    foreach(s IN LISTS _stanzas)
      string(REGEX MATCH "(^|\n)URIs:[ \t]*([^ \t\n]+)" _u "${s}")
      set(_uri "${CMAKE_MATCH_2}")
      string(REGEX MATCH "(^|\n)Suites:[ \t]*([^\n]+)" _s "${s}")
      set(_suites "${CMAKE_MATCH_2}")
      string(REGEX MATCH "(^|\n)Signed-By:[ \t]*([^ \t\n]+)" _k "${s}")
      set(_key "${CMAKE_MATCH_2}")
      if(_uri MATCHES "/debian/?$" AND _suites MATCHES "(^|[ \t])[a-z]+([ \t]|$)")
        set(${out} "${_uri}" PARENT_SCOPE)
        set(POOLEXPORT_APT_KEYRING "${_key}" PARENT_SCOPE)
        return()
      endif()
    endforeach()
  endforeach()
  set(${out} "" PARENT_SCOPE)
endfunction()

function(_poolexport_fetch_headers out)
  set(root "${CMAKE_BINARY_DIR}/onnxruntime-headers")
  set(inc "${root}/root/usr/include/onnxruntime")
  _poolexport_has_headers("${inc}" _ok)
  if(_ok)
    set(${out} "${inc}" PARENT_SCOPE)
    return()
  endif()
  find_program(APT_GET apt-get)
  find_program(DPKG_DEB dpkg-deb)
  if(NOT APT_GET OR NOT DPKG_DEB)
    message(FATAL_ERROR "poolexport: ONNX Runtime headers not found and apt-get/dpkg-deb are missing; "
                        "pass -DONNXRUNTIME_INCLUDE_DIR=<dir with onnxruntime_c_api.h>")
  endif()
  _poolexport_debian_mirror(mirror)
  if(NOT mirror)
    message(FATAL_ERROR "poolexport: no Debian mirror in /etc/apt sources to fetch libonnxruntime-dev from; "
                        "pass -DONNXRUNTIME_INCLUDE_DIR=<dir with onnxruntime_c_api.h>")
  endif()
  set(keyring "/usr/share/keyrings/debian-archive-keyring.gpg")
  if(POOLEXPORT_APT_KEYRING AND EXISTS "${POOLEXPORT_APT_KEYRING}")
    set(keyring "${POOLEXPORT_APT_KEYRING}")
  endif()
  set(apt "${root}/apt")
  file(MAKE_DIRECTORY "${apt}/lists/partial" "${apt}/cache/archives/partial" "${apt}/etc/sources.list.d"
                      "${apt}/etc/preferences.d" "${apt}/etc/apt.conf.d" "${root}/deb")
  file(WRITE "${apt}/etc/sources.list" "deb [signed-by=${keyring}] ${mirror} trixie main\n")
  file(WRITE "${apt}/status" "")
  set(opts -o "Dir::Etc=${apt}/etc" -o "Dir::Etc::sourcelist=${apt}/etc/sources.list"
      -o "Dir::Etc::sourceparts=${apt}/etc/sources.list.d" -o "Dir::Etc::parts=${apt}/etc/apt.conf.d"
      -o "Dir::Etc::preferencesparts=${apt}/etc/preferences.d"
      -o "Dir::State=${apt}" -o "Dir::State::lists=${apt}/lists" -o "Dir::State::status=${apt}/status"
      -o "Dir::Cache=${apt}/cache" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
      -o "Acquire::Languages=none" -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false")
  message(STATUS "poolexport: fetching libonnxruntime-dev headers (Debian trixie) from ${mirror} into ${root}")
  execute_process(COMMAND "${APT_GET}" ${opts} -qq update RESULT_VARIABLE rc OUTPUT_VARIABLE o ERROR_VARIABLE e)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "poolexport: apt-get update (private state, trixie) failed: ${e}${o}")
  endif()
  execute_process(COMMAND "${APT_GET}" ${opts} -qq download libonnxruntime-dev
                  WORKING_DIRECTORY "${root}/deb" RESULT_VARIABLE rc OUTPUT_VARIABLE o ERROR_VARIABLE e)
  file(GLOB debs "${root}/deb/libonnxruntime-dev_*.deb")
  if(NOT rc EQUAL 0 OR NOT debs)
    message(FATAL_ERROR "poolexport: apt-get download libonnxruntime-dev failed: ${e}${o}")
  endif()
  list(GET debs 0 deb)
  execute_process(COMMAND "${DPKG_DEB}" -x "${deb}" "${root}/root" RESULT_VARIABLE rc ERROR_VARIABLE e)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "poolexport: dpkg-deb -x ${deb} failed: ${e}")
  endif()
  _poolexport_has_headers("${inc}" _ok)
  if(NOT _ok)
    message(FATAL_ERROR "poolexport: ${deb} did not contain onnxruntime_lite_custom_op.h under /usr/include/onnxruntime")
  endif()
  set(${out} "${inc}" PARENT_SCOPE)
endfunction()

_poolexport_has_headers("${ONNXRUNTIME_INCLUDE_DIR}" _ok)
if(ONNXRUNTIME_INCLUDE_DIR AND NOT _ok)
  message(FATAL_ERROR "poolexport: ONNXRUNTIME_INCLUDE_DIR=${ONNXRUNTIME_INCLUDE_DIR} has no onnxruntime_c_api.h "
                      "and onnxruntime_lite_custom_op.h")
endif()
if(NOT _ok)
  find_path(_ort_sys onnxruntime_lite_custom_op.h PATH_SUFFIXES onnxruntime onnxruntime/core/session)
  if(_ort_sys)
    set(ONNXRUNTIME_INCLUDE_DIR "${_ort_sys}" CACHE PATH "" FORCE)
  else()
    _poolexport_fetch_headers(_fetched)
    set(ONNXRUNTIME_INCLUDE_DIR "${_fetched}" CACHE PATH "" FORCE)
  endif()
endif()
message(STATUS "poolexport: ONNX Runtime headers: ${ONNXRUNTIME_INCLUDE_DIR}")
