// kdemu's execution engine: blocks one after another, the threads of a block as fibers, barriers
// and warp-collectives as scheduling points. See tools/kdemu/emu.h for what it checks.
#include "tools/kdemu/emu.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "tools/kdemu/emu_internal.h"

namespace emu {

dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

enum class State { Ready, AtBlock, AtWarp, Done };

// Context switch (x86-64 System V): pushes the callee-saved registers and the SSE/x87 control
// words on the current stack, stores the stack pointer in *from, continues on `to`. No system
// call, unlike swapcontext, which saves the signal mask on every switch.
extern "C" void kdemu_switch(void** from, void* to);
asm(R"(
.text
.globl kdemu_switch
.type kdemu_switch, @function
kdemu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size kdemu_switch, .-kdemu_switch
.section .note.GNU-stack, "", @progbits
.text
)");

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  Thread t;
  State st = State::Ready;
  unsigned long long seq = 0;       // warp exchanges made (selects the double buffer)
  unsigned mask = 0;                // mask of the pending warp-collective
  const char* site_file = nullptr;  // source position of the pending __syncthreads
  int site_line = 0;
  char* stack = nullptr;
};

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kStaticSmemLimit = 48 * 1024;
constexpr size_t kOptinSmemLimit = 227 * 1024;

struct Engine {
  std::vector<Fiber> fibers;
  void* main_sp = nullptr;
  Fiber* cur = nullptr;
  const std::function<void()>* body = nullptr;
  const char* kernel = "";
  std::vector<unsigned char> smem = std::vector<unsigned char>(kOptinSmemLimit + kStaticSmemLimit);
  size_t smem_dynamic = 0;
  size_t smem_static = 0;
  unsigned long long epoch = 0;
  std::vector<unsigned char> warp_posts;  // [warp][2][32][kSlot]
  std::mt19937 rng{20261202u};
  std::map<const void*, int> max_dynamic_smem;  // cudaFuncSetAttribute
  bool in_kernel = false;
  struct Stats {
    long long launches = 0, blocks = 0, fibers = 0;
    double seconds = 0;
  };
  std::map<std::string, Stats> stats;  // KDEMU_STATS=1: per kernel, printed at exit
};

Engine& engine() {
  static Engine* e = new Engine();  // never destroyed: kernels may run from static destructors
  return *e;
}

[[noreturn]] void fatal(const std::string& what) {
  Engine& e = engine();
  if (e.in_kernel && e.cur != nullptr) {
    const Thread& t = e.cur->t;
    std::fprintf(stderr, "kdemu: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s\n", e.kernel,
                 t.bid.x, t.bid.y, t.bid.z, t.tid.x, t.tid.y, t.tid.z, what.c_str());
  } else {
    std::fprintf(stderr, "kdemu: kernel %s: %s\n", e.kernel, what.c_str());
  }
  std::fflush(stderr);
  std::abort();
}

void on_segv(int, siginfo_t* info, void*) {
  Engine& e = engine();
  if (e.in_kernel && e.cur != nullptr) {
    const Thread& t = e.cur->t;
    std::fprintf(stderr,
                 "kdemu: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): invalid memory access at "
                 "%p (past the end of a device buffer, a freed buffer, or a wild pointer)\n",
                 e.kernel, t.bid.x, t.bid.y, t.bid.z, t.tid.x, t.tid.y, t.tid.z, info->si_addr);
  } else {
    std::fprintf(stderr, "kdemu: invalid memory access at %p outside any kernel\n", info->si_addr);
  }
  std::fflush(stderr);
  signal(SIGSEGV, SIG_DFL);
  std::abort();
}

void install_segv_reporter() {
  static bool done = false;
  if (done) return;
  done = true;
  static std::vector<char> alt(1 << 16);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
}

