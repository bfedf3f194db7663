# One function makes every Granary module: a static library `granary_<name>`
# with the alias `granary::<name>`, its public headers (installed under
# include/granary/, included as "<folder>/<file>.hpp"), its private headers
# (never installed, never included by a public header), its protobuf schemas
# and the modules it depends on, publicly or privately.
#
#   granary_add_module(<name>
#     SOURCES <file.cpp ...>
#     PUBLIC_HEADERS <file.hpp ...>
#     [PRIVATE_HEADERS <file.hpp ...>]
#     [PROTOS <file.proto ...>] [PROTO_IMPORT_DIRS <dir ...>]
#     [PUBLIC_DEPS <target ...>] [PRIVATE_DEPS <target ...>]
#     [NO_INSTALL])
#
# Each module also gets a link test, `link.<name>`: an executable that links
# every object of the module (whole archive) against its declared
# dependencies only, so that an undeclared dependency fails to link. The
# layering test (`layering`, cmake/check_layering.cmake) checks the
# includes against the same declarations.

set(GRANARY_MODULE_CMAKE_DIR "${CMAKE_CURRENT_LIST_DIR}")
file(MAKE_DIRECTORY "${PROJECT_BINARY_DIR}/include")
file(CREATE_LINK "${PROJECT_SOURCE_DIR}" "${PROJECT_BINARY_DIR}/include/granary"
     SYMBOLIC)

