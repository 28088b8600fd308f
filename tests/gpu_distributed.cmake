# tests/gpu/test_gpu_distributed.cpp launches kdengine under mpirun with one rank per GPU: the real
# binary for gpu_test_gpu_distributed (label gpu), the emulated one with 2 emulated devices for
# emu_test_gpu_distributed (label emu). Skipped without NCCL in the build (CUDA, MPI and nccl.h).
foreach(t gpu_test_gpu_distributed emu_test_gpu_distributed)
  if(NOT TARGET ${t})
    continue()
  endif()
  if(t MATCHES "^emu_")
    set(bin kdengine_emu)
    target_compile_definitions(${t} PRIVATE KD_EMULATED_GPUS=2)
  else()
    set(bin kdengine)
  endif()
  add_dependencies(${t} ${bin})
  target_compile_definitions(${t} PRIVATE KD_KDENGINE_BIN="$<TARGET_FILE:${bin}>")
  if(NOT KD_HAVE_NCCL)
    target_compile_definitions(${t} PRIVATE KD_BUILT_WITHOUT_NCCL=1)
  endif()
endforeach()
