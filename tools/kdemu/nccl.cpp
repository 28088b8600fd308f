// The NCCL calls the project makes, for the emulated build, carried by MPI between the ranks'
// host-resident "device" buffers (the way cublaslt.cpp stands in for cuBLASLt). Each rank is one
// process started by mpirun; its emulated GPU is the one cudaSetDevice chose (KDEMU_DEVICES
// emulated devices per process, tools/kdemu/runtime.cpp).
//
// Semantics kept from NCCL's documentation:
//   ncclCommInitRank(comm, nranks, id, rank)  collective; every rank passes rank 0's unique id, its
//                                             own rank in [0, nranks); two ranks of one host on the
//                                             same device are refused ("Duplicate GPU detected")
//   ncclAllReduce(send, recv, count, ...)     recv = the sum over ranks of send; in place when
//                                             send == recv
//   ncclReduceScatter(send, recv, rc, ...)    recv on rank r = block r (rc elements) of the sum of
//                                             send (nranks * rc elements); in place when
//                                             recv == send + r * rc
//   ncclAllGather(send, recv, sc, ...)        recv = every rank's sc elements, rank after rank; in
//                                             place when send == recv + r * sc
//   ncclReduce(send, recv, n, ..., root)      recv on root = the sum of send; in place when
//                                             send == recv (recv is not used on other ranks)
//   ncclBroadcast(send, recv, n, ..., root)   recv = root's send; in place when send == recv
//   buffers must lie inside device allocations (cudaMalloc), as NCCL requires device memory.
// Reductions: ncclSum on int32/int64/uint64/float32/float64 (bf16 and half only move, in
// all-gathers). NCCL_DEBUG=INFO prints the communicator's creation, and with NCCL_DEBUG_SUBSYS
// containing COLL every collective, on stderr (as NCCL's own log does).
//
// What it cannot tell: everything is synchronous (the stream argument only orders, as every
// emulated stream does), so a collective missing on one rank blocks inside MPI instead of hanging
// a GPU kernel; group calls (ncclGroupStart/End) run each collective at once, which is only right
// for collectives issued in the same order on every rank (the project issues no send/recv);
// NCCL's own reduction order (ring or tree, with its chunking) is not reproduced: MPI's sum of two
// ranks is the same a + b, of more ranks it may associate differently. A communicator must span
// every rank of the MPI job (nranks == the job's size), which is how kdengine creates it.
#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "tools/kdemu/emu.h"
#include "tools/kdemu/emu_internal.h"

struct ncclComm {
  MPI_Comm mpi = MPI_COMM_NULL;
  int rank = 0, size = 1, device = 0;
};

namespace {

std::string g_last_error;
int g_group_depth = 0;
std::vector<emu::CollectiveRecord> g_collectives;  // emu::collective()

void record(const char* op, size_t count) {
  emu::CollectiveRecord r{};
  std::snprintf(r.op, sizeof r.op, "%s", op);
  r.count = count;
  r.launches_before = emu::runtime_counts().launches;
  g_collectives.push_back(r);
}

ncclResult_t refuse(ncclResult_t r, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  g_last_error = buf;
  std::fprintf(stderr, "kdemu NCCL WARN %s\n", buf);
  return r;
}

bool debug_info() {
  const char* d = std::getenv("NCCL_DEBUG");
  return d != nullptr && (std::strcmp(d, "INFO") == 0 || std::strcmp(d, "TRACE") == 0);
}
bool debug_coll() {
  const char* s = std::getenv("NCCL_DEBUG_SUBSYS");
  return debug_info() && s != nullptr && (std::strstr(s, "COLL") || std::strstr(s, "ALL"));
}

size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
    case ncclFloat8e4m3:
    case ncclFloat8e5m2:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;
  }
}

// The MPI type that sums like `t`, or MPI_DATATYPE_NULL.
MPI_Datatype sum_type(ncclDataType_t t) {
  switch (t) {
    case ncclInt32:
      return MPI_INT32_T;
    case ncclInt64:
      return MPI_INT64_T;
    case ncclUint64:
      return MPI_UINT64_T;
    case ncclFloat32:
      return MPI_FLOAT;
    case ncclFloat64:
      return MPI_DOUBLE;
    default:
      return MPI_DATATYPE_NULL;
  }
}

