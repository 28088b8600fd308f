# The GPU tests (tests/gpu) and the emulator's own tests (tools/kdemu/test_*), compiled for and run
# by the CUDA emulator (tools/kdemu/kdemu.cmake), labelled `emu`.
if(NOT TARGET kdcore_emu)
  return()
endif()
# Every GPU test, emulated (emu_test_<name>), and the emulator's own test (emu_test_emu).
file(GLOB KD_EMU_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/gpu/test_*.cu
     ${CMAKE_CURRENT_SOURCE_DIR}/gpu/test_*.cpp ${KD_EMU_DIR}/test_*.cu ${KD_EMU_DIR}/test_*.cpp)
foreach(src ${KD_EMU_TEST_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  kd_emu_rewrite(${src} out)
  add_executable(emu_${name} ${out})
  target_link_libraries(emu_${name} PRIVATE kdcore_emu kd_ops_cpu_ref GTest::gtest_main)
  target_compile_options(emu_${name} PRIVATE ${KD_EMU_FLAGS})
  target_compile_definitions(emu_${name} PRIVATE KD_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  # Idle OpenMP workers of the CPU twins would otherwise spin against the single emulator thread.
  # The prefix keeps the names apart from the same tests' GPU binaries (labelled gpu).
  # Tests that start mpirun jobs run one at a time (RESOURCE_LOCK mpirun, shared with the CPU
  # ranks' tests): a job that aborts on purpose must not share the machine's two cores, and Open
  # MPI's launch, with another job's.
  set(lock "")
  if(name MATCHES "distributed|nccl")
    set(lock RESOURCE_LOCK mpirun)
  endif()
  gtest_discover_tests(emu_${name} DISCOVERY_MODE PRE_TEST TEST_PREFIX "emu:"
                       PROPERTIES LABELS emu ENVIRONMENT OMP_WAIT_POLICY=PASSIVE ${lock})
endforeach()
# The emulator's NCCL test starts itself under mpirun; it needs the emulated NCCL (KD_HAVE_NCCL).
if(TARGET emu_test_emu_nccl AND KD_HAVE_NCCL)
  target_compile_definitions(emu_test_emu_nccl PRIVATE KD_EMU_NCCL=1)
endif()
