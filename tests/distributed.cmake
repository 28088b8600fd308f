# test_distributed launches the kdengine binary under mpirun (skipped where mpirun is absent).
if(TARGET test_distributed)
  add_dependencies(test_distributed kdengine)
  target_compile_definitions(test_distributed PRIVATE KD_KDENGINE_BIN="$<TARGET_FILE:kdengine>")
endif()