bool stats_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("KDEMU_STATS");
    if (v == nullptr || std::string(v) != "1") return false;
    std::atexit([] {
      std::fprintf(stderr, "kdemu: %-44s %9s %11s %13s %9s\n", "kernel", "launches", "blocks",
                   "threads", "seconds");
      for (const auto& [name, st] : engine().stats)
        std::fprintf(stderr, "kdemu: %-44s %9lld %11lld %13lld %9.3f\n", name.c_str(), st.launches,
                     st.blocks, st.fibers, st.seconds);
    });
    return true;
  }();
  return on;
}

// Where a new fiber starts (kdemu_switch returns into it); it never returns.
[[noreturn]] void fiber_entry() {
  Engine& e = engine();
  (*e.body)();
  e.cur->st = State::Done;
  kdemu_switch(&e.cur->sp, e.main_sp);
  std::abort();  // a finished fiber is never resumed
}

// A stack laid out as if kdemu_switch had been called from fiber_entry's caller: control words,
// six zeroed registers, then fiber_entry as the return address (with a dummy slot above it so
// that fiber_entry starts with the stack alignment of a called function).
// `color` shifts the top of the stack by whole cache lines: stacks are a power-of-two-ish stride
// apart, and without the shift every fiber's top frame would fall in the same cache set.
void* initial_stack(char* stack, int color) {
  uintptr_t top =
      reinterpret_cast<uintptr_t>(stack + kStackBytes - 64 * (color % 127)) & ~uintptr_t{15};
  auto* slot = reinterpret_cast<uint64_t*>(top);
  slot[-1] = 0;
  slot[-2] = reinterpret_cast<uint64_t>(&fiber_entry);
  for (int i = 3; i <= 8; ++i) slot[-i] = 0;
  uint32_t mxcsr;
  uint16_t fcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  slot[-9] = mxcsr | static_cast<uint64_t>(fcw) << 32;
  return &slot[-9];
}

void yield(State s) {
  Engine& e = engine();
  Fiber* f = e.cur;
  f->st = s;
  kdemu_switch(&f->sp, e.main_sp);
}

std::string state_report(const Engine& e) {
  std::string r;
  for (const Fiber& f : e.fibers) {
    const char* s = f.st == State::AtBlock  ? "__syncthreads"
                    : f.st == State::AtWarp ? "a warp collective"
                    : f.st == State::Done   ? "exited"
                                            : "ready";
    r += "\n  thread " + std::to_string(f.t.linear) + " (warp " + std::to_string(f.t.warp) +
         "): " + s;
    if (r.size() > 4000) {
      r += "\n  ...";
      break;
    }
  }
  return r;
}

