#include "engine/train/device.h"

#ifdef KD_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kd {

static DeviceInfo probe_once() {
  DeviceInfo info;
#ifdef KD_WITH_CUDA
  int n = 0;  // not written on error
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    info.reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error
    return info;
  }
  if (n <= 0) {
    info.reason = "no CUDA device found";
    return info;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) info.name = prop.name;
  info.cuda_usable = true;
  info.device_count = n;
#else
  info.reason = "built without the CUDA backend (KD_CUDA=OFF or no nvcc)";
#endif
  return info;
}

const DeviceInfo& probe_device() {
  static const DeviceInfo info = probe_once();
  return info;
}

}  // namespace kd
