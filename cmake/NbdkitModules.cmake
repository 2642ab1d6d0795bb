# SPDX-License-Identifier: BSD-3-Clause
# Helpers that give every plugin, filter, man page and test the same shape.

include(GNUInstallDirs)

set(KVM_BUILT_PLUGINS "" CACHE INTERNAL "")
set(KVM_BUILT_FILTERS "" CACHE INTERNAL "")

# Every target is compiled with hidden visibility (top-level CMakeLists.txt),
# so a module exports only what nbdkit looks up: plugin_init / filter_init
# (NBDKIT_REGISTER_* marks them NBDKIT_DLL_PUBLIC) and its -D debug flags
# (NAME_debug_FLAG, declared NBDKIT_DLL_PUBLIC).  --exclude-libs keeps
# symbols of any static library linked in local even if it was compiled
# otherwise.  nbdkit loads modules with RTLD_GLOBAL, so an exported engine
# symbol would bind a filter to a plugin's copy of common/ (or the reverse).
# ctest checks both (tests/project: project-symbols, project-load).
function(_kvm_add_module t kind name dir)
  cmake_parse_arguments(A "" "" "SOURCES;LIBS" ${ARGN})
  add_library(${t} MODULE ${A_SOURCES})
  set_target_properties(${t} PROPERTIES PREFIX "" C_VISIBILITY_PRESET hidden)
  target_include_directories(${t} PRIVATE ${NBDKIT_INCLUDE_DIRS}
                             ${KVM_GENERATED_INCLUDE_DIR})
  target_link_libraries(${t} PRIVATE ${A_LIBS})
  target_link_options(${t} PRIVATE -Wl,--exclude-libs,ALL)
  install(TARGETS ${t} LIBRARY DESTINATION ${dir})
  # The man page lives beside the sources, as in nbdkit.
  set(pod ${CMAKE_CURRENT_SOURCE_DIR}/${t}.pod)
  if(EXISTS ${pod})
    kvm_add_man(${pod})
  else()
    message(WARNING "${kind} ${name}: no man page ${pod}")
  endif()
endfunction()

# kvm_add_plugin(NAME SOURCES a.c b.c LIBS x y)
# -> build/plugins/NAME/nbdkit-NAME-plugin.so, installed in nbdkit's
# plugindir, with its man page nbdkit-NAME-plugin.pod from the same
# directory.  LIBS: the engine libraries it uses (kvm_qcow2, kvm_lvm, ...).
function(kvm_add_plugin name)
  _kvm_add_module(nbdkit-${name}-plugin plugin ${name} ${NBDKIT_PLUGINDIR} ${ARGN})
  set(KVM_BUILT_PLUGINS "${KVM_BUILT_PLUGINS};${name}" CACHE INTERNAL "")
endfunction()

# kvm_add_filter(NAME SOURCES ... LIBS ...): the same for
# nbdkit-NAME-filter.so, installed in nbdkit's filterdir.
function(kvm_add_filter name)
  _kvm_add_module(nbdkit-${name}-filter filter ${name} ${NBDKIT_FILTERDIR} ${ARGN})
  set(KVM_BUILT_FILTERS "${KVM_BUILT_FILTERS};${name}" CACHE INTERNAL "")
endfunction()

# kvm_add_man(POD [SECTION n]): POD -> man page (default section 1), built
# with `all` (and by the target `man`) and installed.
add_custom_target(man)
function(kvm_add_man pod)
  cmake_parse_arguments(A "" "SECTION" "" ${ARGN})
  if(NOT A_SECTION)
    set(A_SECTION 1)
  endif()
  if(NOT POD2MAN)
    message(FATAL_ERROR "pod2man (package perl) is needed for man pages")
  endif()
  get_filename_component(n ${pod} NAME_WE)
  set(man ${CMAKE_CURRENT_BINARY_DIR}/${n}.${A_SECTION})
  add_custom_command(OUTPUT ${man}
    COMMAND ${POD2MAN} --section=${A_SECTION} --center=nbdkit-kvm-storage
            --release=${PROJECT_VERSION} --name=${n} --utf8 ${pod} ${man}
    DEPENDS ${pod} VERBATIM)
  add_custom_target(man-${n} ALL DEPENDS ${man})
  add_dependencies(man man-${n})
  install(FILES ${man} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${A_SECTION})
