# `cmake --install`: headers, the static libraries, the `plumber` binary, a CMake
# package (find_package(plumber CONFIG): plumber::plumber, plumber::server),
# pkg-config files and the docs. `cpack` makes a .deb of the same.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(PLUMBER_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/plumber)
set(PLUMBER_BOOST_MIN_VERSION 1.81)

install(TARGETS plumber_lib plumber_server EXPORT plumberTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS plumber RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/plumber DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_BINARY_DIR}/include/plumber/version.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/plumber)
install(EXPORT plumberTargets NAMESPACE plumber:: DESTINATION ${PLUMBER_CMAKE_DIR})

configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/plumberConfig.cmake.in
  ${PROJECT_BINARY_DIR}/plumberConfig.cmake INSTALL_DESTINATION ${PLUMBER_CMAKE_DIR})
# 0.x: a minor version may break the API, so only the same minor is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/plumberConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/plumberConfig.cmake ${PROJECT_BINARY_DIR}/plumberConfigVersion.cmake
  DESTINATION ${PLUMBER_CMAKE_DIR})

# pkg-config: relocatable (paths relative to the .pc file), like the CMake package.
file(RELATIVE_PATH PLUMBER_PC_TO_PREFIX /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" PLUMBER_PC_TO_PREFIX "${PLUMBER_PC_TO_PREFIX}")
set(PLUMBER_PC_DEFINES "-DBOOST_ASIO_SEPARATE_COMPILATION")
configure_file(${CMAKE_CURRENT_LIST_DIR}/plumber.pc.in ${PROJECT_BINARY_DIR}/plumber.pc @ONLY)
configure_file(${CMAKE_CURRENT_LIST_DIR}/plumber-server.pc.in ${PROJECT_BINARY_DIR}/plumber-server.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/plumber.pc ${PROJECT_BINARY_DIR}/plumber-server.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

install(FILES ${PROJECT_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/graphs/ DESTINATION ${CMAKE_INSTALL_DOCDIR}/graphs)

# --- cpack: a .deb that depends on the Debian packages a consumer needs ------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME plumber)
set(CPACK_PACKAGE_VENDOR "Plumber")
set(CPACK_PACKAGE_CONTACT "Plumber maintainers <plumber@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "async processing pipelines described as JSON graphs, on Boost.Asio")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION devel)
# By name: the -dev packages bring the shared libraries the binary links
# (libspdlog, libfmt, libssl, libprometheus-cpp-core, libhiredis) and what a consumer's
# find_package(plumber) finds. Boost by its 1.81 name: libboost-dev is 1.74.
set(CPACK_DEBIAN_PACKAGE_DEPENDS
  "libboost1.81-dev, nlohmann-json3-dev (>= 3.10), libspdlog-dev, libssl-dev, prometheus-cpp-dev, libhiredis-dev, libjemalloc2")
include(CPack)