// The MPI type of a summing collective, or the refusal: only ncclSum on the types sum_type knows.
ncclResult_t check_sum(ncclRedOp_t op, ncclDataType_t datatype, const char* what,
                       MPI_Datatype* type) {
  *type = sum_type(datatype);
  if (op != ncclSum || *type == MPI_DATATYPE_NULL)
    return refuse(ncclInvalidArgument,
                  "%s: only ncclSum on int32/int64/uint64/float32/float64 is emulated (op %d, "
                  "type %d)",
                  what, int(op), int(datatype));
  return ncclSuccess;
}

ncclResult_t check_comm(const ncclComm* c, const char* what) {
  if (c == nullptr || c->mpi == MPI_COMM_NULL)
    return refuse(ncclInvalidArgument, "%s: invalid communicator", what);
  return ncclSuccess;
}

ncclResult_t check_buffer(const void* p, size_t bytes, const char* what, const char* which) {
  if (bytes > 0 && !emu::is_device_range(p, bytes))
    return refuse(ncclInvalidArgument,
                  "%s: %s buffer (%zu bytes at %p) is not inside one device allocation", what,
                  which, bytes, p);
  return ncclSuccess;
}

ncclResult_t mpi_result(int rc, const char* what) {
  if (rc != MPI_SUCCESS) return refuse(ncclSystemError, "%s: MPI failed (%d)", what, rc);
  return ncclSuccess;
}

// FNV-1a of the unique id: ranks compare ids by it.
uint64_t hash_bytes(const void* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i)
    h = (h ^ static_cast<const unsigned char*>(p)[i]) * 1099511628211ull;
  return h;
}

}  // namespace

namespace emu {
size_t collective_count() {
  return g_collectives.size();
}
CollectiveRecord collective(size_t i) {
  return g_collectives.at(i);
}
}  // namespace emu

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return refuse(ncclInvalidArgument, "ncclGetVersion: null pointer");
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess:
      return "no error (kdemu)";
    case ncclUnhandledCudaError:
      return "unhandled cuda error (kdemu)";
    case ncclSystemError:
      return "unhandled system error (kdemu)";
    case ncclInternalError:
      return "internal error (kdemu)";
    case ncclInvalidArgument:
      return "invalid argument (kdemu)";
    case ncclInvalidUsage:
      return "invalid usage (kdemu)";
    case ncclRemoteError:
      return "remote process exited or there was a network error (kdemu)";
    case ncclInProgress:
      return "NCCL operation in progress (kdemu)";
    default:
      return "unknown result code (kdemu)";
  }
}

const char* ncclGetLastError(ncclComm_t) {
  return g_last_error.c_str();
}

// Random bytes from the process id and the clock: distinct for every call, as NCCL's are.
ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return refuse(ncclInvalidArgument, "ncclGetUniqueId: null pointer");
  std::memset(id, 0, sizeof *id);
  static uint64_t calls = 0;
  uint64_t x = (static_cast<uint64_t>(getpid()) << 32) ^ static_cast<uint64_t>(MPI_Wtime() * 1e9) ^
               (++calls * 0x9E3779B97F4A7C15ull);
  std::memcpy(id->internal, "kdemu", 5);
  for (size_t i = 8; i + 8 <= sizeof id->internal; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(id->internal + i, &x, 8);
  }
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  const char* what = "ncclCommInitRank";
  if (comm == nullptr) return refuse(ncclInvalidArgument, "%s: null communicator pointer", what);
  *comm = nullptr;
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (!inited || finalized)
    return refuse(ncclInvalidUsage,
                  "%s: the emulated NCCL runs over MPI, and MPI is not initialised (start the "
                  "ranks with mpirun)",
                  what);
  int world = 0, world_rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  if (nranks != world)
    return refuse(ncclInvalidUsage,
                  "%s: nranks %d, but the emulated NCCL needs communicators over the whole MPI "
                  "job (%d ranks)",
                  what, nranks, world);
  if (rank < 0 || rank >= nranks)
    return refuse(ncclInvalidArgument, "%s: rank %d outside [0, %d)", what, rank, nranks);
  auto* c = new ncclComm();
  c->rank = rank;
  c->size = nranks;
  c->device = emu::current_device();
  if (ncclResult_t r = mpi_result(MPI_Comm_split(MPI_COMM_WORLD, 0, rank, &c->mpi), what);
      r != ncclSuccess) {
    delete c;
    return r;
  }
  // What every rank brought: the id, its rank, its host and its device.
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const uint64_t mine[4] = {hash_bytes(&id, sizeof id), static_cast<uint64_t>(rank),
                            std::hash<std::string>{}(host), static_cast<uint64_t>(c->device)};
  std::vector<uint64_t> all(4 * static_cast<size_t>(nranks));
  if (ncclResult_t r = mpi_result(
          MPI_Allgather(mine, 4, MPI_UINT64_T, all.data(), 4, MPI_UINT64_T, c->mpi), what);
      r != ncclSuccess) {
    delete c;
    return r;
  }
  ncclResult_t result = ncclSuccess;
  for (int i = 0; i < nranks && result == ncclSuccess; ++i) {
    const uint64_t* a = &all[4 * size_t(i)];
    if (a[0] != mine[0])
      result = refuse(ncclInvalidArgument, "%s: rank %d passed another unique id than rank %d",
                      what, int(a[1]), rank);
    if (static_cast<int>(a[1]) != i)
      result = refuse(ncclInvalidArgument, "%s: rank %d given twice", what, int(a[1]));
    for (int j = 0; j < i && result == ncclSuccess; ++j) {
      const uint64_t* b = &all[4 * size_t(j)];
      if (a[2] == b[2] && a[3] == b[3])
        result = refuse(ncclInvalidUsage,
                        "%s: Duplicate GPU detected : rank %d and rank %d both on CUDA device %d",
                        what, i, j, int(a[3]));
    }
  }
  if (result != ncclSuccess) {
    MPI_Comm_free(&c->mpi);
    delete c;
    return result;
  }
  if (debug_info())
    std::fprintf(stderr, "kdemu NCCL INFO comm %p rank %d nranks %d cudaDev %d (world rank %d)\n",
                 static_cast<void*>(c), rank, nranks, c->device, world_rank);
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm->mpi != MPI_COMM_NULL) MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}

