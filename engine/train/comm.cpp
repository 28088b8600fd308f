#include "engine/train/comm.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <deque>
#include <stdexcept>
#include <thread>

#include "engine/base/error.h"
#include "engine/base/trace.h"

#if KD_WITH_MPI
#include <mpi.h>
#endif

namespace kd::comm {

namespace {

// The environment an MPI launcher gives its ranks: Open MPI's mpirun, PMI-1/2 (MPICH, Slurm's srun
// --mpi=pmi2) and PMIx (srun --mpi=pmix).
bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

[[maybe_unused]] int launcher_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"})
    if (const char* s = std::getenv(v)) return std::atoi(s);
  return 1;
}

int g_rank = 0, g_size = 1;
bool g_active = false;  // MPI initialised by init() and not yet finalised
double g_timeout_s = 300;
int64_t g_step = 0;

#if KD_WITH_MPI
using Clock = std::chrono::steady_clock;

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw std::runtime_error(std::string("MPI ") + what + " failed");
}

// Large buffers go in chunks: MPI counts are int.
template <class F>
void chunked(size_t n, F f) {
  constexpr size_t kMax = size_t(1) << 30;
  for (size_t off = 0; off < n; off += kMax) f(off, int(std::min(kMax, n - off)));
}

int as_count(size_t n, const char* what) {
  if (n > size_t(INT_MAX))
    throw std::runtime_error(std::string(what) + ": more than INT_MAX elements in one piece");
  return int(n);
}

// ---- Arrival records (comm.h): which rank did not arrive at a collective.

constexpr int kRecordTag = 4242;  // the records' tag; collectives do not use tags
constexpr size_t kHistory = 1024;

struct Arrival {
  const char* what = "";
  int64_t step = 0;
};
uint64_t g_seq = 0;           // collectives this rank has arrived at
Arrival g_history[kHistory];  // g_history[seq % kHistory]: what collective number seq was
struct Send {
  MPI_Request req = MPI_REQUEST_NULL;
  uint64_t value = 0;  // the buffer of req: must not move (std::deque keeps elements in place)
};
std::deque<Send> g_sends;
std::vector<MPI_Request> g_recv;  // one posted receive per other rank
std::vector<uint64_t> g_recv_buf;
std::vector<uint64_t> g_latest;               // the highest count each rank has told us
std::vector<Clock::time_point> g_heard;       // when we last heard from it
std::vector<uint64_t> g_sent_to, g_got_from;  // records sent to / received from each rank

void post_recv(int q) {
  check(MPI_Irecv(&g_recv_buf[q], 1, MPI_UINT64_T, q, kRecordTag, MPI_COMM_WORLD, &g_recv[q]),
        "MPI_Irecv");
}

void start_records() {
  const size_t n = size_t(g_size);
  g_recv.assign(n, MPI_REQUEST_NULL);
  g_recv_buf.assign(n, 0);
  g_latest.assign(n, 0);
  g_heard.assign(n, Clock::now());
  g_sent_to.assign(n, 0);
  g_got_from.assign(n, 0);
  for (int q = 0; q < g_size; ++q)
    if (q != g_rank) post_recv(q);
}

