// The emulator's NCCL (tools/kdemu/nccl.cpp) against plain host sums: the test starts itself under
// `mpirun -np 2` (KDEMU_DEVICES=2, one emulated device per rank); each rank fills its buffers from
// a seed of its rank, so every rank can compute every rank's data, and checks
//   ncclAllReduce      (in place and not) = the element-wise sum of both ranks' data
//   ncclReduceScatter  (in place and not) = this rank's block of that sum
//   ncclAllGather      (in place and not, bf16 as raw 16-bit values) = the ranks' blocks in order
//   ncclReduce, ncclBroadcast (in place) = the sum on the root, the root's data everywhere
// and the refusals: a host buffer, a reduction the emulator does not do, and a second
// communicator with both ranks on one device ("Duplicate GPU detected", as NCCL says).
// Skipped where the build has no NCCL (it needs MPI and nccl.h) or mpirun is missing.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/base/rng.h"
#include "tests/shell_util.h"

#ifdef KD_EMU_NCCL
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#endif

namespace {

#ifdef KD_EMU_NCCL

std::vector<float> data_of(int rank, size_t n) {
  kd::Rng rng(100 + static_cast<uint64_t>(rank));
  std::vector<float> v(n);
  for (float& x : v) x = rng.uniform() * 2.0f - 1.0f;
  return v;
}

float* device_copy(const std::vector<float>& h) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, h.size() * sizeof(float)), cudaSuccess);
  cudaMemcpy(p, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice);
  return static_cast<float*>(p);
}

std::vector<float> host_copy(const float* d, size_t n) {
  std::vector<float> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost);
  return h;
}

