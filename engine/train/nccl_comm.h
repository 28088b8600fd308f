// GPU ranks: data-parallel training of the CUDA backend over NCCL (docs/distributed.md, "GPU ranks
// (NCCL)"). The only file that knows NCCL is engine/train/nccl_comm.cpp; MPI (engine/train/comm.h)
// launches the ranks and carries NCCL's unique id from rank 0 to the others.
//
//   one rank per GPU:   select_device() sets the GPU of the node-local rank (before the backend
//                       allocates anything); more ranks on a node than GPUs is an InputError
//   communicator:       rank 0's ncclGetUniqueId -> comm::broadcast -> ncclCommInitRank on every
//   rank the step (StepReducer of backend.h, on the backend's stream):
//     sum_rows, sum_losses   a few host numbers: through MPI, as on the CPU
//     sum_grads              ncclAllReduce (sum, in place) of the fp32 gradient buffer, device
//     memory
//
// The real build loads libnccl.so.2 when the first communicator is created (so kdengine starts on
// a machine without NCCL, and only a multi-rank GPU run needs it); the emulated build
// (tools/kdemu/nccl.cpp) links the emulator's NCCL over MPI instead. A build without NCCL (no CUDA,
// no MPI, or no nccl.h) refuses GPU ranks with a clear error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/train/backend.h"

namespace kd {

// The reducer for `backend` in a job of more than one rank: NCCL for the CUDA backend, MPI
// (comm::MpiStepReducer) for the CPU backend. Collective: every rank must call it, and all ranks
// must have chosen the same backend (InputError naming the ranks otherwise, e.g. run.device =
// "auto" on a job where only some nodes have a GPU).
std::unique_ptr<StepReducer> make_step_reducer(Backend& backend);

namespace nccl {

// Whether this build has the NCCL path.
bool built();

// Loads NCCL (libnccl.so.2, or the emulator's) if not yet loaded and returns its version code
// (ncclGetVersion: 22807 for 2.28.7). Throws InputError when it cannot be loaded or the build has
// no NCCL.
int library_version();

// In a job of more than one rank: sets this process's CUDA device to its node-local rank
// (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID, MPI_LOCALRANKID, else counted from the ranks' host
// names) modulo the visible GPUs, so both "every GPU visible to every rank" and "one GPU bound to
// each rank" work. Collective: two ranks of one node on the same physical GPU (PCI address) is an
// InputError on every rank. Returns the device; -1 in a single-rank job or a build without the
// CUDA backend (nothing is changed). Must run before any CUDA allocation: make_backend calls it.
int select_device();

// The step's collectives on device memory. Creating one creates the NCCL communicator over all
// ranks (collective). The CUDA backend binds its step stream (set_reducer) before the first step;
// every NCCL call is queued on that stream, in order with the step's kernels, without a host
// synchronisation.
class NcclStepReducer final : public StepReducer {
 public:
  NcclStepReducer();
  ~NcclStepReducer() override;
  NcclStepReducer(const NcclStepReducer&) = delete;
  NcclStepReducer& operator=(const NcclStepReducer&) = delete;

  // The backend's cudaStream_t (this header has no CUDA types).
  void bind_stream(void* stream);

  int64_t sum_rows(int64_t local) override;         // host value, through MPI
  void sum_grads(float* grads, size_t n) override;  // device pointer, ncclAllReduce in place
  void sum_losses(LossSums& sums) override;         // host values, through MPI

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nccl
}  // namespace kd
