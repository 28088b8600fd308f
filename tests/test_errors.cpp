// The exception policy (engine/base/error.h): KD_REQUIRE's ContractError, the exit status and
// message that report_error() gives each kind of error, and that the model's preconditions are
// contract checks (the ops' own are tested beside each op in test_ops, test_kd_loss and
// test_adamw).
#include <gtest/gtest.h>

#include <cstdint>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/rng.h"
#include "model/gpt2.h"

namespace {

// A ContractError is a programming error: a handler for bad input must never catch it.
static_assert(std::is_base_of_v<std::logic_error, kd::ContractError>);
static_assert(!std::is_base_of_v<kd::InputError, kd::ContractError>);
static_assert(!std::is_base_of_v<kd::InputError, kd::CudaError>);
static_assert(std::is_base_of_v<std::runtime_error, kd::CudaError>);

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

int checked_div(int a, int b, int* messages_built) {
  KD_REQUIRE(b != 0, (++*messages_built, "checked_div: b must not be 0, got a=" +
                                             std::to_string(a) + " b=" + std::to_string(b)));
  return a / b;
}

void require_positive(int x) {
  KD_REQUIRE(x > 0, "x must be positive, got " + std::to_string(x));
}
constexpr int kRequirePositiveLine = __LINE__ - 2;

TEST(Require, PassesWithoutBuildingTheMessage) {
  int built = 0;
  EXPECT_EQ(checked_div(7, 2, &built), 3);
  EXPECT_EQ(built, 0);
}

TEST(Require, FailureNamesFileLineConditionAndMessage) {
  EXPECT_NO_THROW(require_positive(1));
  try {
    require_positive(-3);
    FAIL() << "no ContractError";
  } catch (const kd::ContractError& e) {
    // The path is relative to the source tree (the build maps __FILE__).
    EXPECT_EQ(std::string(e.what()),
              "tests/test_errors.cpp:" + std::to_string(kRequirePositiveLine) +
                  ": contract violated: (x > 0): x must be positive, got -3");
  }
  int built = 0;
  try {
    checked_div(7, 0, &built);
    FAIL() << "no ContractError";
  } catch (const kd::ContractError& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(contains(msg, "contract violated: (b != 0)")) << msg;
    EXPECT_TRUE(contains(msg, "checked_div: b must not be 0, got a=7 b=0")) << msg;
  }
  EXPECT_EQ(built, 1);
}

// report_error() is what the command line runs in its catch (...) block.
struct Reported {
  int status = -1;
  std::string text;
};

template <class F>
Reported report(F&& throw_it) {
  Reported r;
  std::ostringstream err;
  try {
    throw_it();
  } catch (...) {
    r.status = kd::report_error(err);
  }
  r.text = err.str();
  return r;
}

TEST(ReportError, InputErrorIsExit2WithTheMessageAlone) {
  const Reported r = report([] { throw kd::InputError("r.toml:3:1: error: unknown key 'x'"); });
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(kd::kExitBadInput, 2);
  EXPECT_EQ(r.text, "r.toml:3:1: error: unknown key 'x'\n");
}

TEST(ReportError, ContractErrorIsExit1AndSaysItIsABug) {
  int built = 0;
  const Reported r = report([&] { checked_div(1, 0, &built); });
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.text, "internal error: ")) << r.text;
  EXPECT_TRUE(contains(r.text, "contract violated: (b != 0)")) << r.text;
  EXPECT_TRUE(contains(r.text, "a bug in kdengine, not in your input")) << r.text;
}

TEST(ReportError, EverythingElseIsExit1) {
  const Reported cuda = report([] { throw kd::CudaError("x.cu:9: cudaMalloc(&p, n) failed"); });
  EXPECT_EQ(cuda.status, 1);
  EXPECT_EQ(cuda.text, "error: x.cu:9: cudaMalloc(&p, n) failed\n");
  const Reported io = report([] { throw std::runtime_error("out/step_000001: write failed"); });
  EXPECT_EQ(io.status, 1);
  EXPECT_EQ(io.text, "error: out/step_000001: write failed\n");
  const Reported oom = report([] { throw std::bad_alloc(); });
  EXPECT_EQ(oom.status, 1);
  EXPECT_TRUE(contains(oom.text, "error: ")) << oom.text;
  const Reported odd = report([] { throw 42; });
  EXPECT_EQ(odd.status, 1);
  EXPECT_EQ(odd.text, "error: an unknown exception\n");
  EXPECT_EQ(kd::kExitFailure, 1);
  EXPECT_EQ(kd::kExitInterrupted, 130);
}

// The model's preconditions: what reaches the model was validated where it was read, so a broken
// one is the engine's bug.
kd::GPT2Config tiny() {
  kd::GPT2Config c;
  c.vocab_size = 11;
  c.block_size = 8;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 8;
  return c;
}

TEST(ModelContracts, BrokenPreconditionsAreContractErrors) {
  kd::GPT2 m(tiny());
  m.init_random(3);
  kd::Rng rng(5);
  std::vector<int32_t> tokens(2 * 4);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng.below(11));
  EXPECT_THROW(m.backward(nullptr), kd::ContractError);  // before enable_training()
  m.enable_training();
  EXPECT_THROW(m.backward(nullptr), kd::ContractError);             // before forward()
  EXPECT_THROW(m.forward(tokens.data(), 1, 9), kd::ContractError);  // T > block_size
  EXPECT_THROW(m.forward(tokens.data(), 0, 4), kd::ContractError);  // B < 1
  std::vector<int32_t> bad = tokens;
  bad[5] = 11;  // outside the vocabulary
  EXPECT_THROW(m.forward(bad.data(), 2, 4), kd::ContractError);
  std::vector<float> out(2 * 4 * 11);
  EXPECT_THROW(m.forward_inference(out.data(), bad.data(), 2, 4), kd::ContractError);
  EXPECT_THROW(m.info("h.0.attn.nope"), kd::ContractError);
  // The same calls with their preconditions met go through.
  EXPECT_NO_THROW(m.forward(tokens.data(), 2, 4));
  EXPECT_NO_THROW(m.forward_inference(out.data(), tokens.data(), 2, 4));
  EXPECT_EQ(m.info("wte.weight").offset, 0u);

  kd::GPT2Config odd = tiny();
  odd.n_head = 3;  // 8 channels do not split into 3 heads
  EXPECT_THROW(kd::GPT2 x(odd), kd::ContractError);
}

}  // namespace
