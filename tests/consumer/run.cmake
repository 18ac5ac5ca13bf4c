# ctest Package.install / Package.deb: install this build of Plumber the way a
# user gets it, then build tests/consumer against it and run the result.
#
#   install: `cmake --install` into WORK_DIR/prefix; the consumer is built with
#            find_package(plumber CONFIG), and again with pkg-config and g++.
#   deb:     `cpack` makes the .deb; its Depends must name the Debian packages;
#            it is unpacked into WORK_DIR/root and the consumer built against it.
#
# cmake -DMODE=install|deb -DBUILD_DIR=... -DWORK_DIR=... -DCONSUMER_DIR=...
#       -DVERSION=... [-DSANITIZE=address,undefined [-DSANITIZE_SKIP=null,alignment]] -P run.cmake
cmake_minimum_required(VERSION 3.25)

set(flags "")
if(SANITIZE)
  # A library built with sanitizers needs its consumers linked with them.
  set(flags "-fsanitize=${SANITIZE} -fno-omit-frame-pointer")
  if(SANITIZE_SKIP)  # the checks the library leaves out, left out here too
    string(APPEND flags " -fno-sanitize=${SANITIZE_SKIP}")
  endif()
endif()
find_program(CCACHE ccache)
set(launcher "")
if(CCACHE)
  set(launcher "-DCMAKE_CXX_COMPILER_LAUNCHER=${CCACHE}")
endif()

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\n${out}\n${err}")
  endif()
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

set(expected "plumber ${VERSION}
1 -> 3
2 -> 6
3 -> 9
4 -> 12
5 -> 15
server on a free port: ok
")

# Runs a consumer binary on its graph and compares what it prints.
function(check_consumer exe how)
  run(${exe} ${CONSUMER_DIR}/triple.json)
  # spdlog's default logger (the server's info lines) writes to stdout.
  string(REGEX REPLACE "\\[[0-9-]+ [0-9:.]+\\] [^\n]*\n" "" run_output "${run_output}")
  if(NOT run_output STREQUAL expected)
    message(FATAL_ERROR "${how}: the consumer printed\n${run_output}\ninstead of\n${expected}")
  endif()
  message(STATUS "${how}: ok")
endfunction()

# Configures, builds and runs tests/consumer against PREFIX with find_package.
function(build_with_cmake prefix build_dir)
  run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${build_dir} -G Ninja -DCMAKE_BUILD_TYPE=Debug
      -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
      "-DCMAKE_CXX_FLAGS=${flags}" "-DCMAKE_EXE_LINKER_FLAGS=${flags}" ${launcher})
  run(${CMAKE_COMMAND} --build ${build_dir})
  check_consumer(${build_dir}/consumer "find_package(plumber) from ${prefix}")
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

if(MODE STREQUAL "install")
  set(prefix ${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
  foreach(file bin/plumber include/plumber/all.hpp include/plumber/version.hpp)
    if(NOT EXISTS ${prefix}/${file})
      message(FATAL_ERROR "cmake --install did not install ${file}")
    endif()
  endforeach()
  run(${prefix}/bin/plumber --version)
  if(NOT run_output MATCHES "^plumber ${VERSION} \\(commit [^)]+\\)\nbuilt with Boost 1\\.[0-9]+\\.[0-9]+, nlohmann/json [0-9.]+, spdlog [0-9.]+")
    message(FATAL_ERROR "plumber --version printed:\n${run_output}")
  endif()
  build_with_cmake(${prefix} ${WORK_DIR}/build)

  # The same program with pkg-config and the compiler alone.
  file(GLOB_RECURSE pc_files ${prefix}/*/plumber.pc)
  list(GET pc_files 0 pc_file)
  get_filename_component(pc_dir ${pc_file} DIRECTORY)
  set(ENV{PKG_CONFIG_PATH} ${pc_dir})
  run(pkg-config --cflags --libs plumber-server plumber)
  string(STRIP "${run_output}" pc_flags)
  separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
  separate_arguments(san_flags UNIX_COMMAND "${flags}")
  run(${CCACHE} g++ -std=c++20 ${san_flags} ${CONSUMER_DIR}/consumer.cpp -o ${WORK_DIR}/consumer-pc
      ${pc_flags})
  check_consumer(${WORK_DIR}/consumer-pc "pkg-config")
elseif(MODE STREQUAL "deb")
  run(cpack --config ${BUILD_DIR}/CPackConfig.cmake -G DEB -B ${WORK_DIR}/package)
  file(GLOB debs ${WORK_DIR}/package/*.deb)
  list(LENGTH debs count)
  if(NOT count EQUAL 1)
    message(FATAL_ERROR "cpack made ${count} .deb files: ${debs}")
  endif()
  run(dpkg-deb --field ${debs} Depends)
  string(STRIP "${run_output}" run_output)
  foreach(package libboost1.81-dev nlohmann-json3-dev libspdlog-dev libssl-dev prometheus-cpp-dev)
    if(NOT run_output MATCHES "(^|, )${package}( |,|$)")
      message(FATAL_ERROR "the .deb does not depend on ${package}: ${run_output}")
    endif()
  endforeach()
  run(dpkg-deb -x ${debs} ${WORK_DIR}/root)
  run(${WORK_DIR}/root/usr/bin/plumber --version)
  build_with_cmake(${WORK_DIR}/root/usr ${WORK_DIR}/build)
else()
  message(FATAL_ERROR "MODE must be install or deb")
endif()