void run_block(Engine& e, uint3 bid) {
  ++e.epoch;
  e.smem_static = 0;
  std::memset(e.smem.data(), 0xFF, e.smem_dynamic);  // static storage is poisoned as it is placed
  const int n = static_cast<int>(e.fibers.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = e.fibers[i];
    f.t.bid = bid;
    f.t.linear = i;
    f.t.tid = uint3{static_cast<unsigned>(i) % g_block_dim.x,
                    static_cast<unsigned>(i) / g_block_dim.x % g_block_dim.y,
                    static_cast<unsigned>(i) / (g_block_dim.x * g_block_dim.y)};
    f.t.lane = i % 32;
    f.t.warp = i / 32;
    f.st = State::Ready;
    f.seq = 0;
    f.sp = initial_stack(f.stack, i);
  }
  // Between two block barriers the warps run one after another, in an order drawn afresh each
  // time, each warp until all its lanes wait at the barrier (or have ended); inside a warp the
  // lanes run in random order between collectives. So one warp can finish a whole interval before
  // another starts it: a missing __syncthreads then shows up as wrong results.
  const int warps = (n + 31) / 32;
  std::vector<std::vector<Fiber*>> ready(warps);
  for (Fiber& f : e.fibers) ready[f.t.warp].push_back(&f);
  std::vector<int> order(warps);
  for (int w = 0; w < warps; ++w) order[w] = w;
  // Per warp: lanes not ended, and lanes waiting at a collective; the warp is released when the
  // two are equal.
  std::vector<int> live(warps, 0), waiting(warps, 0);
  for (int i = 0; i < n; ++i) ++live[i / 32];
  auto release_warp = [&](int w) {
    unsigned mask = 0;
    for (int l = 0; l < 32 && w * 32 + l < n; ++l)
      if (e.fibers[w * 32 + l].st != State::Done) mask |= 1u << l;
    for (int l = 0; l < 32 && w * 32 + l < n; ++l) {
      Fiber& f = e.fibers[w * 32 + l];
      if (f.st != State::AtWarp) continue;
      if ((f.mask & mask) != mask) {
        e.cur = &f;
        fatal("warp collective with mask " + std::to_string(f.mask) +
              " while other lanes of the warp are live (partial masks are not emulated)");
      }
      f.st = State::Ready;
      ready[w].push_back(&f);
    }
    waiting[w] = 0;
  };
  for (;;) {
    std::shuffle(order.begin(), order.end(), e.rng);
    for (int w : order) {
      std::vector<Fiber*>& r = ready[w];
      while (!r.empty()) {
        const size_t pick = std::uniform_int_distribution<size_t>(0, r.size() - 1)(e.rng);
        Fiber* f = r[pick];
        r[pick] = r.back();
        r.pop_back();
        e.cur = f;
        kdemu_switch(&e.main_sp, f->sp);
        e.cur = nullptr;
        if (f->st == State::AtWarp) ++waiting[w];
        if (f->st == State::Done) --live[w];
        if (waiting[w] > 0 && waiting[w] == live[w]) release_warp(w);
      }
    }
    bool all_done = true, all_at_block = true;
    for (const Fiber& f : e.fibers) {
      if (f.st != State::Done) all_done = false;
      if (f.st != State::Done && f.st != State::AtBlock) all_at_block = false;
    }
    if (all_done) return;
    if (!all_at_block)
      fatal("deadlock in block (" + std::to_string(bid.x) + "," + std::to_string(bid.y) + "," +
            std::to_string(bid.z) + "): threads wait at different barriers" + state_report(e));
    const Fiber* first = nullptr;
    for (const Fiber& f : e.fibers) {
      if (f.st != State::AtBlock) continue;
      if (first == nullptr) first = &f;
      if (f.site_line != first->site_line || std::strcmp(f.site_file, first->site_file) != 0)
        fatal("deadlock in block (" + std::to_string(bid.x) + "," + std::to_string(bid.y) + "," +
              std::to_string(bid.z) + "): threads wait at different __syncthreads() (" +
              first->site_file + ":" + std::to_string(first->site_line) + " and " + f.site_file +
              ":" + std::to_string(f.site_line) + "): a barrier in divergent code");
    }
    for (Fiber& f : e.fibers)
      if (f.st == State::AtBlock) {
        f.st = State::Ready;
        ready[f.t.warp].push_back(&f);
      }
  }
}

}  // namespace

Thread& self() {
  Engine& e = engine();
  if (e.cur == nullptr) fatal("a CUDA built-in (threadIdx, a barrier) used outside a kernel");
  return e.cur->t;
}

// The source position, not the code address: the compiler may duplicate one barrier call (loop
// unrolling, tail duplication), and threads at the copies are still at the same barrier.
void syncthreads(const char* file, int line) {
  engine().cur->site_file = file;
  engine().cur->site_line = line;
  yield(State::AtBlock);
}

void syncwarp(unsigned mask) {
  engine().cur->mask = mask;
  yield(State::AtWarp);
}

