// GPU ranks over NCCL (see nccl_comm.h). The only file that knows NCCL.
#include "engine/train/nccl_comm.h"

#include <unistd.h>

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

std::unique_ptr<StepReducer> make_step_reducer(Backend& backend) {
  const bool gpu = std::string(backend.name()) == "cuda";
  const std::vector<uint64_t> all = comm::allgather(gpu ? 1 : 0);
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0])
      throw InputError("rank 0 trains on the " + std::string(all[0] ? "cuda" : "cpu") +
                       " backend but rank " + std::to_string(r) + " on the " +
                       (all[r] ? "cuda" : "cpu") +
                       " one: every rank must use the same device (set run.device to \"cpu\" or "
                       "\"cuda\" instead of \"auto\", or give every node a GPU)");
  if (!gpu) return std::make_unique<comm::MpiStepReducer>();
  return std::make_unique<nccl::NcclStepReducer>();
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

#ifdef KD_WITH_NCCL

namespace {

// NCCL's entry points. The real build resolves them in libnccl.so.2 when the first communicator is
// created (the loader's search path first: LD_LIBRARY_PATH, e.g. PyTorch's NCCL wheel; then the
// library CMake found); the emulated build takes the emulator's.
struct Api {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclGetLastError) last_error = nullptr;
  decltype(&ncclGetVersion) get_version = nullptr;
};

const Api& api() {
  static const Api a = [] {
    Api x;
#ifdef KD_NCCL_LINKED
    x.get_unique_id = &ncclGetUniqueId;
    x.comm_init_rank = &ncclCommInitRank;
    x.comm_destroy = &ncclCommDestroy;
    x.comm_abort = &ncclCommAbort;
    x.all_reduce = &ncclAllReduce;
    x.error_string = &ncclGetErrorString;
    x.last_error = &ncclGetLastError;
    x.get_version = &ncclGetVersion;
#else
    void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) lib = dlopen(KD_NCCL_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
      throw InputError(std::string("data-parallel training on GPUs needs NCCL, and libnccl.so.2 "
                                   "could not be loaded (") +
                       dlerror() +
                       "); add the folder holding it to LD_LIBRARY_PATH (the CUDA toolkit's "
                       "lib64, or the nvidia/nccl/lib folder of PyTorch's NCCL package)");
    auto sym = [&](auto& f, const char* name) {
      f = reinterpret_cast<std::remove_reference_t<decltype(f)> >(dlsym(lib, name));
      if (f == nullptr)
        throw InputError(std::string("libnccl.so.2 has no ") + name +
                         ": NCCL 2.19 or newer needed");
    };
    sym(x.get_unique_id, "ncclGetUniqueId");
    sym(x.comm_init_rank, "ncclCommInitRank");
    sym(x.comm_destroy, "ncclCommDestroy");
    sym(x.comm_abort, "ncclCommAbort");
    sym(x.all_reduce, "ncclAllReduce");
    sym(x.error_string, "ncclGetErrorString");
    sym(x.last_error, "ncclGetLastError");
    sym(x.get_version, "ncclGetVersion");
#endif
    return x;
  }();
  return a;
}

}  // namespace

int library_version() {
  int v = 0;
  if (api().get_version(&v) != ncclSuccess) throw std::runtime_error("ncclGetVersion failed");
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
    std::string msg =
        "rank " + std::to_string(comm::rank()) + ": " + what + " failed: " + a.error_string(r);
    const char* last = a.last_error(comm);
    if (last != nullptr && *last != '\0') msg += std::string(" (") + last + ")";
    throw std::runtime_error(msg + "; NCCL_DEBUG=WARN (or INFO) says more");
  }
};

NcclStepReducer::NcclStepReducer() : impl_(std::make_unique<Impl>()) {
  const Api& a = api();
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (comm::is_root()) impl_->check(a.get_unique_id(&id), "ncclGetUniqueId");
  comm::broadcast(&id, sizeof id);
  impl_->check(a.comm_init_rank(&impl_->comm, comm::size(), id, comm::rank()), "ncclCommInitRank");
}

NcclStepReducer::~NcclStepReducer() {
  if (impl_->comm == nullptr) return;
  // After an exception the step stream may still hold queued collectives that other ranks will
  // never join: abort instead of waiting for them.
  if (std::uncaught_exceptions() > 0)
    api().comm_abort(impl_->comm);
  else
    api().comm_destroy(impl_->comm);
}

void NcclStepReducer::bind_stream(void* stream) {
  impl_->stream = static_cast<cudaStream_t>(stream);
  impl_->bound = true;
}

// The row count and the loss sums are a few host numbers (the step's one synchronisation has
// already brought the sums to the host): MPI, with the CPU ranks' `comm` ranges.
int64_t NcclStepReducer::sum_rows(int64_t local) {
  return comm::MpiStepReducer().sum_rows(local);
}

void NcclStepReducer::sum_grads(float* grads, size_t n) {
  KD_REQUIRE(impl_->bound, "NcclStepReducer::sum_grads before bind_stream");
  KD_RANGE_P("comm_grads", Phase::Comm, static_cast<int64_t>(n));
  impl_->check(api().all_reduce(grads, grads, n, ncclFloat32, ncclSum, impl_->comm, impl_->stream),
               "ncclAllReduce of the gradients");
}

void NcclStepReducer::sum_losses(LossSums& sums) {
  comm::MpiStepReducer().sum_losses(sums);
}

#else  // no NCCL in this build

int library_version() {
  throw InputError("this kdengine was built without NCCL");
}

struct NcclStepReducer::Impl {};

NcclStepReducer::NcclStepReducer() {
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

#endif

}  // namespace nccl
}  // namespace kd
