// Which backend can run here. Any error from cudaGetDeviceCount means "no GPU": the engine then
// works on the CPU. Binaries never link the CUDA driver library, so they start on machines without
// one.
#pragma once

#include <string>

namespace kd {

struct DeviceInfo {
  bool cuda_usable = false;
  int device_count = 0;
  std::string name;    // GPU name, when usable
  std::string reason;  // why not, when not usable
};

// Probes once per process and caches the answer.
const DeviceInfo& probe_device();

}  // namespace kd