const unsigned char* warp_exchange(unsigned mask, const void* v, size_t bytes) {
  Engine& e = engine();
  Fiber* f = e.cur;
  if (bytes > kSlot) fatal("warp exchange of more than 64 bytes");
  const size_t half = static_cast<size_t>(f->t.warp * 2 + (f->seq & 1)) * 32 * kSlot;
  std::memcpy(&e.warp_posts[half + f->t.lane * kSlot], v, bytes);
  ++f->seq;
  f->mask = mask;
  yield(State::AtWarp);
  return &e.warp_posts[half];
}

void* SharedSite::get_bytes(size_t bytes, size_t align) {
  Engine& e = engine();
  if (epoch_ != e.epoch) {
    size_t off = (e.smem_dynamic + e.smem_static + align - 1) / align * align;
    e.smem_static = off + bytes - e.smem_dynamic;
    if (e.smem_static > kStaticSmemLimit)
      fatal("static shared memory above 48 KiB (" + std::to_string(e.smem_static) + " bytes)");
    ptr_ = e.smem.data() + off;
    std::memset(ptr_, 0xFF, bytes);
    epoch_ = e.epoch;
  }
  return ptr_;
}

void* dynamic_shared_bytes() {
  return engine().smem.data();
}

bool is_shared(const void* p, size_t bytes) {
  const Engine& e = engine();
  const unsigned char* c = static_cast<const unsigned char*>(p);
  return c >= e.smem.data() && c + bytes <= e.smem.data() + e.smem.size();
}

void set_max_dynamic_smem(const void* kernel, int bytes) {
  engine().max_dynamic_smem[kernel] = bytes;
}

[[noreturn]] void kernel_fatal(const std::string& what) {
  fatal(what);
}

void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem,
              const std::function<void()>& body) {
  Engine& e = engine();
  e.kernel = name;
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
    std::fprintf(stderr, "kdemu: kernel %s: invalid launch grid (%u,%u,%u) block (%u,%u,%u)\n",
                 name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
    set_last_error(cudaErrorInvalidConfiguration);
    return;
  }
  size_t limit = kStaticSmemLimit;
  if (auto it = e.max_dynamic_smem.find(kernel); it != e.max_dynamic_smem.end())
    limit = static_cast<size_t>(it->second);
  if (smem > limit) {
    std::fprintf(stderr,
                 "kdemu: kernel %s: %zu bytes of dynamic shared memory requested, %zu allowed "
                 "(above 48 KiB needs cudaFuncSetAttribute(MaxDynamicSharedMemorySize))\n",
                 name, smem, limit);
    set_last_error(cudaErrorInvalidValue);
    return;
  }
  install_segv_reporter();
  count_launch();
  // Stacks are mapped once and kept (a guard page below each turns an overflow into the segv
  // report); launches with fewer threads use the first ones.
  static std::vector<char*> stacks;
  while (stacks.size() < threads) {
    void* m = mmap(nullptr, kStackBytes + getpagesize(), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) fatal("cannot map fiber stacks");
    mprotect(m, getpagesize(), PROT_NONE);
    stacks.push_back(static_cast<char*>(m) + getpagesize());
  }
  e.fibers.resize(threads);
  for (size_t i = 0; i < threads; ++i) e.fibers[i].stack = stacks[i];
  e.warp_posts.assign((threads + 31) / 32 * 2 * 32 * kSlot, 0xFF);
  g_block_dim = block;
  g_grid_dim = grid;
  e.smem_dynamic = (smem + 15) / 16 * 16;
  e.body = &body;
  e.in_kernel = true;
  const auto t0 = std::chrono::steady_clock::now();
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) run_block(e, uint3{x, y, z});
  e.in_kernel = false;
  if (stats_enabled()) {
    Engine::Stats& st = e.stats[name];
    st.launches += 1;
    st.blocks += 1ll * grid.x * grid.y * grid.z;
    st.fibers += 1ll * grid.x * grid.y * grid.z * threads;
    st.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  e.body = nullptr;
}

}  // namespace emu