// Tells every other rank this rank's count (on arrival, and as a heartbeat while waiting).
void tell_peers() {
  for (int q = 0; q < g_size; ++q) {
    if (q == g_rank) continue;
    Send& s = g_sends.emplace_back();
    s.value = g_seq;
    check(MPI_Isend(&s.value, 1, MPI_UINT64_T, q, kRecordTag, MPI_COMM_WORLD, &s.req), "MPI_Isend");
    ++g_sent_to[size_t(q)];
  }
  while (!g_sends.empty()) {  // small messages: they complete at once, in order
    int done = 0;
    check(MPI_Test(&g_sends.front().req, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (!done) break;
    g_sends.pop_front();
  }
}

// Reads every record that has come in.
void drain_records() {
  for (int q = 0; q < g_size; ++q) {
    if (q == g_rank) continue;
    for (;;) {
      int done = 0;
      check(MPI_Test(&g_recv[q], &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (!done) break;
      ++g_got_from[size_t(q)];
      g_latest[q] = std::max(g_latest[q], g_recv_buf[q]);
      g_heard[q] = Clock::now();
      post_recv(q);
    }
  }
}

void arrive(const char* what) {
  ++g_seq;
  g_history[g_seq % kHistory] = {what, g_step};
  tell_peers();
  drain_records();
}

std::string describe(uint64_t seq) {
  if (seq == 0) return "no collective yet";
  if (seq > g_seq || g_seq - seq >= kHistory) return "collective #" + std::to_string(seq);
  const Arrival& a = g_history[seq % kHistory];
  return std::string(a.what) + " of step " + std::to_string(a.step);
}

// The deadline passed: name the rank that is missing, from the records.
[[noreturn]] void lost() {
  drain_records();
  const auto now = Clock::now();
  const std::string here = describe(g_seq);
  char limit[64];
  std::snprintf(limit, sizeof limit, "%g", g_timeout_s);
  std::string msg;
  int first = -1;
  for (int q = 0; q < g_size; ++q)
    if (q != g_rank && g_latest[q] < g_seq) {
      msg += (msg.empty() ? "" : "; ") + std::string("rank ") + std::to_string(q) +
             " did not arrive at " + here + " within [distributed] timeout_s = " + limit +
             " s (the last collective it reached: " + describe(g_latest[q]) + ")";
      if (first < 0) first = q;
    }
  if (first < 0) {  // everyone arrived: the silent one stopped inside the collective
    double longest = 0;
    for (int q = 0; q < g_size; ++q) {
      const double silent = std::chrono::duration<double>(now - g_heard[q]).count();
      if (q != g_rank && silent > longest) longest = silent, first = q;
    }
    // A waiting rank sends a heartbeat each second: silent this long, it is not waiting any more.
    if (first >= 0 && longest > std::min(3.0, g_timeout_s / 2)) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.0f", longest);
      msg = "rank " + std::to_string(first) + " arrived at " + here + " but has been silent for " +
            buf + " s (stopped or hung inside it); the collective " +
            "did not complete within [distributed] timeout_s = " + limit + " s";
    } else {
      msg = std::string("every rank arrived at ") + here +
            " and is waiting, but it did not complete within [distributed] timeout_s = " + limit +
            " s";
    }
  }
  throw RankLost("rank " + std::to_string(g_rank) + ": " + msg, first);
}

// Polls reqs to completion. A rank waits here far longer than it computes only when another rank
// is late; it sleeps between polls after a short spin, so that on shared cores it does not take
// the late rank's time slice.
void wait_all(std::vector<MPI_Request>& reqs) {
  if (reqs.empty()) return;
  const auto start = Clock::now();
  auto beat = start;
  const auto limit = std::chrono::duration<double>(g_timeout_s);
  for (int polls = 0;; ++polls) {
    int done = 0;
    check(MPI_Testall(int(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    if (done) break;
    const auto now = Clock::now();
    if (now - beat > std::chrono::seconds(1)) {  // still here: a heartbeat with the same count
      tell_peers();
      drain_records();
      beat = now;
    }
    if (now - start > limit) lost();
    if (polls < 100)
      sched_yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  reqs.clear();
}

// The reducer's started collectives and the count / displacement arrays they read until they
// complete.
std::vector<MPI_Request> g_pending;
std::deque<std::vector<int>> g_arrays;

void start_allreduce(void* data, size_t n, MPI_Datatype type, size_t elem,
                     std::vector<MPI_Request>& reqs) {
  chunked(n, [&](size_t off, int c) {
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, static_cast<char*>(data) + off * elem, c, type, MPI_SUM,
                         MPI_COMM_WORLD, &r),
          "MPI_Iallreduce");
    reqs.push_back(r);
  });
}

void blocking_allreduce(void* data, size_t n, MPI_Datatype type, size_t elem, const char* what) {
  if (g_size == 1) return;
  arrive(what);
  std::vector<MPI_Request> reqs;
  start_allreduce(data, n, type, elem, reqs);
  wait_all(reqs);
}
#endif

}  // namespace

void init() {
  if (g_active || !launched_by_mpi()) return;
#if KD_WITH_MPI
  // Open MPI's nonblocking collectives (libnbc) pick a binomial tree for every in-place
  // MPI_Iallreduce on fewer than 4 ranks, measured 2-3x slower for the gradients than its
  // Rabenseifner algorithm (reduce-scatter + all-gather; 13 MB at 2 ranks: 11.7 -> 4.8 ms), which
  // it still leaves to the tree for messages shorter than one element per rank. Unless the user
  // chose an algorithm, use it. Other MPI libraries ignore the variable.
  setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "3", 0);
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) check(MPI_Init(nullptr, nullptr), "MPI_Init");
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  g_active = true;
  start_records();
#else
  if (launcher_size() > 1)
    throw InputError("started as one of " + std::to_string(launcher_size()) +
                     " ranks, but this kdengine was built without MPI (KD_MPI=OFF or no MPI "
                     "found); rebuild with MPI or run a single process");
#endif
}

void finalize() {
#if KD_WITH_MPI
  if (!g_active) return;
  // Every rank got here: receive the records still on their way (each rank says how many it sent
  // to each other rank), cancel the receives posted for more, and leave.
  std::vector<uint64_t> expect(size_t(g_size), 0);
  check(MPI_Alltoall(g_sent_to.data(), 1, MPI_UINT64_T, expect.data(), 1, MPI_UINT64_T,
                     MPI_COMM_WORLD),
        "MPI_Alltoall");
  for (int q = 0; q < g_size; ++q) {
    if (q == g_rank) continue;
    while (g_got_from[q] < expect[q]) {
      check(MPI_Wait(&g_recv[q], MPI_STATUS_IGNORE), "MPI_Wait");
      ++g_got_from[q];
      post_recv(q);
    }
    MPI_Cancel(&g_recv[q]);
    MPI_Wait(&g_recv[q], MPI_STATUS_IGNORE);
  }
  for (Send& s : g_sends) MPI_Wait(&s.req, MPI_STATUS_IGNORE);
  g_sends.clear();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
  g_active = false;
  g_rank = 0;
  g_size = 1;
#endif
}

int rank() {
  return g_rank;
}
int size() {
  return g_size;
}
bool is_root() {
  return g_rank == 0;
}

void set_timeout(double seconds) {
  KD_REQUIRE(seconds > 0, "comm::set_timeout: seconds must be > 0");
  g_timeout_s = seconds;
}

void set_step(int64_t step) {
  g_step = step;
}

void allreduce_sum([[maybe_unused]] float* data, [[maybe_unused]] size_t n) {
#if KD_WITH_MPI
  blocking_allreduce(data, n, MPI_FLOAT, sizeof(float), "an all-reduce");
#endif
}

void allreduce_sum([[maybe_unused]] double* data, [[maybe_unused]] size_t n) {
#if KD_WITH_MPI
  blocking_allreduce(data, n, MPI_DOUBLE, sizeof(double), "an all-reduce");
#endif
}

void allreduce_sum([[maybe_unused]] int64_t* data, [[maybe_unused]] size_t n) {
#if KD_WITH_MPI
  blocking_allreduce(data, n, MPI_INT64_T, sizeof(int64_t), "an all-reduce");
#endif
}

void allreduce_sum([[maybe_unused]] LossSums& s) {
#if KD_WITH_MPI
  if (g_size == 1) return;
  arrive("the loss sums");
  double d[6] = {s.loss, s.ce, s.kd, s.kl, s.teacher_entropy, s.student_entropy};
  int64_t rows = s.rows;
  std::vector<MPI_Request> reqs;
  start_allreduce(d, 6, MPI_DOUBLE, sizeof(double), reqs);
  start_allreduce(&rows, 1, MPI_INT64_T, sizeof(int64_t), reqs);
  wait_all(reqs);
  s.loss = d[0], s.ce = d[1], s.kd = d[2], s.kl = d[3];
  s.teacher_entropy = d[4], s.student_entropy = d[5];
  s.rows = rows;
#endif
}

bool any(bool flag) {
  int64_t v = flag ? 1 : 0;
#if KD_WITH_MPI
  blocking_allreduce(&v, 1, MPI_INT64_T, sizeof(int64_t), "the interrupt check");
#endif
  return v > 0;
}

void broadcast([[maybe_unused]] void* data, [[maybe_unused]] size_t bytes,
               [[maybe_unused]] int root) {
#if KD_WITH_MPI
  if (g_size == 1) return;
  arrive("the start-state broadcast");
  std::vector<MPI_Request> reqs;
  chunked(bytes, [&](size_t off, int c) {
    MPI_Request r;
    check(MPI_Ibcast(static_cast<char*>(data) + off, c, MPI_BYTE, root, MPI_COMM_WORLD, &r),
          "MPI_Ibcast");
    reqs.push_back(r);
  });
  wait_all(reqs);
#endif
}

std::vector<uint64_t> allgather(uint64_t value) {
  std::vector<uint64_t> all(size_t(g_size), value);
#if KD_WITH_MPI
  if (g_size > 1) {
    arrive("the recipe check");
    std::vector<MPI_Request> reqs(1);
    check(MPI_Iallgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD,
                         &reqs[0]),
          "MPI_Iallgather");
    wait_all(reqs);
  }
#endif
  return all;
}

void sum_to_root([[maybe_unused]] float* data, [[maybe_unused]] size_t n) {
#if KD_WITH_MPI
  if (g_size == 1) return;
  arrive("the optimizer-state gather");
  std::vector<MPI_Request> reqs;
  chunked(n, [&](size_t off, int c) {
    MPI_Request r;
    check(g_rank == 0
              ? MPI_Ireduce(MPI_IN_PLACE, data + off, c, MPI_FLOAT, MPI_SUM, 0, MPI_COMM_WORLD, &r)
              : MPI_Ireduce(data + off, nullptr, c, MPI_FLOAT, MPI_SUM, 0, MPI_COMM_WORLD, &r),
          "MPI_Ireduce");
    reqs.push_back(r);
  });
  wait_all(reqs);
#endif
}

// ---- MpiStepReducer

MpiStepReducer::~MpiStepReducer() = default;

int64_t MpiStepReducer::sum_rows(int64_t local) {
  KD_RANGE_P("comm_rows", Phase::Comm, 1);
#if KD_WITH_MPI
  blocking_allreduce(&local, 1, MPI_INT64_T, sizeof(int64_t), "the supervised-token count");
#endif
  return local;
}

void MpiStepReducer::sum_losses(LossSums& s) {
  KD_RANGE_P("comm_losses", Phase::Comm, 7);
  allreduce_sum(s);
}

void MpiStepReducer::sum_grads([[maybe_unused]] float* data, [[maybe_unused]] size_t n) {
#if KD_WITH_MPI
  if (g_size == 1) return;
  arrive("a gradient all-reduce");
  start_allreduce(data, n, MPI_FLOAT, sizeof(float), g_pending);
#endif
}

void MpiStepReducer::sum_doubles([[maybe_unused]] double* data, [[maybe_unused]] size_t n) {
#if KD_WITH_MPI
  if (g_size == 1) return;
  arrive("the gradient norm");
  start_allreduce(data, n, MPI_DOUBLE, sizeof(double), g_pending);
#endif
}

void MpiStepReducer::reduce_scatter([[maybe_unused]] float* data, size_t shard, size_t begin,
                                    size_t end) {
  KD_REQUIRE(begin <= end && end <= size_t(size()) * shard,
             "MpiStepReducer::reduce_scatter: need begin <= end <= size() * shard");
#if KD_WITH_MPI
  if (g_size == 1 || begin == end) return;
  arrive("a gradient reduce-scatter");
  std::vector<int>& counts = g_arrays.emplace_back(size_t(g_size), 0);
  for (int q = 0; q < g_size; ++q) {
    const size_t lo = std::max(begin, size_t(q) * shard), hi = std::min(end, size_t(q + 1) * shard);
    counts[q] = hi > lo ? as_count(hi - lo, "reduce_scatter") : 0;
  }
  if (used_ == landings_.size()) landings_.emplace_back();
  Landing& l = landings_[used_++];
  l.dst = data + std::max(begin, size_t(g_rank) * shard);
  l.buf.resize(size_t(counts[g_rank]));
  MPI_Request r;
  check(MPI_Ireduce_scatter(data + begin, l.buf.empty() ? nullptr : l.buf.data(), counts.data(),
                            MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r),
        "MPI_Ireduce_scatter");
  g_pending.push_back(r);
#else
  (void)shard, (void)begin, (void)end;
#endif
}

void MpiStepReducer::all_gather([[maybe_unused]] void* data, size_t shard_bytes,
                                size_t total_bytes) {
  KD_REQUIRE(shard_bytes % sizeof(float) == 0 && total_bytes % sizeof(float) == 0 &&
                 total_bytes <= size_t(size()) * shard_bytes,
             "MpiStepReducer::all_gather: need whole floats and total <= size() * shard");
#if KD_WITH_MPI
  if (g_size == 1) return;
  arrive("the parameter all-gather");
  const size_t shard = shard_bytes / sizeof(float), total = total_bytes / sizeof(float);
  std::vector<int>& counts = g_arrays.emplace_back(size_t(g_size), 0);
  std::vector<int>& displs = g_arrays.emplace_back(size_t(g_size), 0);
  for (int q = 0; q < g_size; ++q) {
    const size_t lo = std::min(total, size_t(q) * shard), hi = std::min(total, lo + shard);
    counts[q] = as_count(hi - lo, "all_gather");
    displs[q] = as_count(lo, "all_gather");
  }
  MPI_Request r;
  check(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, counts.data(), displs.data(),
                        MPI_FLOAT, MPI_COMM_WORLD, &r),
        "MPI_Iallgatherv");
  g_pending.push_back(r);
#else
  (void)shard_bytes, (void)total_bytes;
#endif
}

