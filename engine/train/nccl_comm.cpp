// GPU ranks over NCCL (see nccl_comm.h). The only file that knows NCCL.
#include "engine/train/nccl_comm.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/trace.h"
#include "engine/train/comm.h"
#include "engine/train/device.h"

#ifdef KD_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/common.cuh"
#endif
#ifdef KD_WITH_NCCL
#include <dlfcn.h>
#include <nccl.h>
#endif

namespace kd {

std::unique_ptr<StepReducer> make_step_reducer(Backend& backend, bool shard_optimizer) {
  const bool gpu = std::string(backend.name()) == "cuda";
  const std::vector<uint64_t> all = comm::allgather(gpu ? 1 : 0);
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0])
      throw InputError("rank 0 trains on the " + std::string(all[0] ? "cuda" : "cpu") +
                       " backend but rank " + std::to_string(r) + " on the " +
                       (all[r] ? "cuda" : "cpu") +
                       " one: every rank must use the same device (set run.device to \"cpu\" or "
                       "\"cuda\" instead of \"auto\", or give every node a GPU)");
  if (!gpu) return std::make_unique<comm::MpiStepReducer>(shard_optimizer);
  return std::make_unique<nccl::NcclStepReducer>(shard_optimizer);
}

namespace nccl {

#ifdef KD_WITH_CUDA
namespace {

// The node-local rank from the launcher's environment (Open MPI, Slurm, MPICH/Hydra), or -1.
int local_rank_from_env() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"})
    if (const char* s = std::getenv(v)) return std::atoi(s);
  return -1;
}

// Every rank's host (a hash of its name), indexed by rank (collective).
std::vector<uint64_t> hosts() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return comm::allgather(std::hash<std::string>{}(host));
}

}  // namespace
#endif

bool built() {
#ifdef KD_WITH_NCCL
  return true;
#else
  return false;
#endif
}

int select_device() {
  if (comm::size() == 1) return -1;
#ifdef KD_WITH_CUDA
  const int me = comm::rank();
  const std::vector<uint64_t> host = hosts();
  int counted = 0;  // the ranks before this one on its node
  for (int r = 0; r < me; ++r) counted += host[size_t(r)] == host[size_t(me)];
  const int env = local_rank_from_env();
  const int local = env >= 0 ? env : counted;
  const DeviceInfo& dev = probe_device();
  if (!dev.cuda_usable)
    throw InputError("rank " + std::to_string(me) + ": no GPU is usable: " + dev.reason);
  // local % count: every GPU of the node visible to every rank (count = ranks per node), or one
  // GPU per rank (a launcher that binds each rank to its own GPU: count = 1). Two ranks of a node
  // on one physical GPU (same PCI address) are refused on every rank.
  const int device = local % dev.device_count;
  cudaDeviceProp prop{};
  KD_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  const uint64_t pci = (uint64_t(uint32_t(prop.pciDomainID)) << 32) |
                       (uint64_t(uint32_t(prop.pciBusID)) << 8) | uint64_t(prop.pciDeviceID & 0xff);
  const std::vector<uint64_t> gpu = comm::allgather(pci);
  for (int a = 0; a < comm::size(); ++a)
    for (int b = 0; b < a; ++b)
      if (host[size_t(a)] == host[size_t(b)] && gpu[size_t(a)] == gpu[size_t(b)]) {
        int on_node = 0;  // ranks on the node of a and b
        for (uint64_t h : host) on_node += h == host[size_t(a)];
        throw InputError(
            "rank " + std::to_string(me) + ": ranks " + std::to_string(b) + " and " +
            std::to_string(a) + " would share one GPU: " + std::to_string(on_node) +
            " ranks on their node but " + std::to_string(dev.device_count) +
            (dev.device_count == 1 ? " GPU" : " GPUs") +
            " visible: start one rank per GPU (mpirun -np <GPUs per node x nodes>, srun "
            "--ntasks-per-node=<GPUs per node>), with every GPU visible to every rank or one GPU "
            "bound to each rank");
      }
  KD_CUDA_CHECK(cudaSetDevice(device));
  return device;
#else
  return -1;
#endif
}

size_t zero1_shard(size_t n, int ranks) {
  return shard_floats(n, ranks);
}

#ifdef KD_WITH_NCCL

