# kdemu: the CUDA kernels and the GPU tests, compiled as C++ and run on the CPU by the emulator in
# tests/emu (see tests/emu/emu.h). Labelled `emu`; needs the CUDA headers, not a GPU or nvcc's output.
if(NOT KD_HAVE_CUDA)
  return()
endif()
if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64)$")
  message(STATUS "kdemu: skipped (its fiber switch is written for x86-64)")
  return()
endif()
find_program(KD_PERL perl REQUIRED)

set(KD_EMU_DIR ${CMAKE_CURRENT_SOURCE_DIR}/emu)
set(KD_EMU_GEN ${CMAKE_CURRENT_BINARY_DIR}/emu_gen)
file(MAKE_DIRECTORY ${KD_EMU_GEN})

# Rewrites a CUDA source for the emulator; sets ${out_var} to the generated .cpp.
function(kd_emu_rewrite src out_var)
  get_filename_component(base ${src} NAME)
  get_filename_component(dir ${src} DIRECTORY)
  get_filename_component(dir ${dir} NAME)
  set(out ${KD_EMU_GEN}/${dir}_${base}.cpp)
  add_custom_command(OUTPUT ${out}
                     COMMAND ${KD_PERL} ${KD_EMU_DIR}/rewrite.pl ${src} ${out}
                     DEPENDS ${src} ${KD_EMU_DIR}/rewrite.pl
                     COMMENT "kdemu: rewriting ${dir}/${base}" VERBATIM)
  set(${out_var} ${out} PARENT_SCOPE)
endfunction()

add_library(kdemu STATIC ${KD_EMU_DIR}/emu.cpp ${KD_EMU_DIR}/runtime.cpp ${KD_EMU_DIR}/cublaslt.cpp)
target_include_directories(kdemu PUBLIC ${CMAKE_SOURCE_DIR} ${CUDAToolkit_INCLUDE_DIRS}
                                 ${OpenBLAS_INCLUDE_DIRS})
target_link_libraries(kdemu PUBLIC ${OpenBLAS_LIBRARIES})
target_compile_definitions(kdemu PRIVATE KD_CUDA_EMU=1)
target_compile_options(kdemu PRIVATE ${KD_WARNINGS})

# `#pragma unroll` is nvcc's; g++ ignores it.
# CUDA code reinterprets registers freely (uint4 as bf16 pairs); nvcc allows it, g++ needs
# -fno-strict-aliasing for it. blockDim is unsigned, as in CUDA, where nvcc does not warn.
set(KD_EMU_FLAGS -DKD_CUDA_EMU=1 -include ${KD_EMU_DIR}/emu.h -fno-strict-aliasing -Wno-unknown-pragmas -Wno-sign-compare)

file(GLOB KD_EMU_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/cuda/*.cu)
set(KD_EMU_CUDA_GEN)
foreach(src ${KD_EMU_CUDA_SOURCES})
  kd_emu_rewrite(${src} out)
  list(APPEND KD_EMU_CUDA_GEN ${out})
endforeach()
add_library(kdcuda_emu STATIC ${KD_EMU_CUDA_GEN})
target_link_libraries(kdcuda_emu PUBLIC kdemu)
target_compile_options(kdcuda_emu PRIVATE ${KD_EMU_FLAGS} ${KD_WARNINGS})

# The engine and model, as built with the CUDA backend, over the emulated kernels and runtime.
add_library(kdcore_emu STATIC ${KD_CORE_SOURCES})
target_include_directories(kdcore_emu PUBLIC ${CMAKE_SOURCE_DIR} ${OpenBLAS_INCLUDE_DIRS})
target_compile_definitions(kdcore_emu PUBLIC KD_WITH_CUDA=1)
target_link_libraries(kdcore_emu PUBLIC kdcuda_emu ${OpenBLAS_LIBRARIES} OpenMP::OpenMP_CXX
                                        tomlplusplus::tomlplusplus Threads::Threads ${CMAKE_DL_LIBS})
target_compile_options(kdcore_emu PRIVATE ${KD_WARNINGS})

# Every GPU test, emulated (emu_test_<name>), and the emulator's own test (emu_test_emu).
file(GLOB KD_EMU_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/gpu/test_*.cu
     ${CMAKE_CURRENT_SOURCE_DIR}/gpu/test_*.cpp ${KD_EMU_DIR}/test_*.cu ${KD_EMU_DIR}/test_*.cpp)
foreach(src ${KD_EMU_TEST_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  kd_emu_rewrite(${src} out)
  add_executable(emu_${name} ${out})
  target_link_libraries(emu_${name} PRIVATE kdcore_emu GTest::gtest_main)
  target_compile_options(emu_${name} PRIVATE ${KD_EMU_FLAGS})
  target_compile_definitions(emu_${name} PRIVATE KD_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  # Idle OpenMP workers of the CPU twins would otherwise spin against the single emulator thread.
  # The prefix keeps the names apart from the same tests' GPU binaries (labelled gpu).
  gtest_discover_tests(emu_${name} DISCOVERY_MODE PRE_TEST TEST_PREFIX "emu:"
                       PROPERTIES LABELS emu ENVIRONMENT OMP_WAIT_POLICY=PASSIVE)
endforeach()
