# Install rules (NINES_INSTALL): `cmake --install BUILD --prefix P` puts the headers, the static
# libraries of the layers that were built, the `nines` command (when built), the CMake package
# (find_package(nines CONFIG): nines::core, nines::runtime, ...) and a pkg-config file into P.
include(CMakePackageConfigHelpers)

get_property(nines_layers GLOBAL PROPERTY NINES_LAYERS)
set(nines_targets "")
foreach(layer IN LISTS nines_layers)
  list(APPEND nines_targets nines_${layer})
endforeach()

install(TARGETS ${nines_targets} EXPORT ninesTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET nines)
  install(TARGETS nines RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

# Public headers of the layers that were built (a backend that was not built keeps its header
# out too, so nothing installed refers to code that is missing).
set(store_excludes "")
if(NOT NINES_WITH_SQLITE)
  list(APPEND store_excludes PATTERN sqlite_store.hpp EXCLUDE)
endif()
if(NOT NINES_WITH_POSTGRES)
  list(APPEND store_excludes PATTERN postgres_store.hpp EXCLUDE)
endif()
foreach(layer IN LISTS nines_layers)
  set(excludes "")
  if(layer STREQUAL "store")
    set(excludes ${store_excludes})
  endif()
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/nines/${layer}
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/nines FILES_MATCHING PATTERN "*.hpp" ${excludes})
endforeach()
install(FILES ${PROJECT_SOURCE_DIR}/include/nines/nines.hpp
              ${PROJECT_BINARY_DIR}/include/nines/version.hpp
              ${PROJECT_BINARY_DIR}/include/nines/features.hpp
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/nines)

# The CMake package.
set(nines_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/nines)
install(EXPORT ninesTargets NAMESPACE nines:: DESTINATION ${nines_cmake_dir})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/ninesConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/ninesConfig.cmake INSTALL_DESTINATION ${nines_cmake_dir})
# 0.x: a minor version may break the API, so only the same minor version is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/ninesConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/ninesConfig.cmake ${PROJECT_BINARY_DIR}/ninesConfigVersion.cmake
        DESTINATION ${nines_cmake_dir})

# The pkg-config file. Only static libraries are built, so the C libraries they use are in
# Requires (not Requires.private): `pkg-config --cflags --libs nines` is enough to link.
set(pc_libs "")
list(REVERSE nines_layers)  # highest layer first, for single-pass static linkers
foreach(layer IN LISTS nines_layers)
  string(APPEND pc_libs " -lnines_${layer}")
endforeach()
set(pc_requires "")
if(NINES_WITH_SQLITE)
  list(APPEND pc_requires sqlite3)
endif()
if(NINES_WITH_POSTGRES)
  list(APPEND pc_requires libpq)
endif()
if(NINES_WITH_NET)
  list(APPEND pc_requires libcurl)
endif()
if(NINES_WITH_LLM)
  list(APPEND pc_requires simdjson)  # the llm layer's response parsing
  list(APPEND pc_requires yaml-cpp)  # the service layer's config
  list(APPEND pc_requires prometheus-cpp-core)  # the service layer's /metrics page
endif()
list(JOIN pc_requires " " pc_requires)
set(pc_extra_libs "-pthread")
if(NINES_SANITIZE)
  string(APPEND pc_extra_libs " -fsanitize=${NINES_SANITIZE}")
endif()
file(RELATIVE_PATH pc_prefix_from_pcfiledir /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
string(REGEX REPLACE "/$" "" pc_prefix_from_pcfiledir "${pc_prefix_from_pcfiledir}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/nines.pc.in ${PROJECT_BINARY_DIR}/nines.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/nines.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
