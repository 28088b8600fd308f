// `kdengine eval` goes through the chunked LM head + loss (lm_head_kd_loss): at GPT-2's vocabulary
// the automatic chunk is smaller than one evaluation batch, so the binary's numbers come from
// several chunks. They are checked against an independent reference that builds the full logits
// of both models (GPT2::forward_inference) and sums the CE and KL in double precision.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/rng.h"
#include "engine/io/data.h"
#include "engine/io/tokenizer.h"
#include "engine/ops/cpu/ops.h"
#include "model/checkpoint.h"
#include "model/checkpoint_tokenizer.h"
#include "model/gpt2.h"
#include "tests/shell_util.h"

namespace fs = std::filesystem;

namespace {

const fs::path kBpeDir = fs::path(KD_SHARED_DATA) / "gpt2-bpe";
const fs::path kShakespeare = fs::path(KD_SHARED_DATA) / "tinyshakespeare" / "input.txt";

kd::GPT2 random_model(int vocab, int layers, int embd, uint64_t seed) {
  kd::GPT2Config c;
  c.n_layer = layers;
  c.n_head = 2;
  c.n_embd = embd;
  c.vocab_size = vocab;
  c.block_size = 128;
  kd::GPT2 m(c);
  m.init_random(seed);
  return m;
}

// The numbers of the table row that starts with `name` (loss, perplexity, [KL,] tokens).
std::vector<double> row_numbers(const std::string& table, const std::string& name) {
  std::istringstream lines(table);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(name, 0) != 0) continue;
    std::istringstream rest(line.substr(name.size()));
    std::vector<double> v;
    for (double x; rest >> x;) v.push_back(x);
    return v;
  }
  return {};
}

struct RefSums {
  double ce = 0, teacher_ce = 0, kl = 0;
  int64_t rows = 0;
};

// The reference: full logits of both models, log-softmax in double. The student's CE and the
// KL(p_teacher || q_student) at T = 1 over the student's V columns (the teacher's padded columns
// are not part of the distribution), the teacher's CE over its whole vocabulary.
void add_reference(const kd::GPT2& s, const kd::GPT2& t, const int32_t* in, const int32_t* tg,
                   int B, int T, RefSums& r) {
  const int V = s.config().vocab_size, Vt = t.config().vocab_size;
  std::vector<float> ls(size_t(B) * T * V), lt(size_t(B) * T * Vt);
  const_cast<kd::GPT2&>(s).forward_inference(ls.data(), in, B, T);
  const_cast<kd::GPT2&>(t).forward_inference(lt.data(), in, B, T);
  for (int i = 0; i < B * T; ++i) {
    if (tg[i] < 0) continue;
    const float* a = ls.data() + size_t(i) * V;
    const float* b = lt.data() + size_t(i) * Vt;
    auto lse = [](const float* x, int n) {
      double mx = x[0];
      for (int j = 1; j < n; ++j) mx = std::max(mx, double(x[j]));
      double z = 0;
      for (int j = 0; j < n; ++j) z += std::exp(double(x[j]) - mx);
      return mx + std::log(z);
    };
    const double zs = lse(a, V), zt = lse(b, V), ztt = lse(b, Vt);
    r.ce += zs - a[tg[i]];
    r.teacher_ce += ztt - b[tg[i]];
    for (int j = 0; j < V; ++j) {
      const double lp = b[j] - zt, lq = a[j] - zs;
      r.kl += std::exp(lp) * (lp - lq);
    }
    ++r.rows;
  }
}

TEST(EvalChunked, KdengineEvalMatchesTheFullLogitsReference) {
  if (!fs::exists(kBpeDir / "encoder.json") || !fs::exists(kShakespeare))
    GTEST_SKIP() << "GPT-2 vocabulary or Tiny Shakespeare not found under " << KD_SHARED_DATA;
  const fs::path dir = fs::temp_directory_path() / ("kd_eval_chunked_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);

  kd::Gpt2Tokenizer gpt2((kBpeDir / "encoder.json").string(), (kBpeDir / "vocab.bpe").string());
  // A small student, and a teacher whose vocabulary is padded to a multiple of 64 (its extra
  // rows are random, so a head that read them into the student's distribution would be seen).
  kd::GPT2 student = random_model(50257, 1, 16, 11);
  kd::GPT2 teacher = random_model(50304, 2, 32, 12);
  for (const auto& [name, m] : {std::pair{"student", &student}, std::pair{"teacher", &teacher}}) {
    kd::save_model((dir / name).string(), *m);
    kd::save_tokenizer_files((dir / name).string(), gpt2, 128);
  }
  // About 60 KB of text: enough for two batches of 4 x 128 tokens.
  std::string text;
  {
    std::ifstream f(kShakespeare, std::ios::binary);
    text.resize(60000);
    f.read(text.data(), std::streamsize(text.size()));
    text.resize(size_t(f.gcount()));
  }
  std::ofstream(dir / "text.txt", std::ios::binary) << text;

  // kdengine eval evaluates batches of B = 4 windows of the model's block size: 512 rows. The
  // automatic chunk must be smaller, or this test would not see the chunked path.
  const int B = 4, T = 128, batches = 2;
  ASSERT_LT(kd::cpu::lm_head_kd_loss_auto_chunk(B * T, 50257, 50304), B * T);

  const kd::testing::Result r =
      kd::testing::sh(std::string(KD_KDENGINE_BIN) + " eval " + (dir / "student").string() +
                      " --data " + (dir / "text.txt").string() + " --teacher " +
                      (dir / "teacher").string() + " --batches " + std::to_string(batches));
  ASSERT_EQ(r.status, 0) << r.output;

  // The reference, on the same windows (the data layer's eval windows are not under test here).
  const std::vector<uint16_t> tokens =
      kd::load_tokens((dir / "text.txt").string(), gpt2, "").tokens;
  const kd::BatchSampler sampler({}, tokens, 0);
  std::vector<int32_t> in(size_t(B) * T), tg(size_t(B) * T);
  RefSums ref;
  for (int i = 0; i < batches; ++i) {
    sampler.eval_batch(i, B, T, in.data(), tg.data());
    add_reference(student, teacher, in.data(), tg.data(), B, T, ref);
  }
  ASSERT_GT(ref.rows, B * T);
  const double ce = ref.ce / double(ref.rows), tce = ref.teacher_ce / double(ref.rows),
               kl = ref.kl / double(ref.rows);
  // Random GPT-2s are near uniform: CE ~ log(50257) = 10.8. The table prints 4 decimals.
  const std::vector<double> srow = row_numbers(r.output, (dir / "student").string()),
                            trow = row_numbers(r.output, "(teacher) " + (dir / "teacher").string());
  ASSERT_EQ(srow.size(), 4u) << r.output;  // loss, perplexity, KL, tokens
  ASSERT_EQ(trow.size(), 3u) << r.output;  // loss, perplexity, tokens
  EXPECT_NEAR(srow[0], ce, 2e-4) << r.output;
  EXPECT_NEAR(srow[2], kl, 2e-4) << r.output;
  EXPECT_EQ(int64_t(srow[3]), ref.rows) << r.output;
  EXPECT_NEAR(trow[0], tce, 2e-4) << r.output;
  EXPECT_GT(kl, 1e-3) << "the two random models must disagree, or the KL check is empty";
  fs::remove_all(dir);
}

}  // namespace