namespace {

// NCCL's entry points. The real build resolves them in libnccl.so.2 when the first communicator is
// created (the loader's search path first: LD_LIBRARY_PATH, e.g. PyTorch's NCCL wheel; then the
// library CMake found); the emulated build takes the emulator's. api().ncclX is ::ncclX.
#define KD_NCCL_CALLS(X)                                                                \
  X(ncclGetVersion)                                                                     \
  X(ncclGetUniqueId)                                                                    \
  X(ncclCommInitRank)                                                                   \
  X(ncclCommDestroy)                                                                    \
  X(ncclCommAbort)                                                                      \
  X(ncclGetErrorString)                                                                 \
  X(ncclGetLastError)                                                                   \
  X(ncclAllReduce) X(ncclReduceScatter) X(ncclAllGather) X(ncclReduce) X(ncclBroadcast) \
      X(ncclGroupStart) X(ncclGroupEnd)

struct Api {
#define KD_NCCL_FIELD(f) decltype(&::f) f = nullptr;
  KD_NCCL_CALLS(KD_NCCL_FIELD)
#undef KD_NCCL_FIELD
};

const Api& api() {
  static const Api a = [] {
    Api x;
#ifdef KD_NCCL_LINKED
#define KD_NCCL_LINK(f) x.f = &::f;
    KD_NCCL_CALLS(KD_NCCL_LINK)
#undef KD_NCCL_LINK
#else
    void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) lib = dlopen(KD_NCCL_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
      throw InputError(std::string("data-parallel training on GPUs needs NCCL, and libnccl.so.2 "
                                   "could not be loaded (") +
                       dlerror() +
                       "); add the folder holding it to LD_LIBRARY_PATH (the CUDA toolkit's "
                       "lib64, or the nvidia/nccl/lib folder of PyTorch's NCCL package)");
#define KD_NCCL_DLSYM(f)                                  \
  x.f = reinterpret_cast<decltype(&::f)>(dlsym(lib, #f)); \
  if (x.f == nullptr)                                     \
    throw InputError(std::string("libnccl.so.2 has no " #f ": NCCL 2.19 or newer needed"));
    KD_NCCL_CALLS(KD_NCCL_DLSYM)
#undef KD_NCCL_DLSYM
#endif
    return x;
  }();
  return a;
}

}  // namespace

int library_version() {
  int v = 0;
  if (api().ncclGetVersion(&v) != ncclSuccess) throw std::runtime_error("ncclGetVersion failed");
  return v;
}

struct NcclStepReducer::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  bool bound = false;

  // Throws std::runtime_error naming the rank, the call and NCCL's own message.
  void check(ncclResult_t r, const char* what) const {
    if (r == ncclSuccess) return;
    const Api& a = api();
    std::string msg = "rank " + std::to_string(comm::rank()) + ": " + what +
                      " failed: " + a.ncclGetErrorString(r);
    const char* last = a.ncclGetLastError(comm);
    if (last != nullptr && *last != '\0') msg += std::string(" (") + last + ")";
    throw std::runtime_error(msg + "; NCCL_DEBUG=WARN (or INFO) says more");
  }
};

NcclStepReducer::NcclStepReducer(bool shard_optimizer)
    : StepReducer(shard_optimizer), impl_(std::make_unique<Impl>()) {
  const Api& a = api();
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (comm::is_root()) impl_->check(a.ncclGetUniqueId(&id), "ncclGetUniqueId");
  comm::broadcast(&id, sizeof id);
  impl_->check(a.ncclCommInitRank(&impl_->comm, comm::size(), id, comm::rank()),
               "ncclCommInitRank");
}

NcclStepReducer::~NcclStepReducer() {
  if (impl_->comm == nullptr) return;
  // After an exception the step stream may still hold queued collectives that other ranks will
  // never join: abort instead of waiting for them.
  if (std::uncaught_exceptions() > 0)
    api().ncclCommAbort(impl_->comm);
  else
    api().ncclCommDestroy(impl_->comm);
}

void NcclStepReducer::bind_stream(void* stream) {
  impl_->stream = static_cast<cudaStream_t>(stream);
  impl_->bound = true;
}

// The row count and the loss sums are a few host numbers (the step's one synchronisation has
// already brought the sums to the host): MPI, with the CPU ranks' `comm` ranges.
int64_t NcclStepReducer::sum_rows(int64_t local) {
  return comm::MpiStepReducer(false).sum_rows(local);
}

int NcclStepReducer::rank() const {
  return comm::rank();
}
int NcclStepReducer::size() const {
  return comm::size();
}

void NcclStepReducer::sum_grads(float* grads, size_t n) {
  KD_REQUIRE(impl_->bound, "NcclStepReducer::sum_grads before bind_stream");
  KD_RANGE_P("comm_grads", Phase::Comm, static_cast<int64_t>(n));
  impl_->check(
      api().ncclAllReduce(grads, grads, n, ncclFloat32, ncclSum, impl_->comm, impl_->stream),
      "ncclAllReduce of the gradients");
}

void NcclStepReducer::sum_losses(LossSums& sums) {
  comm::MpiStepReducer(false).sum_losses(sums);
}

void NcclStepReducer::sum_doubles(double* data, size_t n) {
  KD_REQUIRE(impl_->bound, "NcclStepReducer::sum_doubles before bind_stream");
  KD_RANGE_P("comm_doubles", Phase::Comm, static_cast<int64_t>(n));
  impl_->check(api().ncclAllReduce(data, data, n, ncclFloat64, ncclSum, impl_->comm, impl_->stream),
               "ncclAllReduce of doubles");
}

void NcclStepReducer::reduce_scatter(float* data, size_t shard, size_t begin, size_t end) {
  KD_REQUIRE(impl_->bound, "NcclStepReducer::reduce_scatter before bind_stream");
  const size_t ranks = static_cast<size_t>(size());
  KD_REQUIRE(begin <= end && end <= ranks * shard,
             "NcclStepReducer::reduce_scatter: range beyond size() * shard");
  KD_RANGE_P("comm_grads", Phase::Comm, static_cast<int64_t>(end - begin));
  const Api& a = api();
  if (begin == 0 && end == ranks * shard) {
    impl_->check(a.ncclReduceScatter(data, data + size_t(rank()) * shard, shard, ncclFloat32,
                                     ncclSum, impl_->comm, impl_->stream),
                 "ncclReduceScatter of the gradients");
    return;
  }
  // Any other range: rank q receives the sum of its part of it (one reduce to each owner).
  impl_->check(a.ncclGroupStart(), "ncclGroupStart");
  for (size_t q = 0; q < ranks; ++q) {
    const size_t b = std::max(begin, q * shard), e = std::min(end, (q + 1) * shard);
    if (b >= e) continue;
    impl_->check(a.ncclReduce(data + b, data + b, e - b, ncclFloat32, ncclSum, int(q), impl_->comm,
                              impl_->stream),
                 "ncclReduce of a gradient range");
  }
  impl_->check(a.ncclGroupEnd(), "ncclGroupEnd");
}

void NcclStepReducer::all_gather(void* data, size_t shard_bytes, size_t total_bytes) {
  KD_REQUIRE(impl_->bound, "NcclStepReducer::all_gather before bind_stream");
  const size_t ranks = static_cast<size_t>(size());
  KD_REQUIRE(total_bytes <= ranks * shard_bytes,
             "NcclStepReducer::all_gather: total_bytes beyond size() * shard_bytes");
  KD_RANGE_P("comm_params", Phase::Comm, static_cast<int64_t>(total_bytes));
  const Api& a = api();
  char* bytes = static_cast<char*>(data);
  if (total_bytes == ranks * shard_bytes) {
    impl_->check(a.ncclAllGather(bytes + size_t(rank()) * shard_bytes, bytes, shard_bytes,
                                 ncclUint8, impl_->comm, impl_->stream),
                 "ncclAllGather of the parameters");
    return;
  }
  impl_->check(a.ncclGroupStart(), "ncclGroupStart");
  for (size_t q = 0; q < ranks; ++q) {
    const size_t b = std::min(total_bytes, q * shard_bytes);
    const size_t e = std::min(total_bytes, b + shard_bytes);
    if (b >= e) continue;
    impl_->check(
        a.ncclBroadcast(bytes + b, bytes + b, e - b, ncclUint8, int(q), impl_->comm, impl_->stream),
        "ncclBroadcast of a parameter slice");
  }
  impl_->check(a.ncclGroupEnd(), "ncclGroupEnd");
}

void NcclStepReducer::finish() {
  KD_REQUIRE(impl_->bound, "NcclStepReducer::finish before bind_stream");
  KD_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

void NcclStepReducer::abort() {
  if (impl_->comm == nullptr) return;
  api().ncclCommAbort(impl_->comm);
  impl_->comm = nullptr;
}

#else  // no NCCL in this build

int library_version() {
  throw InputError("this kdengine was built without NCCL");
}

struct NcclStepReducer::Impl {};

NcclStepReducer::NcclStepReducer(bool shard_optimizer) : StepReducer(shard_optimizer) {
  throw InputError(
      "data-parallel training on GPUs needs NCCL, and this kdengine was built without it (it needs "
      "the CUDA backend, MPI and the CUDA toolkit's nccl.h); set run.device = \"cpu\" or run a "
      "single process");
}
NcclStepReducer::~NcclStepReducer() = default;
void NcclStepReducer::bind_stream(void*) {}
int64_t NcclStepReducer::sum_rows(int64_t local) {
  return local;
}
void NcclStepReducer::sum_grads(float*, size_t) {}
void NcclStepReducer::sum_losses(LossSums&) {}
int NcclStepReducer::rank() const {
  return 0;
}
int NcclStepReducer::size() const {
  return 1;
}
void NcclStepReducer::sum_doubles(double*, size_t) {}
void NcclStepReducer::reduce_scatter(float*, size_t, size_t, size_t) {}
void NcclStepReducer::all_gather(void*, size_t, size_t) {}
void NcclStepReducer::finish() {}
void NcclStepReducer::abort() {}

#endif

}  // namespace nccl
}  // namespace kd
