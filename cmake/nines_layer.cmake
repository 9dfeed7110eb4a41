# nines_layer(NAME SOURCES ... DEPS ... TESTS ... TEST_DEPS ...)
# Declares one architecture layer the same way for every layer: a static library
# nines_<NAME> with public headers under include/nines/<NAME>/, and (when tests are
# on) one test binary nines_<NAME>_test registered in CTest with the label <NAME>.
function(nines_layer name)
  cmake_parse_arguments(L "" "" "SOURCES;DEPS;TESTS;TEST_DEPS" ${ARGN})
  add_library(nines_${name} STATIC ${L_SOURCES})
  add_library(nines::${name} ALIAS nines_${name})
  target_include_directories(nines_${name}
    PUBLIC ${PROJECT_SOURCE_DIR}/include ${PROJECT_BINARY_DIR}/include
    PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(nines_${name} PUBLIC ${L_DEPS})
  if(NINES_BUILD_TESTS AND L_TESTS)
    add_executable(nines_${name}_test ${L_TESTS})
    target_include_directories(nines_${name}_test PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
    target_link_libraries(nines_${name}_test PRIVATE nines_${name} ${L_TEST_DEPS} GTest::gtest GTest::gtest_main)
    add_test(NAME ${name} COMMAND nines_${name}_test --gtest_brief=1)
    set_tests_properties(${name} PROPERTIES LABELS ${name} TIMEOUT 600)
  endif()
endfunction()