// After an error the other ranks may never join another call: nothing collective here.
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (async_error == nullptr) return refuse(ncclInvalidArgument, "ncclCommGetAsyncError: null");
  if (ncclResult_t r = check_comm(comm, "ncclCommGetAsyncError"); r != ncclSuccess) return r;
  *async_error = ncclSuccess;  // every call completed (or failed) before it returned
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (ncclResult_t r = check_comm(comm, "ncclCommCount"); r != ncclSuccess) return r;
  *count = comm->size;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (ncclResult_t r = check_comm(comm, "ncclCommUserRank"); r != ncclSuccess) return r;
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (ncclResult_t r = check_comm(comm, "ncclCommCuDevice"); r != ncclSuccess) return r;
  *device = comm->device;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++g_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (g_group_depth == 0) return refuse(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  --g_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  const char* what = "ncclAllReduce";
  if (ncclResult_t r = check_comm(comm, what); r != ncclSuccess) return r;
  MPI_Datatype t;
  if (ncclResult_t r = check_sum(op, datatype, what, &t); r != ncclSuccess) return r;
  if (count > size_t(INT_MAX)) return refuse(ncclInvalidArgument, "%s: count too large", what);
  const size_t bytes = count * type_size(datatype);
  if (ncclResult_t r = check_buffer(sendbuff, bytes, what, "send"); r != ncclSuccess) return r;
  if (ncclResult_t r = check_buffer(recvbuff, bytes, what, "receive"); r != ncclSuccess) return r;
  if (debug_coll())
    std::fprintf(stderr, "kdemu NCCL INFO AllReduce: rank %d count %zu datatype %d op %d%s\n",
                 comm->rank, count, int(datatype), int(op),
                 sendbuff == recvbuff ? " (in place)" : "");
  const void* src = sendbuff == recvbuff ? MPI_IN_PLACE : sendbuff;
  record("AllReduce", count);
  return mpi_result(MPI_Allreduce(src, recvbuff, int(count), t, MPI_SUM, comm->mpi), what);
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t) {
  const char* what = "ncclReduceScatter";
  if (ncclResult_t r = check_comm(comm, what); r != ncclSuccess) return r;
  MPI_Datatype t;
  if (ncclResult_t r = check_sum(op, datatype, what, &t); r != ncclSuccess) return r;
  if (recvcount * comm->size > size_t(INT_MAX))
    return refuse(ncclInvalidArgument, "%s: count too large", what);
  const size_t es = type_size(datatype), rbytes = recvcount * es;
  if (ncclResult_t r = check_buffer(sendbuff, rbytes * comm->size, what, "send"); r != ncclSuccess)
    return r;
  if (ncclResult_t r = check_buffer(recvbuff, rbytes, what, "receive"); r != ncclSuccess) return r;
  if (debug_coll())
    std::fprintf(stderr, "kdemu NCCL INFO ReduceScatter: rank %d recvcount %zu datatype %d op %d\n",
                 comm->rank, recvcount, int(datatype), int(op));
  // The send buffer may hold the receive buffer (in place): reduce from a copy.
  std::vector<unsigned char> tmp(rbytes * comm->size);
  std::memcpy(tmp.data(), sendbuff, tmp.size());
  record("ReduceScatter", recvcount);
  return mpi_result(
      MPI_Reduce_scatter_block(tmp.data(), recvbuff, int(recvcount), t, MPI_SUM, comm->mpi), what);
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount,
                           ncclDataType_t datatype, ncclComm_t comm, cudaStream_t) {
  const char* what = "ncclAllGather";
  if (ncclResult_t r = check_comm(comm, what); r != ncclSuccess) return r;
  const size_t es = type_size(datatype), sbytes = sendcount * es;
  if (es == 0) return refuse(ncclInvalidArgument, "%s: unknown datatype %d", what, int(datatype));
  if (sbytes * comm->size > size_t(INT_MAX))
    return refuse(ncclInvalidArgument, "%s: count too large", what);
  if (ncclResult_t r = check_buffer(sendbuff, sbytes, what, "send"); r != ncclSuccess) return r;
  if (ncclResult_t r = check_buffer(recvbuff, sbytes * comm->size, what, "receive");
      r != ncclSuccess)
    return r;
  if (debug_coll())
    std::fprintf(stderr, "kdemu NCCL INFO AllGather: rank %d sendcount %zu datatype %d\n",
                 comm->rank, sendcount, int(datatype));
  const bool in_place = sendbuff == static_cast<const char*>(recvbuff) + comm->rank * sbytes;
  const void* src = in_place ? MPI_IN_PLACE : sendbuff;
  record("AllGather", sendcount);
  return mpi_result(
      MPI_Allgather(src, int(sbytes), MPI_BYTE, recvbuff, int(sbytes), MPI_BYTE, comm->mpi), what);
}

ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t) {
  const char* what = "ncclReduce";
  if (ncclResult_t r = check_comm(comm, what); r != ncclSuccess) return r;
  MPI_Datatype t;
  if (ncclResult_t r = check_sum(op, datatype, what, &t); r != ncclSuccess) return r;
  if (root < 0 || root >= comm->size)
    return refuse(ncclInvalidArgument, "%s: root %d outside [0, %d)", what, root, comm->size);
  if (count > size_t(INT_MAX)) return refuse(ncclInvalidArgument, "%s: count too large", what);
  const size_t bytes = count * type_size(datatype);
  if (ncclResult_t r = check_buffer(sendbuff, bytes, what, "send"); r != ncclSuccess) return r;
  const bool is_root = comm->rank == root;
  if (is_root)
    if (ncclResult_t r = check_buffer(recvbuff, bytes, what, "receive"); r != ncclSuccess) return r;
  if (debug_coll())
    std::fprintf(stderr, "kdemu NCCL INFO Reduce: rank %d count %zu datatype %d op %d root %d\n",
                 comm->rank, count, int(datatype), int(op), root);
  const void* src = is_root && sendbuff == recvbuff ? MPI_IN_PLACE : sendbuff;
  record("Reduce", count);
  return mpi_result(MPI_Reduce(src, recvbuff, int(count), t, MPI_SUM, root, comm->mpi), what);
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t) {
  const char* what = "ncclBroadcast";
  if (ncclResult_t r = check_comm(comm, what); r != ncclSuccess) return r;
  const size_t es = type_size(datatype), bytes = count * es;
  if (es == 0) return refuse(ncclInvalidArgument, "%s: unknown datatype %d", what, int(datatype));
  if (root < 0 || root >= comm->size)
    return refuse(ncclInvalidArgument, "%s: root %d outside [0, %d)", what, root, comm->size);
  if (bytes > size_t(INT_MAX)) return refuse(ncclInvalidArgument, "%s: count too large", what);
  if (comm->rank == root)
    if (ncclResult_t r = check_buffer(sendbuff, bytes, what, "send"); r != ncclSuccess) return r;
  if (ncclResult_t r = check_buffer(recvbuff, bytes, what, "receive"); r != ncclSuccess) return r;
  if (debug_coll())
    std::fprintf(stderr, "kdemu NCCL INFO Broadcast: rank %d count %zu datatype %d root %d\n",
                 comm->rank, count, int(datatype), root);
  if (comm->rank == root && sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, bytes);
  record("Broadcast", count);
  return mpi_result(MPI_Bcast(recvbuff, int(bytes), MPI_BYTE, root, comm->mpi), what);
}

}  // extern "C"