function(granary_add_module name)
  cmake_parse_arguments(
    m "NO_INSTALL" ""
    "SOURCES;PUBLIC_HEADERS;PRIVATE_HEADERS;PROTOS;PROTO_IMPORT_DIRS;PUBLIC_DEPS;PRIVATE_DEPS"
    ${ARGN})
  if(m_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "granary_add_module(${name}): unknown arguments "
                        "${m_UNPARSED_ARGUMENTS}")
  endif()
  set(target granary_${name})
  file(RELATIVE_PATH dir "${PROJECT_SOURCE_DIR}" "${CMAKE_CURRENT_SOURCE_DIR}")

  add_library(${target} STATIC ${m_SOURCES} ${m_PUBLIC_HEADERS}
                               ${m_PRIVATE_HEADERS} ${m_PROTOS})
  add_library(granary::${name} ALIAS ${target})
  set_target_properties(${target} PROPERTIES EXPORT_NAME ${name}
                                             POSITION_INDEPENDENT_CODE ON)
  # Users write <granary/runtime/silo.hpp>; Granary's own headers include
  # each other as "runtime/silo.hpp". Both resolve in the build tree (the
  # include/granary link to the source tree) and once installed.
  target_include_directories(
    ${target}
    PUBLIC "$<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>"
           "$<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/include>"
           "$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>"
           "$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}/granary>")
  if(m_PROTOS)
    if(m_PROTO_IMPORT_DIRS)
      protobuf_generate(TARGET ${target} LANGUAGE cpp IMPORT_DIRS
                        ${m_PROTO_IMPORT_DIRS})
    else()
      protobuf_generate(TARGET ${target} LANGUAGE cpp)
    endif()
    target_include_directories(
      ${target} PUBLIC "$<BUILD_INTERFACE:${CMAKE_CURRENT_BINARY_DIR}>")
    target_link_libraries(${target} PUBLIC protobuf::libprotobuf)
  endif()
  target_link_libraries(${target} PUBLIC ${m_PUBLIC_DEPS}
                        PRIVATE ${m_PRIVATE_DEPS})

  # What the layering test reads.
  set_property(GLOBAL APPEND PROPERTY GRANARY_MODULES ${name})
  set_property(GLOBAL PROPERTY GRANARY_MODULE_DIR_${name} "${dir}")
  set_property(GLOBAL PROPERTY GRANARY_MODULE_DEPS_${name} ${m_PUBLIC_DEPS}
                                                           ${m_PRIVATE_DEPS})
  set(public "")
  foreach(h IN LISTS m_PUBLIC_HEADERS)
    list(APPEND public "${dir}/${h}")
  endforeach()
  set(private "")
  foreach(f IN LISTS m_PRIVATE_HEADERS m_SOURCES)
    list(APPEND private "${dir}/${f}")
  endforeach()
  set_property(GLOBAL PROPERTY GRANARY_MODULE_PUBLIC_${name} ${public})
  set_property(GLOBAL PROPERTY GRANARY_MODULE_PRIVATE_${name} ${private})
  set(protos "")
  foreach(p IN LISTS m_PROTOS)
    get_filename_component(stem "${p}" NAME_WE)
    list(APPEND protos "${stem}.pb.h")
  endforeach()
  set_property(GLOBAL PROPERTY GRANARY_MODULE_PROTOS_${name} ${protos})

  if(NOT m_NO_INSTALL)
    install(TARGETS ${target} EXPORT granary-targets
            ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
    install(FILES ${m_PUBLIC_HEADERS}
            DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/granary/${dir}
            COMPONENT dev)
    foreach(p IN LISTS m_PROTOS)
      get_filename_component(stem "${p}" NAME_WE)
      install(FILES "${CMAKE_CURRENT_BINARY_DIR}/${stem}.pb.h"
              DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/granary COMPONENT dev)
      install(FILES "${p}" DESTINATION ${CMAKE_INSTALL_DATADIR}/granary/proto
              COMPONENT dev)
    endforeach()
  endif()

  if(GRANARY_BUILD_TESTS)
    add_executable(link_${name} "${GRANARY_MODULE_CMAKE_DIR}/link_test.cpp")
    target_link_libraries(link_${name}
                          PRIVATE "$<LINK_LIBRARY:WHOLE_ARCHIVE,${target}>")
    add_test(NAME link.${name} COMMAND link_${name})
    set_tests_properties(link.${name} PROPERTIES LABELS "unit;link")
  endif()
endfunction()

# Writes the module table for the layering test and registers the test.
# Call once, after every module was added.
function(granary_add_layering_test)
  get_property(modules GLOBAL PROPERTY GRANARY_MODULES)
  set(table "")
  foreach(name IN LISTS modules)
    get_property(dir GLOBAL PROPERTY GRANARY_MODULE_DIR_${name})
    get_property(deps GLOBAL PROPERTY GRANARY_MODULE_DEPS_${name})
    get_property(public GLOBAL PROPERTY GRANARY_MODULE_PUBLIC_${name})
    get_property(private GLOBAL PROPERTY GRANARY_MODULE_PRIVATE_${name})
    get_property(protos GLOBAL PROPERTY GRANARY_MODULE_PROTOS_${name})
    set(mods "")
    foreach(d IN LISTS deps)
      if(d MATCHES "^granary_(.*)$")
        list(APPEND mods "${CMAKE_MATCH_1}")
      elseif(d MATCHES "^granary::(.*)$")
        list(APPEND mods "${CMAKE_MATCH_1}")
      endif()
    endforeach()
    string(REPLACE ";" "," mods "${mods}")
    string(REPLACE ";" "," public "${public}")
    string(REPLACE ";" "," private "${private}")
    string(REPLACE ";" "," protos "${protos}")
    string(APPEND table "${name}|${dir}|${mods}|${public}|${private}|${protos}\n")
  endforeach()
  file(WRITE "${PROJECT_BINARY_DIR}/granary_modules.txt" "${table}")
  if(GRANARY_BUILD_TESTS)
    add_test(
      NAME layering
      COMMAND
        ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR}
        -DMODULES=${PROJECT_BINARY_DIR}/granary_modules.txt -P
        "${GRANARY_MODULE_CMAKE_DIR}/check_layering.cmake")
    set_tests_properties(layering PROPERTIES LABELS "unit;link")
    add_test(NAME readme_code
             COMMAND "${PROJECT_SOURCE_DIR}/scripts/check-readme-code")
    set_tests_properties(readme_code PROPERTIES LABELS unit)
  endif()
endfunction()
