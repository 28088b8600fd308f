// Between the emulator's parts (engine, runtime, cuBLASLt); not seen by the emulated code.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace emu {

void set_last_error(cudaError_t e);
// Emulated devices: KDEMU_DEVICES of them (default 1); the one cudaSetDevice chose.
int device_count();
int current_device();
void set_current_device(int d);
void count_launch();
bool is_shared(const void* p, size_t bytes);
void set_max_dynamic_smem(const void* kernel, int bytes);
[[noreturn]] void kernel_fatal(const std::string& what);
// True when [p, p + bytes) lies inside one live device allocation.
bool is_device_range(const void* p, size_t bytes);

}  // namespace emu
