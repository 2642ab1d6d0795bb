# SPDX-License-Identifier: BSD-3-Clause
# Finds every external library once.  Each sets HAVE_<NAME>; a component
# whose library is missing is skipped (or, with REQUIRE_ALL, fails).
find_package(PkgConfig REQUIRED)

set(KVM_MISSING "")

# kvm_require(<component> <HAVE_var> <what is missing>): returns TRUE in
# <component>_ENABLED when the dependency is there.
function(kvm_dependency component have_var what)
  if(${have_var})
    set(${component}_ENABLED TRUE PARENT_SCOPE)
  else()
    set(${component}_ENABLED FALSE PARENT_SCOPE)
    if(REQUIRE_ALL)
      message(FATAL_ERROR "${component}: ${what} not found (REQUIRE_ALL=ON)")
    endif()
    message(STATUS "Skipping ${component}: ${what} not found")
    set(KVM_MISSING "${KVM_MISSING};${component}" CACHE INTERNAL "")
  endif()
endfunction()

pkg_check_modules(NBDKIT nbdkit)
if(NOT NBDKIT_FOUND)
  message(FATAL_ERROR "nbdkit plugin API not found: install nbdkit-plugin-dev")
endif()
pkg_get_variable(NBDKIT_PLUGINDIR nbdkit plugindir)
pkg_get_variable(NBDKIT_FILTERDIR nbdkit filterdir)

pkg_check_modules(ZLIB IMPORTED_TARGET zlib)
set(HAVE_ZLIB ${ZLIB_FOUND})
pkg_check_modules(ZSTD IMPORTED_TARGET libzstd)
set(HAVE_ZSTD ${ZSTD_FOUND})
pkg_check_modules(LIBNBD IMPORTED_TARGET libnbd)
set(HAVE_LIBNBD ${LIBNBD_FOUND})
pkg_check_modules(LIBISCSI IMPORTED_TARGET libiscsi)
set(HAVE_LIBISCSI ${LIBISCSI_FOUND})
# libnfs: the nfs:// storage backend of common/bdev and the nfs plugin.
pkg_check_modules(LIBNFS IMPORTED_TARGET libnfs)
set(HAVE_LIBNFS ${LIBNFS_FOUND})
kvm_dependency(nfs HAVE_LIBNFS "libnfs (libnfs-dev)")

# librbd ships no pkg-config file on Debian.  kvm_librbd: librbd + librados
# (the rbd plugin's external libraries, not an engine of common/).
find_path(RBD_INCLUDE_DIR rbd/librbd.h)
find_library(RBD_LIBRARY rbd)
find_library(RADOS_LIBRARY rados)
if(RBD_INCLUDE_DIR AND RBD_LIBRARY AND RADOS_LIBRARY)
  set(HAVE_RBD TRUE)
  add_library(kvm_librbd INTERFACE)
  target_include_directories(kvm_librbd INTERFACE ${RBD_INCLUDE_DIR})
  target_link_libraries(kvm_librbd INTERFACE ${RBD_LIBRARY} ${RADOS_LIBRARY})
else()
  set(HAVE_RBD FALSE)
endif()

find_package(Threads REQUIRED)

find_program(POD2MAN pod2man)
