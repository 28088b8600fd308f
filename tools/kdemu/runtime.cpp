// The CUDA runtime calls the project makes, on host memory, for the emulated build. Everything is
// synchronous: a stream is a name, an event a host timestamp. Device buffers come from mmap with a
// guard page right after their last byte (rounded up to 16) and start filled with 0xFF.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "tools/kdemu/emu.h"
#include "tools/kdemu/emu_internal.h"

namespace emu {
namespace {

struct Allocation {
  void* map;
  size_t map_bytes;
  size_t bytes;
};

struct Runtime {
  std::mutex mu;
  std::map<const char*, Allocation> device;  // keyed by the returned pointer
  size_t device_bytes = 0;
  cudaError_t last = cudaSuccess;
  RuntimeCounts counts;
};

Runtime& rt() {
  static Runtime* r = new Runtime();
  return *r;
}

constexpr size_t kTotalMemory = size_t{80} << 30;

struct Event {
  std::chrono::steady_clock::time_point t;
  bool recorded = false;
};

cudaError_t fail(cudaError_t e, const char* what) {
  std::fprintf(stderr, "kdemu: %s\n", what);
  rt().last = e;
  return e;
}

cudaError_t device_alloc(void** p, size_t bytes) {
  if (p == nullptr) return fail(cudaErrorInvalidValue, "cudaMalloc: null result pointer");
  const size_t page = static_cast<size_t>(getpagesize());
  const size_t used = (std::max<size_t>(bytes, 1) + 15) / 16 * 16;
  const size_t data_pages = (used + page - 1) / page * page;
  void* m =
      mmap(nullptr, data_pages + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return fail(cudaErrorMemoryAllocation, "cudaMalloc: out of host memory");
  mprotect(static_cast<char*>(m) + data_pages, page, PROT_NONE);
  char* ptr = static_cast<char*>(m) + data_pages - used;
  std::memset(ptr, 0xFF, used);
  std::lock_guard<std::mutex> lock(rt().mu);
  rt().device[ptr] = Allocation{m, data_pages + page, bytes};
  rt().device_bytes += bytes;
  *p = ptr;
  return cudaSuccess;
}

cudaError_t device_free(void* p) {
  if (p == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(rt().mu);
  auto it = rt().device.find(static_cast<const char*>(p));
  if (it == rt().device.end())
    return fail(cudaErrorInvalidValue, "cudaFree: not a pointer from cudaMalloc");
  munmap(it->second.map, it->second.map_bytes);
  rt().device_bytes -= it->second.bytes;
  rt().device.erase(it);
  return cudaSuccess;
}

cudaError_t check_copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  if (n == 0) return cudaSuccess;
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (dst_dev && !is_device_range(dst, n))
    return fail(cudaErrorInvalidValue, "cudaMemcpy: destination range is not inside one buffer");
  if (src_dev && !is_device_range(src, n))
    return fail(cudaErrorInvalidValue, "cudaMemcpy: source range is not inside one buffer");
  std::memmove(dst, src, n);
  return cudaSuccess;
}

}  // namespace

int device_count() {
  static const int n = [] {
    const char* s = std::getenv("KDEMU_DEVICES");
    return s != nullptr && std::atoi(s) > 0 ? std::atoi(s) : 1;
  }();
  return n;
}

namespace {
int g_device = 0;
}
int current_device() {
  return g_device;
}
void set_current_device(int d) {
  g_device = d;
}

void set_last_error(cudaError_t e) {
  rt().last = e;
}

void count_launch() {
  ++rt().counts.launches;
}

RuntimeCounts runtime_counts() {
  return rt().counts;
}

// Host pointers are anything that is not inside a device allocation; device ones must lie inside
// one allocation.
bool is_device_range(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(rt().mu);
  const char* c = static_cast<const char*>(p);
  auto it = rt().device.upper_bound(c);
  if (it == rt().device.begin()) return false;
  --it;
  return c + bytes <= it->first + it->second.bytes;
}

}  // namespace emu

using emu::fail;

extern "C" {

// KDEMU_DEVICES (default 1) emulated devices, all the same host memory; cudaSetDevice only
// records the choice (the emulated NCCL reads it to refuse two ranks on one device, as NCCL does).
cudaError_t cudaGetDeviceCount(int* count) {
  *count = emu::device_count();
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = emu::current_device();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= emu::device_count())
    return fail(cudaErrorInvalidDevice, "cudaSetDevice: no such device");
  emu::set_current_device(device);
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device < 0 || device >= emu::device_count())
    return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties: no such device");
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "kdemu (CPU emulation, sm_90 limits)");
  p->totalGlobalMem = emu::kTotalMemory;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = 227 * 1024;
  p->sharedMemPerMultiprocessor = 228 * 1024;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 132;
  p->l2CacheSize = 50 << 20;
  p->maxThreadsPerMultiProcessor = 2048;
  p->memoryBusWidth = 5120;
  p->pciBusID = device + 1;  // one PCI address per emulated device
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
  ++emu::rt().counts.host_syncs;
  return emu::rt().last;
}
cudaError_t cudaGetLastError(void) {
  const cudaError_t e = emu::rt().last;
  emu::rt().last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) {
  return emu::rt().last;
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error (kdemu)";
    case cudaErrorInvalidValue:
      return "invalid argument (kdemu)";
    case cudaErrorMemoryAllocation:
      return "out of memory (kdemu)";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument (kdemu)";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal (kdemu)";
    default:
      return "error (kdemu)";
  }
}
const char* cudaGetErrorName(cudaError_t e) {
  return cudaGetErrorString(e);
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  ++emu::rt().counts.mallocs;
  return emu::device_alloc(p, bytes);
}
cudaError_t cudaFree(void* p) {
  ++emu::rt().counts.frees;
  return emu::device_free(p);
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  ++emu::rt().counts.async_mallocs;
  return emu::device_alloc(p, bytes);
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  ++emu::rt().counts.async_frees;
  return emu::device_free(p);
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::malloc(std::max<size_t>(bytes, 1));
  return *p != nullptr ? cudaSuccess : fail(cudaErrorMemoryAllocation, "cudaMallocHost failed");
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  *total = emu::kTotalMemory;
  *free_bytes = emu::kTotalMemory - emu::rt().device_bytes;
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  ++emu::rt().counts.host_syncs;
  return emu::check_copy(dst, src, n, kind);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t) {
  return emu::check_copy(dst, src, n, kind);
}
cudaError_t cudaMemset(void* p, int value, size_t n) {
  if (n > 0 && !emu::is_device_range(p, n))
    return fail(cudaErrorInvalidValue, "cudaMemset: range is not inside one device buffer");
  std::memset(p, value, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t) {
  return cudaMemset(p, value, n);
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = reinterpret_cast<cudaStream_t>(new char(0));
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  return cudaStreamCreate(s);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<char*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  ++emu::rt().counts.host_syncs;
  return emu::rt().last;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new emu::Event());
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) {
  return cudaEventCreate(e);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<emu::Event*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  auto* ev = reinterpret_cast<emu::Event*>(e);
  ev->t = std::chrono::steady_clock::now();
  ev->recorded = true;
  return cudaSuccess;
}
// Every stream runs synchronously, so whatever an event marks has completed when another stream
// is told to wait for it: only the order of the calls is checked.
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned int) {
  if (e == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: no event");
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  ++emu::rt().counts.host_syncs;
  return cudaSuccess;
}
// KDEMU_STALL_AFTER_QUERIES=n, for tests of a hung GPU: after n queries have found their event
// complete, every query reports cudaErrorNotReady, as if the device had stopped making progress
// (a synchronisation still returns: the emulator has no work to wait for).
cudaError_t cudaEventQuery(cudaEvent_t) {
  static const long long stall_after = [] {
    const char* v = std::getenv("KDEMU_STALL_AFTER_QUERIES");
    return v != nullptr ? std::atoll(v) : -1LL;
  }();
  static long long answered = 0;
  if (stall_after >= 0 && answered >= stall_after) return cudaErrorNotReady;
  ++answered;
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  auto* a = reinterpret_cast<emu::Event*>(start);
  auto* b = reinterpret_cast<emu::Event*>(end);
  if (!a->recorded || !b->recorded)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: event not recorded");
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > 227 * 1024)
      return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: dynamic shared memory > 227 KiB");
    emu::set_max_dynamic_smem(func, value);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int) {
  static char dummy;
  *pool = reinterpret_cast<cudaMemPool_t>(&dummy);
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) {
  return cudaSuccess;
}

}  // extern "C"
