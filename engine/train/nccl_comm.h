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
// shard_optimizer: ZeRO-1 on GPU ranks (NcclStepReducer below).
std::unique_ptr<StepReducer> make_step_reducer(Backend& backend, bool shard_optimizer = false);

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

// ZeRO-1's shard rule: kd::shard_floats (backend.h), the one rule of every backend.
size_t zero1_shard(size_t n, int ranks);

// The step's collectives on device memory. Creating one creates the NCCL communicator over all
// ranks (collective). The CUDA backend binds its communication stream (set_reducer) before the
// first step; every NCCL call is queued on that stream, which the backend orders against its step
// stream with events (the gradient buckets overlap the backward), without a host synchronisation.
//
// shard_optimizer: ZeRO-1. The CUDA backend then keeps only its rank's slice of the fp32 master
// weights and the AdamW moments: it reduce-scatters the gradients, updates its slice and
// all-gathers the bf16 weights (cuda_backend.h).
class NcclStepReducer final : public StepReducer {
 public:
  explicit NcclStepReducer(bool shard_optimizer = false);
  ~NcclStepReducer() override;
  NcclStepReducer(const NcclStepReducer&) = delete;
  NcclStepReducer& operator=(const NcclStepReducer&) = delete;

  // The cudaStream_t the collectives are queued on (this header has no CUDA types).
  void bind_stream(void* stream);
  int rank() const override;
  int size() const override;

  int64_t sum_rows(int64_t local) override;         // host value, through MPI
  void sum_grads(float* grads, size_t n) override;  // device pointer, ncclAllReduce in place
  void sum_losses(LossSums& sums) override;         // host values, through MPI

  // Device memory, queued on the bound stream (finish() waits for them on the host):
  // the sum over the ranks of n doubles, in place;
  void sum_doubles(double* data, size_t n) override;
  // the sum over the ranks of data[begin, end) (end <= size() * shard); afterwards rank r holds the
  // sum in data[max(begin, r * shard), min(end, (r + 1) * shard)), in place; the rest of the range
  // is unspecified. The whole padded buffer (begin 0, end size() * shard) is one
  // ncclReduceScatter; any other range one ncclReduce per rank it touches (in one group);
  void reduce_scatter(float* data, size_t shard, size_t begin, size_t end) override;
  // rank r's bytes [r * shard_bytes, min(total_bytes, (r + 1) * shard_bytes)) to every rank, in
  // place (total_bytes <= size() * shard_bytes): one ncclAllGather when total_bytes equals
  // size() * shard_bytes, else one ncclBroadcast per rank (in one group).
  void all_gather(void* data, size_t shard_bytes, size_t total_bytes) override;
  // Waits until everything queued so far has completed (synchronises the stream).
  void finish() override;
  // Aborts the communicator (ncclCommAbort): the collectives in flight end without completing, so
  // the streams that wait on them drain. For a rank that gives up on a lost peer; the reducer is
  // unusable afterwards.
  void abort();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nccl
}  // namespace kd
