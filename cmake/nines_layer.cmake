# nines_layer(NAME SOURCES ... DEPS ... TESTS ... TEST_DEPS ...)
# Declares one architecture layer the same way for every layer: a static library
# nines_<NAME> (nines::<NAME> in the build tree and in the installed package) with public
# headers under include/nines/<NAME>/, and (when tests are on) one test binary
# nines_<NAME>_test registered in CTest with the label <NAME>. DEPS are public (other nines
# layers); a layer links its third-party C libraries PRIVATE in its own CMakeLists.txt, and the
# installed package's config file finds them again for static linking (cmake/ninesConfig.cmake.in).
function(nines_layer name)
  cmake_parse_arguments(L "" "" "SOURCES;DEPS;TESTS;TEST_DEPS" ${ARGN})
  add_library(nines_${name} STATIC ${L_SOURCES})
  add_library(nines::${name} ALIAS nines_${name})
  set_target_properties(nines_${name} PROPERTIES EXPORT_NAME ${name} POSITION_INDEPENDENT_CODE ON)
  target_include_directories(nines_${name}
    PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
           $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/include>
           $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(nines_${name} PUBLIC ${L_DEPS})
  target_compile_features(nines_${name} PUBLIC cxx_std_20)
  # A sanitized static library needs the sanitizer's runtime wherever it is linked, so the flag
  # travels to consumers (an installed debug build links into a consumer's executable).
  if(NINES_SANITIZE)
    target_link_options(nines_${name} INTERFACE -fsanitize=${NINES_SANITIZE})
  endif()
  set_property(GLOBAL APPEND PROPERTY NINES_LAYERS ${name})  # for install, lowest layer first
  if(NINES_BUILD_TESTS AND L_TESTS)
    add_executable(nines_${name}_test ${L_TESTS})
    target_include_directories(nines_${name}_test PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
    target_link_libraries(nines_${name}_test PRIVATE nines_${name} ${L_TEST_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
    add_test(NAME ${name} COMMAND nines_${name}_test --gtest_brief=1)
    set_tests_properties(${name} PROPERTIES LABELS ${name} TIMEOUT 600)
  endif()
endfunction()
