# Helpers that give every plugin, filter, man page and test the same shape.

include(GNUInstallDirs)

set(KVM_BUILT_PLUGINS "" CACHE INTERNAL "")
set(KVM_BUILT_FILTERS "" CACHE INTERNAL "")

# kvm_add_plugin(NAME SOURCES a.c b.c LIBS x y)
# -> build/plugins/NAME/nbdkit-NAME-plugin.so, installed in nbdkit's plugindir.
function(kvm_add_plugin name)
  cmake_parse_arguments(A "" "" "SOURCES;LIBS" ${ARGN})
  set(t nbdkit-${name}-plugin)
  add_library(${t} MODULE ${A_SOURCES})
  set_target_properties(${t} PROPERTIES PREFIX "" C_VISIBILITY_PRESET hidden)
  target_include_directories(${t} PRIVATE ${NBDKIT_INCLUDE_DIRS})
  target_link_libraries(${t} PRIVATE ${A_LIBS})
  # Plugins must not pull undefined symbols other than nbdkit's.
  install(TARGETS ${t} LIBRARY DESTINATION ${NBDKIT_PLUGINDIR})
  set(KVM_BUILT_PLUGINS "${KVM_BUILT_PLUGINS};${name}" CACHE INTERNAL "")
endfunction()

# kvm_add_filter(NAME SOURCES ... LIBS ...)
function(kvm_add_filter name)
  cmake_parse_arguments(A "" "" "SOURCES;LIBS" ${ARGN})
  set(t nbdkit-${name}-filter)
  add_library(${t} MODULE ${A_SOURCES})
  set_target_properties(${t} PROPERTIES PREFIX "" C_VISIBILITY_PRESET hidden)
  target_include_directories(${t} PRIVATE ${NBDKIT_INCLUDE_DIRS})
  target_link_libraries(${t} PRIVATE ${A_LIBS})
  install(TARGETS ${t} LIBRARY DESTINATION ${NBDKIT_FILTERDIR})
  set(KVM_BUILT_FILTERS "${KVM_BUILT_FILTERS};${name}" CACHE INTERNAL "")
endfunction()

# kvm_add_unit_test(NAME SOURCES ... LIBS ...): a C test program run by ctest.
function(kvm_add_unit_test name)
  cmake_parse_arguments(A "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE ${A_LIBS})
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES TIMEOUT 120)
endfunction()

# kvm_add_shell_test(NAME SCRIPT [TIMEOUT s] [LABELS ...]): a shell test run
# with the environment of tests/functions.sh (build dir, sanitizer preload).
function(kvm_add_shell_test name script)
  cmake_parse_arguments(A "" "TIMEOUT" "LABELS" ${ARGN})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  add_test(NAME ${name} COMMAND bash ${script})
  set_tests_properties(${name} PROPERTIES
    TIMEOUT ${A_TIMEOUT}
    SKIP_RETURN_CODE 77
    LABELS "${A_LABELS}"
    ENVIRONMENT "TOP_SRCDIR=${CMAKE_SOURCE_DIR};TOP_BUILDDIR=${CMAKE_BINARY_DIR};KVM_SANITIZE=$<BOOL:${SANITIZE}>;KVM_CC=${CMAKE_C_COMPILER}")
endfunction()

function(kvm_print_summary)
  message(STATUS "Plugins: ${KVM_BUILT_PLUGINS}")
  message(STATUS "Filters: ${KVM_BUILT_FILTERS}")
  message(STATUS "Install dirs: ${NBDKIT_PLUGINDIR} ${NBDKIT_FILTERDIR}")
  if(KVM_MISSING)
    message(STATUS "Skipped (missing dependency): ${KVM_MISSING}")
  endif()
endfunction()
