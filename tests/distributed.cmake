# test_distributed launches the kdengine binary under mpirun (skipped where mpirun is absent, or
# where kdengine is built without MPI).
if(TARGET test_distributed)
  add_dependencies(test_distributed kdengine)
  target_compile_definitions(test_distributed PRIVATE KD_KDENGINE_BIN="$<TARGET_FILE:kdengine>")
  if(NOT KD_HAVE_MPI)
    target_compile_definitions(test_distributed PRIVATE KD_BUILT_WITHOUT_MPI=1)
  endif()
endif()
