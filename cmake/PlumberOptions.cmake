# Warnings and sanitizers, as interface targets that plumber's own targets link.
add_library(plumber_warnings INTERFACE)
target_compile_options(plumber_warnings INTERFACE -Wall -Wextra -Wpedantic
  $<$<BOOL:${PLUMBER_WERROR}>:-Werror>
  # g++ 12 at -O3 reports `"text" + std::string&&` as an overlapping memcpy
  # (-Wrestrict, GCC bug 105329, fixed in 13): the release preset failed on it
  # in three files. Only optimised builds: the other presets' flags (and ccache) stay as they are.
  $<$<AND:$<CXX_COMPILER_ID:GNU>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,13>,$<CONFIG:Release>>:-Wno-restrict>)

set(PLUMBER_SANITIZE "" CACHE STRING "Sanitizers: 'address;undefined' or 'thread' (empty: none)")
add_library(plumber_sanitizers INTERFACE)
if(PLUMBER_SANITIZE)
  list(JOIN PLUMBER_SANITIZE "," _plumber_san)
  target_compile_options(plumber_sanitizers INTERFACE -fsanitize=${_plumber_san} -fno-omit-frame-pointer
    -fno-sanitize-recover=all)
  target_link_options(plumber_sanitizers INTERFACE -fsanitize=${_plumber_san})
  if("thread" IN_LIST PLUMBER_SANITIZE)
    # g++ 12 warns that TSan does not model the std::atomic_thread_fence in
    # Asio's headers; tests/tsan.supp covers what it then misreports.
    target_compile_options(plumber_sanitizers INTERFACE -Wno-tsan)
    # The tsan preset compiles at -O1, where g++ 12 mistakes the operator
    # delete of Asio's coroutine frames for a mismatch with their operator new.
    target_compile_options(plumber_sanitizers INTERFACE -Wno-mismatched-new-delete)
  endif()
endif()
# UBSan's null and alignment checks are one check (a "type mismatch") at every
# access through a pointer or a reference. With them, the asan preset's
# translation units took 20-50% longer to compile here (ws_session.cpp 55 s
# instead of 37 s; ASan alone: 30 s), for little: ASan reports a null
# dereference itself (SEGV, with its stack), x86-64 tolerates a misaligned
# access, and the code that reads bytes (worker records, CBOR, JSON, frames)
# runs under clang's whole UBSan, alignment included, in the fuzz preset.
set(PLUMBER_UBSAN_SKIP "null;alignment" CACHE STRING
  "UBSan checks left out when 'undefined' is sanitized (empty: every check)")
# The checks left out, comma-separated (empty: none); tests/CMakeLists.txt
# builds its packaging consumer with the same.
set(plumber_ubsan_skip "")
if("undefined" IN_LIST PLUMBER_SANITIZE AND PLUMBER_UBSAN_SKIP)
  list(JOIN PLUMBER_UBSAN_SKIP "," plumber_ubsan_skip)
  target_compile_options(plumber_sanitizers INTERFACE -fno-sanitize=${plumber_ubsan_skip})
endif()

# ccache (installed by tools/setup-deps) makes a rebuild after a small change,
# or a second preset of the same sources, cheap on a 2-core machine.
find_program(PLUMBER_CCACHE ccache)
if(PLUMBER_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  # CCACHE_BASEDIR and CCACHE_NOHASHDIR: paths under the source tree are
  # hashed relative to the build directory, so a clone at another path (a CI
  # checkout) hits the cache too; debug info then names the first clone's files.
  set(plumber_ccache_env CCACHE_BASEDIR=${PROJECT_SOURCE_DIR} CCACHE_NOHASHDIR=1)
  if(PLUMBER_PCH)
    # With precompiled headers, ccache caches only when told to ignore the
    # header's macros and timestamps; CMake rebuilds the header whenever what
    # it includes changes.
    list(APPEND plumber_ccache_env
        CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime)
  endif()
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CMAKE_COMMAND} -E env ${plumber_ccache_env} ${PLUMBER_CCACHE})
endif()
