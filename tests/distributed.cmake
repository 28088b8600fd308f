# test_distributed launches the kdengine binary under mpirun (skipped where mpirun is absent, or
# where kdengine is built without MPI).
if(TARGET test_distributed)
  add_dependencies(test_distributed kdengine)
  target_compile_definitions(test_distributed PRIVATE KD_KDENGINE_BIN="$<TARGET_FILE:kdengine>")
  # A second "build" for the mismatched-binaries test: the trainer under another build identity.
  add_executable(kd_other_build ${CMAKE_CURRENT_SOURCE_DIR}/other_build_main.cpp)
  target_link_libraries(kd_other_build PRIVATE kdcore)
  target_compile_options(kd_other_build PRIVATE ${KD_WARNINGS})
  add_dependencies(test_distributed kd_other_build)
  target_compile_definitions(test_distributed PRIVATE
                             KD_OTHER_BUILD_BIN="$<TARGET_FILE:kd_other_build>")
  if(NOT KD_HAVE_MPI)
    target_compile_definitions(test_distributed PRIVATE KD_BUILT_WITHOUT_MPI=1)
  endif()
endif()