// ---- tensor-core helpers
// -------------------------------------------------------------------------
namespace kd::cuda::mma {

namespace {
float lo_bf16(uint32_t r) {
  return std::bit_cast<float>(r << 16);
}
float hi_bf16(uint32_t r) {
  return std::bit_cast<float>(r & 0xFFFF0000u);
}
uint16_t bits_of(const __nv_bfloat16* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return b;
}
uint32_t pack_bits(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
}
}  // namespace

void cp_async_16(void* smem, const void* gmem, bool valid) {
  if (!emu::is_shared(smem, 16)) emu::kernel_fatal("cp.async destination is not shared memory");
  if ((reinterpret_cast<uintptr_t>(smem) | reinterpret_cast<uintptr_t>(gmem)) & 15)
    emu::kernel_fatal("cp.async with an address that is not 16-byte aligned");
  if (valid)
    std::memcpy(smem, gmem, 16);
  else
    std::memset(smem, 0, 16);
}

// ldmatrix .x4: lanes 8i..8i+7 give the row addresses of matrix i; lane l receives in r[i] row l/4,
// elements 2(l%4), 2(l%4)+1 (with .trans: rows 2(l%4), 2(l%4)+1 of column l/4).
static void ldmatrix(uint32_t (&r)[4], const __nv_bfloat16* p, bool trans) {
  if (!emu::is_shared(p, 16)) emu::kernel_fatal("ldmatrix row address is not shared memory");
  if (reinterpret_cast<uintptr_t>(p) & 15)
    emu::kernel_fatal("ldmatrix row address is not 16-byte aligned");
  const unsigned char* posts = emu::warp_exchange(0xffffffffu, &p, sizeof p);
  auto row = [posts](int lane) {
    const __nv_bfloat16* q;
    std::memcpy(&q, posts + lane * emu::kSlot, sizeof q);
    return q;
  };
  const int l = emu::self().lane;
  for (int i = 0; i < 4; ++i) {
    if (!trans) {
      const __nv_bfloat16* q = row(8 * i + l / 4);
      r[i] = pack_bits(bits_of(q + 2 * (l % 4)), bits_of(q + 2 * (l % 4) + 1));
    } else {
      const __nv_bfloat16* q0 = row(8 * i + 2 * (l % 4));
      const __nv_bfloat16* q1 = row(8 * i + 2 * (l % 4) + 1);
      r[i] = pack_bits(bits_of(q0 + l / 4), bits_of(q1 + l / 4));
    }
  }
}
void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p) {
  ldmatrix(r, p, false);
}
void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p) {
  ldmatrix(r, p, true);
}

// d += A (16 x 16) B (16 x 8), fragments as documented in cuda/mma.cuh.
void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct Post {
    uint32_t a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  const unsigned char* posts = emu::warp_exchange(0xffffffffu, &mine, sizeof mine);
  Post all[32];
  for (int l = 0; l < 32; ++l) std::memcpy(&all[l], posts + l * emu::kSlot, sizeof(Post));
  auto A = [&all](int r, int c) {
    const uint32_t reg = all[4 * (r % 8) + (c % 8) / 2].a[(r >= 8 ? 1 : 0) + (c >= 8 ? 2 : 0)];
    return c % 2 == 0 ? lo_bf16(reg) : hi_bf16(reg);
  };
  auto B = [&all](int k, int n) {
    const uint32_t reg = all[4 * n + (k % 8) / 2].b[k >= 8 ? 1 : 0];
    return k % 2 == 0 ? lo_bf16(reg) : hi_bf16(reg);
  };
  const int l = emu::self().lane, g = l / 4, q = l % 4;
  const int rows[4] = {g, g, g + 8, g + 8};
  const int cols[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
  for (int i = 0; i < 4; ++i) {
    float s = 0.0f;
    for (int k = 0; k < 16; ++k) s += A(rows[i], k) * B(k, cols[i]);
    d[i] += s;
  }
}

}  // namespace kd::cuda::mma
