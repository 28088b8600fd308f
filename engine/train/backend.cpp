// The backend factory and what every backend shares.
#include "engine/train/backend.h"

#include <algorithm>
#include <ostream>
#include <string>

#include "engine/base/error.h"
#include "engine/train/cuda_backend.h"
#include "engine/train/device.h"
#include "engine/train/nccl_comm.h"

namespace kd {

std::unique_ptr<Backend> make_cpu_backend(GPT2& student, const GPT2* teacher,
                                          const LossConfig& loss, const AdamWConfig& adamw,
                                          const StepShape& shape);  // cpu_backend.cpp

size_t shard_floats(size_t n, int ranks) {
  KD_REQUIRE(ranks >= 1, "shard_floats: ranks must be >= 1");
  const size_t per = (n + size_t(ranks) - 1) / size_t(ranks);
  return (per + 15) / 16 * 16;
}

ShardRange shard_range(size_t n, int ranks, int rank) {
  KD_REQUIRE(rank >= 0 && rank < ranks, "shard_range: rank outside [0, ranks)");
  const size_t shard = shard_floats(n, ranks);
  ShardRange r;
  r.begin = std::min(n, size_t(rank) * shard);
  r.end = std::min(n, r.begin + shard);
  return r;
}

void Backend::report_memory() const {
  const MemoryPlan p = memory_plan();
  profiler::memory_set(Mem::Weights, p.weights);
  profiler::memory_set(Mem::MasterWeights, p.master_weights);
  profiler::memory_set(Mem::Gradients, p.gradients);
  profiler::memory_set(Mem::OptimizerMoments, p.moments);
  profiler::memory_set(Mem::Activations, p.activations);
  profiler::memory_set(Mem::TeacherWeights, p.teacher_weights);
  profiler::memory_set(Mem::TeacherScratch, p.teacher_scratch);
  profiler::memory_set(Mem::LossWorkspace, p.loss_workspace);
  profiler::memory_set(Mem::Other, p.other);
}

void Backend::set_reducer(StepReducer* reducer) {
  if (reducer != nullptr)
    throw InputError(std::string("data-parallel training (several ranks) is implemented for the "
                                 "cpu backend only, not for ") +
                     name() + "; set run.device = \"cpu\" or run a single process");
}

namespace {

// Why the CUDA kernels cannot run this pair of models ("" when they can), in the recipe's terms.
std::string cuda_unsupported(const GPT2Config& student, const GPT2Config* teacher) {
  for (const GPT2Config* c : {&student, teacher}) {
    if (c == nullptr) continue;
    const int hs = c->n_embd / c->n_head;
    if (hs != 64 && hs != 128)
      return std::string(c == &student ? "[student]" : "[teacher]") +
             " n_embd / n_head = " + std::to_string(hs) +
             ": the CUDA attention kernel supports head sizes 64 and 128";
  }
  return "";
}

}  // namespace

std::unique_ptr<Backend> make_backend(Device device, GPT2& student, const GPT2* teacher,
                                      const LossConfig& loss, const AdamWConfig& adamw,
                                      const StepShape& shape, std::ostream& out) {
  if (device == Device::Cpu) return make_cpu_backend(student, teacher, loss, adamw, shape);
  const DeviceInfo& dev = probe_device();
  if (!dev.cuda_usable) {
    if (device == Device::Cuda)
      throw InputError("[run] device = \"cuda\" but no GPU is usable here: " + dev.reason);
    out << "device: cpu (" << dev.reason << ")\n";
    return make_cpu_backend(student, teacher, loss, adamw, shape);
  }
  const std::string why =
      cuda_unsupported(student.config(), teacher ? &teacher->config() : nullptr);
  if (!why.empty()) {
    if (device == Device::Cuda) throw InputError(why + " (use the CPU, or change n_head)");
    out << "device: cpu (" << why << ")\n";
    return make_cpu_backend(student, teacher, loss, adamw, shape);
  }
#ifdef KD_WITH_CUDA
  nccl::select_device();  // a multi-rank job: the node-local rank's GPU, before any allocation
  out << "device: cuda (" << dev.name << ")\n";
  return std::make_unique<CudaBackend>(student, teacher, loss, adamw, shape);
#else
  // probe_device() never reports a usable GPU in a build without the CUDA backend.
  throw ContractError("make_backend: a usable GPU in a build without the CUDA backend");
#endif
}

MemoryPlan memory_plan_for(Device device, const GPT2Config& student, const GPT2Config* teacher,
                           const StepShape& shape) {
#ifdef KD_WITH_CUDA
  if (device == Device::Cuda || (device == Device::Auto && probe_device().cuda_usable))
    return cuda_memory_plan(student, teacher, shape);
#else
  (void)device;
#endif
  return cpu_memory_plan(student, teacher, shape);
}

}  // namespace kd