// One rank's part (the test body when started by mpirun).
void rank_body() {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) MPI_Init(nullptr, nullptr);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  ASSERT_EQ(size, 2);
  ASSERT_EQ(cudaSetDevice(rank), cudaSuccess);
  ncclUniqueId id;
  if (rank == 0) ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  ncclComm_t comm = nullptr;
  ASSERT_EQ(ncclCommInitRank(&comm, size, id, rank), ncclSuccess);
  int count = 0, user_rank = -1;
  ncclCommCount(comm, &count);
  ncclCommUserRank(comm, &user_rank);
  EXPECT_EQ(count, 2);
  EXPECT_EQ(user_rank, rank);

  const size_t block = 37, n = 2 * block;  // odd sizes: no accidental alignment
  std::vector<float> sum(n);
  for (int r = 0; r < size; ++r) {
    const std::vector<float> d = data_of(r, n);
    for (size_t i = 0; i < n; ++i) sum[i] += d[i];
  }
  const std::vector<float> mine = data_of(rank, n);
  cudaStream_t s = nullptr;
  cudaStreamCreate(&s);

  // all-reduce, in place and into another buffer
  float* a = device_copy(mine);
  ASSERT_EQ(ncclAllReduce(a, a, n, ncclFloat32, ncclSum, comm, s), ncclSuccess);
  EXPECT_EQ(host_copy(a, n), sum);
  float* src = device_copy(mine);
  float* dst = device_copy(std::vector<float>(n, -7.0f));
  ASSERT_EQ(ncclAllReduce(src, dst, n, ncclFloat32, ncclSum, comm, s), ncclSuccess);
  EXPECT_EQ(host_copy(dst, n), sum);
  EXPECT_EQ(host_copy(src, n), mine);  // the send buffer is left alone

  // reduce-scatter: in place (recv = send + rank * block) and into a separate block
  float* rs = device_copy(mine);
  ASSERT_EQ(ncclReduceScatter(rs, rs + rank * block, block, ncclFloat32, ncclSum, comm, s),
            ncclSuccess);
  const std::vector<float> got = host_copy(rs + rank * block, block);
  const std::vector<float> want(sum.begin() + rank * block, sum.begin() + (rank + 1) * block);
  EXPECT_EQ(got, want);
  float* rs_src = device_copy(mine);
  float* rs_dst = device_copy(std::vector<float>(block, -7.0f));
  ASSERT_EQ(ncclReduceScatter(rs_src, rs_dst, block, ncclFloat32, ncclSum, comm, s), ncclSuccess);
  EXPECT_EQ(host_copy(rs_dst, block), want);

  // all-gather: every rank contributes block `rank` of its own data
  std::vector<float> gathered(n);
  for (int r = 0; r < size; ++r) {
    const std::vector<float> d = data_of(r, n);
    for (size_t i = 0; i < block; ++i) gathered[r * block + i] = d[r * block + i];
  }
  float* ag = device_copy(mine);  // in place: the rank's block is already at rank * block
  ASSERT_EQ(ncclAllGather(ag + rank * block, ag, block, ncclFloat32, comm, s), ncclSuccess);
  EXPECT_EQ(host_copy(ag, n), gathered);
  // bf16 moves as 16-bit values: 2 * block of them are the bytes of block floats
  float* ag_src = device_copy(
      std::vector<float>(mine.begin() + rank * block, mine.begin() + (rank + 1) * block));
  float* ag_dst = device_copy(std::vector<float>(n, -7.0f));
  ASSERT_EQ(ncclAllGather(ag_src, ag_dst, 2 * block, ncclBfloat16, comm, s), ncclSuccess);
  EXPECT_EQ(host_copy(ag_dst, n), gathered);

  // reduce to rank 1 and broadcast from rank 0, both in place
  float* red = device_copy(mine);
  ASSERT_EQ(ncclReduce(red, red, n, ncclFloat32, ncclSum, 1, comm, s), ncclSuccess);
  if (rank == 1) EXPECT_EQ(host_copy(red, n), sum);
  float* bc = device_copy(mine);
  ASSERT_EQ(ncclBroadcast(bc, bc, n, ncclFloat32, 0, comm, s), ncclSuccess);
  EXPECT_EQ(host_copy(bc, n), data_of(0, n));

  // refusals
  std::vector<float> host(n);
  EXPECT_EQ(ncclAllReduce(host.data(), host.data(), n, ncclFloat32, ncclSum, comm, s),
            ncclInvalidArgument);
  EXPECT_EQ(ncclAllReduce(a, a, n, ncclFloat32, ncclMax, comm, s), ncclInvalidArgument);
  EXPECT_EQ(ncclAllReduce(a, a, n + 1, ncclFloat32, ncclSum, comm, s), ncclInvalidArgument)
      << "one element past the buffer";
  EXPECT_EQ(ncclGroupEnd(), ncclInvalidUsage);
  EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);

  // both ranks on device 0: the second communicator is refused on every rank
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  if (rank == 0) ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  ncclComm_t dup = nullptr;
  EXPECT_EQ(ncclCommInitRank(&dup, size, id, rank), ncclInvalidUsage);
  EXPECT_NE(std::string(ncclGetLastError(nullptr)).find("Duplicate GPU detected"),
            std::string::npos);
  EXPECT_EQ(dup, nullptr);

  for (float* p : {a, src, dst, rs, rs_src, rs_dst, ag, ag_src, ag_dst, red, bc}) cudaFree(p);
  cudaStreamDestroy(s);
  if (!::testing::Test::HasFailure()) std::printf("emu nccl: rank %d ok\n", rank);
  MPI_Finalize();
}

#endif  // KD_EMU_NCCL

TEST(EmuNccl, CollectivesMatchHostSums) {
#ifndef KD_EMU_NCCL
  GTEST_SKIP() << "built without NCCL (it needs the CUDA toolkit's nccl.h and MPI)";
#else
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr) {  // one of the ranks
    rank_body();
    return;
  }
  if (kd::testing::sh("command -v mpirun").status != 0)
    GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const kd::testing::Result r = kd::testing::sh(
      "KDEMU_DEVICES=2 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 60 mpirun "
      "-np 2 --oversubscribe -x KDEMU_DEVICES " +
      std::filesystem::read_symlink("/proc/self/exe").string() +
      " --gtest_filter=EmuNccl.CollectivesMatchHostSums");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("emu nccl: rank 0 ok"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("emu nccl: rank 1 ok"), std::string::npos) << r.output;
#endif
}

}  // namespace
