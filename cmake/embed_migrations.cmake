# Embeds migrations/<dialect>/NNNN_<name>.sql into a C++ fragment at build time, so the library
# carries its schema and a deployment has no .sql files to lose. The fragment is a list of
#   {NNNN, "NNNN_<name>.sql", R"pylon_sql(<file contents>)pylon_sql"},
# initialisers, sorted by version, that session_backend.cpp includes inside an array.
#
# Usable two ways: pylon_embed_migrations() from CMakeLists.txt, or as a script (relative paths
# are taken from the working directory); scripts/amalgamate.sh runs it so, from the top of the
# repository:
#   cmake -DDIALECT=sqlite -DSOURCE_DIR=migrations/sqlite -DOUTPUT=pylon_migrations_sqlite.inc \
#         -P cmake/embed_migrations.cmake
# To build without CMake, use the one-file amalgamation (amalgamation/, see the README).

function(pylon_write_migrations_fragment source_dir output)
  file(GLOB sql_files RELATIVE ${source_dir} ${source_dir}/*.sql)
  list(SORT sql_files)
  # The comment names migrations/<dialect>, never an absolute path: the amalgamation embeds the
  # fragment and must not depend on where the repository is checked out.
  get_filename_component(dialect_dir "${source_dir}" NAME)
  set(fragment "// Generated from migrations/${dialect_dir} by cmake/embed_migrations.cmake. Do not edit.\n")
  set(expected 1)
  foreach(file IN LISTS sql_files)
    if(NOT file MATCHES "^([0-9][0-9][0-9][0-9])_[a-z0-9_]+\\.sql$")
      message(FATAL_ERROR "migration ${source_dir}/${file}: name must be NNNN_snake_case.sql")
    endif()
    math(EXPR version "${CMAKE_MATCH_1}")
    if(NOT version EQUAL expected)
      message(FATAL_ERROR "migration ${source_dir}/${file}: expected version ${expected}; "
                          "versions must start at 1 and have no gaps")
    endif()
    math(EXPR expected "${expected} + 1")
    file(READ ${source_dir}/${file} sql)
    string(FIND "${sql}" ")pylon_sql\"" clash)
    if(NOT clash EQUAL -1)
      message(FATAL_ERROR "migration ${source_dir}/${file} contains the raw-string delimiter")
    endif()
    string(APPEND fragment "{${version}, \"${file}\", R\"pylon_sql(${sql})pylon_sql\"},\n")
  endforeach()
  if(expected EQUAL 1)
    message(FATAL_ERROR "no migrations found in ${source_dir}")
  endif()
  # Rewrite only on change, so an unrelated reconfigure does not rebuild the library.
  if(EXISTS ${output})
    file(READ ${output} previous)
  endif()
  if(NOT "${previous}" STREQUAL "${fragment}")
    file(WRITE ${output} "${fragment}")
  endif()
endfunction()

if(CMAKE_SCRIPT_MODE_FILE)
  get_filename_component(SOURCE_DIR "${SOURCE_DIR}" ABSOLUTE)  # from the working directory
  get_filename_component(OUTPUT "${OUTPUT}" ABSOLUTE)  # from the working directory
  pylon_write_migrations_fragment(${SOURCE_DIR} ${OUTPUT})
  return()
endif()

set(PYLON_EMBED_MIGRATIONS_SCRIPT ${CMAKE_CURRENT_LIST_FILE})

function(pylon_embed_migrations dialect output)
  set(source_dir ${PROJECT_SOURCE_DIR}/migrations/${dialect})
  file(GLOB sql_files CONFIGURE_DEPENDS ${source_dir}/*.sql)
  add_custom_command(
    OUTPUT ${output}
    COMMAND ${CMAKE_COMMAND} -DDIALECT=${dialect} -DSOURCE_DIR=${source_dir} -DOUTPUT=${output}
            -P ${PYLON_EMBED_MIGRATIONS_SCRIPT}
    DEPENDS ${sql_files} ${PYLON_EMBED_MIGRATIONS_SCRIPT}
    COMMENT "Embedding ${dialect} migrations"
    VERBATIM)
endfunction()
