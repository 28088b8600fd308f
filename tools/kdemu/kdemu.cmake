# kdemu: the CUDA kernels compiled as C++ and run on the CPU (see emu.h and docs/emulator.md), with
# the model and train layers built a second time over them (kd_model_emu, kd_train_emu). Included
# by the top-level CMakeLists.txt when the CUDA toolkit is there; needs its headers, not a GPU or
# nvcc's output. The emulated tests are registered by tests/emu.cmake.
if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64)$")
  message(STATUS "kdemu: skipped (its fiber switch is written for x86-64)")
  return()
endif()
find_program(KD_PERL perl REQUIRED)

set(KD_EMU_DIR ${CMAKE_CURRENT_LIST_DIR})
set(KD_EMU_GEN ${CMAKE_BINARY_DIR}/emu_gen)
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
target_link_libraries(kdcuda_emu PUBLIC kd_base kdemu)
target_compile_options(kdcuda_emu PRIVATE ${KD_EMU_FLAGS} ${KD_WARNINGS})

# The model and train layers, as built with the CUDA backend, over the emulated kernels and runtime,
# and (with NCCL: CUDA, MPI and NCCL's header found) over the emulated NCCL: nccl.cpp, NCCL's
# collectives carried by MPI between the ranks' host-resident "device" buffers.
if(KD_HAVE_NCCL)
  add_library(kdemu_nccl STATIC ${KD_EMU_DIR}/nccl.cpp)
  target_include_directories(kdemu_nccl PRIVATE ${KD_NCCL_INCLUDE})
  target_link_libraries(kdemu_nccl PUBLIC kdemu MPI::MPI_CXX)
  target_compile_definitions(kdemu_nccl PRIVATE KD_CUDA_EMU=1)
  target_compile_options(kdemu_nccl PRIVATE ${KD_WARNINGS})
  kd_upper_layers(_emu kdcuda_emu kdemu_nccl)
else()
  kd_upper_layers(_emu kdcuda_emu)
endif()
add_library(kdcore_emu INTERFACE)
target_link_libraries(kdcore_emu INTERFACE kd_train_emu)
# kdengine over the emulator: the command line the emulated multi-rank tests launch under mpirun.
add_executable(kdengine_emu ${CMAKE_SOURCE_DIR}/engine/cli/main.cpp)
target_include_directories(kdengine_emu PRIVATE ${CMAKE_BINARY_DIR}/generated)
target_link_libraries(kdengine_emu PRIVATE kd_train_emu)
target_compile_options(kdengine_emu PRIVATE ${KD_WARNINGS})