endfunction()

# kvm_add_engine_library(TARGET SOURCES a.c ... [LIBS x y]): a static
# library of common/ (no nbdkit dependency).  LIBS are its public link
# dependencies (other engine libraries, system libraries).  Each one also
# joins kvm_common, the INTERFACE library of all of them that unit tests
# and fuzz replay drivers link, and the list of libraries whose sources
# the libFuzzer targets compile instrumented (tests/fuzz).
function(kvm_add_engine_library target)
  cmake_parse_arguments(A "" "" "SOURCES;LIBS" ${ARGN})
  add_library(${target} STATIC ${A_SOURCES})
  target_link_libraries(${target} PUBLIC ${A_LIBS})
  target_link_libraries(kvm_common INTERFACE ${target})
  set_property(GLOBAL APPEND PROPERTY KVM_ENGINE_LIBRARIES ${target})
endfunction()

# kvm_add_unit_test(NAME SOURCES ... LIBS ...): a C test program run by ctest.
function(kvm_add_unit_test name)
  cmake_parse_arguments(A "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE ${A_LIBS})
  add_test(NAME ${name} COMMAND ${name})
  # 77: the test cannot run here (it fails instead when CI=true).
  set_tests_properties(${name} PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
    RESOURCE_GROUPS "cpu:1")
endfunction()

# kvm_add_shell_test(NAME SCRIPT [TIMEOUT s] [COST s] [IDLE] [LABELS ...]
#                    [LOCKS ...]): a shell test run with the environment of
# tests/functions.sh (build dir, sanitizer preload).  LOCKS: ctest
# RESOURCE_LOCK names, for a test that uses something system-wide that
# another test uses too; COST: its expected seconds on an idle 2-core
# machine, for a test of more than ~20 s, so that ctest -j starts it early;
# IDLE: a test that mostly waits (rate limits, timeouts, sleeps; measured
# CPU time under about 45 % of its wall time) and takes none of ctest's
# "cpu" resource slots, so it runs beside the busy tests (see the rules
# at the top of tests/CMakeLists.txt).
function(kvm_add_shell_test name script)
  cmake_parse_arguments(A "IDLE" "TIMEOUT;COST" "LABELS;LOCKS" ${ARGN})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  add_test(NAME ${name} COMMAND bash ${script})
  set_tests_properties(${name} PROPERTIES
    TIMEOUT ${A_TIMEOUT}
    SKIP_RETURN_CODE 77
    LABELS "${A_LABELS}"
    ENVIRONMENT "TOP_SRCDIR=${CMAKE_SOURCE_DIR};TOP_BUILDDIR=${CMAKE_BINARY_DIR};KVM_SANITIZE=${KVM_SANITIZE};KVM_CC=${CMAKE_C_COMPILER};KVM_VERSION=${PROJECT_VERSION}")
  if(A_LOCKS)
    set_tests_properties(${name} PROPERTIES RESOURCE_LOCK "${A_LOCKS}")
  endif()
  if(A_COST)
    set_tests_properties(${name} PROPERTIES COST ${A_COST})
  endif()
  if(NOT A_IDLE)
    set_tests_properties(${name} PROPERTIES RESOURCE_GROUPS "cpu:1")
  endif()
endfunction()

function(kvm_print_summary)
  message(STATUS "Plugins: ${KVM_BUILT_PLUGINS}")
  message(STATUS "Filters: ${KVM_BUILT_FILTERS}")
  message(STATUS "Install dirs: ${NBDKIT_PLUGINDIR} ${NBDKIT_FILTERDIR}")
  if(KVM_MISSING)
    message(STATUS "Skipped (missing dependency): ${KVM_MISSING}")
  endif()
endfunction()
