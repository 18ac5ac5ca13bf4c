# Precompiled headers: the third-party headers that most translation units
# include (Asio's coroutine and channel machinery, nlohmann's json, spdlog; and
# Beast for the server), parsed again in ~100 files per preset on a 2-core
# machine. A fresh ASan build (-j2, no ccache) took 9m45s, 8m30s with them
# precompiled: a heavy file's own templates and code generation are the rest
# (pipeline_core.cpp: 22 s, 19 s).
#
# On in the sanitizer presets (the test builds); off by default, so that the
# release build, which the README's first command makes, still proves that
# every file includes what it uses.
option(PLUMBER_PCH "Precompile the heavy third-party headers (faster builds)" OFF)

set(PLUMBER_PCH_COMMON
  <algorithm> <chrono> <functional> <map> <memory> <optional> <string> <vector>
  <nlohmann/json.hpp>
  <boost/asio/any_io_executor.hpp> <boost/asio/as_tuple.hpp> <boost/asio/awaitable.hpp>
  <boost/asio/co_spawn.hpp> <boost/asio/detached.hpp> <boost/asio/experimental/channel.hpp>
  <boost/asio/io_context.hpp> <boost/asio/post.hpp> <boost/asio/steady_timer.hpp>
  <boost/asio/strand.hpp> <boost/asio/this_coro.hpp> <boost/asio/use_awaitable.hpp>)
set(PLUMBER_PCH_SERVER
  <boost/asio/ip/tcp.hpp> <boost/beast/core.hpp> <boost/beast/http.hpp>
  <boost/beast/websocket.hpp>)

# plumber_precompile_headers(target [SERVER] [HEADERS h...] [SKIP file...]):
# the common list, Beast's with SERVER; SKIP names sources that must not see
# them (Asio's and Beast's own implementation files).
function(plumber_precompile_headers target)
  if(NOT PLUMBER_PCH)
    return()
  endif()
  cmake_parse_arguments(PARSE_ARGV 1 arg "SERVER" "" "HEADERS;SKIP")
  set(headers ${PLUMBER_PCH_COMMON} ${arg_HEADERS})
  if(arg_SERVER)
    list(APPEND headers ${PLUMBER_PCH_SERVER})
  endif()
  target_precompile_headers(${target} PRIVATE ${headers})
  if(arg_SKIP)
    set_source_files_properties(${arg_SKIP} TARGET_DIRECTORY ${target}
                                PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
  endif()
endfunction()