void MpiStepReducer::progress() {
#if KD_WITH_MPI
  if (g_pending.empty()) return;
  int done = 0;
  check(MPI_Testall(int(g_pending.size()), g_pending.data(), &done, MPI_STATUSES_IGNORE),
        "MPI_Testall");
#endif
}

void MpiStepReducer::finish() {
#if KD_WITH_MPI
  wait_all(g_pending);
  g_arrays.clear();
#endif
  for (size_t i = 0; i < used_; ++i)
    std::copy(landings_[i].buf.begin(), landings_[i].buf.end(), landings_[i].dst);
  used_ = 0;
}

// Waiting for this rank's own asynchronous work (a GPU step whose collectives run on the device)
// as one more arrival: the other ranks learn that this rank got here, it sends heartbeats while
// it waits, and at the deadline it names the rank that did not get here (or went silent).
void wait_local(const char* what, bool (*done)(void*), void* ctx) {
#if KD_WITH_MPI
  if (g_active && g_size > 1) {
    arrive(what);
    const auto start = Clock::now();
    auto beat = start;
    const auto limit = std::chrono::duration<double>(g_timeout_s);
    for (int polls = 0; !done(ctx); ++polls) {
      const auto now = Clock::now();
      if (now - beat > std::chrono::seconds(1)) {
        tell_peers();
        drain_records();
        beat = now;
      }
      if (now - start > limit) {
        drain_records();
        bool all_past =
            true;  // every other rank arrived here and went on: this rank is the late one
        for (int q = 0; q < g_size; ++q) all_past &= q == g_rank || g_latest[size_t(q)] > g_seq;
        if (!all_past) lost();
        char buf[64];
        std::snprintf(buf, sizeof buf, "%g", g_timeout_s);
        throw RankLost("rank " + std::to_string(g_rank) + ": its own " + describe(g_seq) +
                           " did not complete within [distributed] timeout_s = " + buf +
                           " s, while every other rank finished it",
                       g_rank);
      }
      if (polls < 100)
        sched_yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return;
  }
#endif
  while (!done(ctx)) std::this_thread::yield();
}

}  // namespace kd::comm
