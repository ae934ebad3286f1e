# Warnings and sanitizers are set per target, never through CMAKE_CXX_FLAGS, so a project that
# embeds us with add_subdirectory keeps its own flags.

function(pylon_enable_warnings target)
  if(NOT PROJECT_IS_TOP_LEVEL)
    return()
  endif()
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Wconversion -Wsign-conversion -Wshadow -Wnon-virtual-dtor
    -Woverloaded-virtual -Wold-style-cast -Wcast-qual -Wformat=2 -Wimplicit-fallthrough -Wundef)
  if(PYLON_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# PYLON_SANITIZE is a -fsanitize= list ("address,undefined" or "thread"); empty means none.
function(pylon_enable_sanitizers target)
  if(NOT PYLON_SANITIZE OR PYLON_SANITIZE STREQUAL "OFF")
    return()
  endif()
  target_compile_options(${target} PRIVATE -fsanitize=${PYLON_SANITIZE} -fno-sanitize-recover=all
                                           -fno-omit-frame-pointer)
  target_link_options(${target} PUBLIC -fsanitize=${PYLON_SANITIZE})
endfunction()
