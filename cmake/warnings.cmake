# Compiler warnings for all first-party C code. Documented in CONTRIBUTING.md.
set(MC_WARNING_FLAGS
  -Wall -Wextra -Wpedantic
  -Wshadow                 # a local hiding another is nearly always a bug here
  -Wstrict-prototypes -Wmissing-prototypes  # every non-static function is declared
  -Wformat=2 -Wformat-overflow=2 -Wundef
  -Wcast-qual -Wcast-align -Wpointer-arith
  -Wvla                    # no variable-length arrays: sizes come from files
  -Wnull-dereference -Wwrite-strings -Wold-style-definition
  -Wswitch-enum -Wsign-compare
  -Wimplicit-fallthrough)
if(CMAKE_C_COMPILER_ID STREQUAL "GNU")
  list(REMOVE_ITEM MC_WARNING_FLAGS -Wformat-overflow=2)
  list(APPEND MC_WARNING_FLAGS -Wformat-overflow=2 -Wlogical-op -Wduplicated-cond -Wduplicated-branches)
else()
  list(REMOVE_ITEM MC_WARNING_FLAGS -Wformat-overflow=2)
endif()
if(MC_WERROR)
  list(APPEND MC_WARNING_FLAGS -Werror)
endif()
