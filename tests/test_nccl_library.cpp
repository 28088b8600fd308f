// NCCL is loaded at run time (engine/train/nccl_comm.cpp): a CUDA build of kdengine does not link
// libnccl, so it starts where NCCL is not installed, and loads libnccl.so.2 when a multi-rank GPU
// run creates its communicator. NCCL loads without a GPU or driver, so this runs on any machine
// with a build that has NCCL (CUDA, MPI and nccl.h found); skipped otherwise.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/train/nccl_comm.h"

namespace {

bool nccl_mapped() {
  std::ifstream f("/proc/self/maps");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str().find("libnccl") != std::string::npos;
}

TEST(NcclLibrary, IsLoadedOnFirstUseAndReportsItsVersion) {
  if (!kd::nccl::built()) GTEST_SKIP() << "built without NCCL (needs CUDA, MPI and nccl.h)";
  EXPECT_FALSE(nccl_mapped()) << "libnccl is loaded before anything asked for it";
  const int v = kd::nccl::library_version();
  std::printf("NCCL version code %d\n", v);
  EXPECT_GE(v, 21900);  // 2.19: the oldest with every call nccl_comm.cpp resolves
  EXPECT_TRUE(nccl_mapped());
}

}  // namespace
