// Tokenizer throughput. The GPT-2 benchmarks read the vocabulary and TinyShakespeare from the
// shared corpora folder: $KD_SHARED_DATA, else ../shared/data relative to the working directory.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "engine/io/tokenizer.h"

namespace {

std::string shared_data() {
  const char* env = std::getenv("KD_SHARED_DATA");
  return env ? env : "../shared/data";
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const std::string& corpus() {
  static const std::string text = slurp(shared_data() + "/tinyshakespeare/input.txt");
  return text;
}

// Loaded once; null when the files are missing.
const kd::Tokenizer* gpt2() {
  static std::unique_ptr<kd::Tokenizer> tok = [] {
    const std::string dir = shared_data() + "/gpt2-bpe";
    if (!std::filesystem::exists(dir + "/encoder.json")) return std::unique_ptr<kd::Tokenizer>();
    return kd::make_tokenizer(kd::TokenizerKind::Gpt2, dir + "/encoder.json", dir + "/vocab.bpe");
  }();
  return tok.get();
}

void BM_Gpt2Encode(benchmark::State& state) {
  if (!gpt2() || corpus().empty()) {
    state.SkipWithError("shared corpora not found (set KD_SHARED_DATA)");
    return;
  }
  size_t tokens = 0;
  for (auto _ : state) {
    const auto ids = gpt2()->encode(corpus());
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * corpus().size()));
  state.counters["tokens"] = static_cast<double>(tokens);
}
BENCHMARK(BM_Gpt2Encode)->Unit(benchmark::kMillisecond);

void BM_Gpt2Decode(benchmark::State& state) {
  if (!gpt2() || corpus().empty()) {
    state.SkipWithError("shared corpora not found (set KD_SHARED_DATA)");
    return;
  }
  const auto ids = gpt2()->encode(corpus());
  for (auto _ : state) benchmark::DoNotOptimize(gpt2()->decode(ids));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * corpus().size()));
}
BENCHMARK(BM_Gpt2Decode)->Unit(benchmark::kMillisecond);

void BM_Gpt2Load(benchmark::State& state) {
  const std::string dir = shared_data() + "/gpt2-bpe";
  if (!std::filesystem::exists(dir + "/encoder.json")) {
    state.SkipWithError("GPT-2 vocabulary not found (set KD_SHARED_DATA)");
    return;
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        kd::make_tokenizer(kd::TokenizerKind::Gpt2, dir + "/encoder.json", dir + "/vocab.bpe"));
  }
}
BENCHMARK(BM_Gpt2Load)->Unit(benchmark::kMillisecond);

void BM_PretokenizeOnly(benchmark::State& state) {
  if (corpus().empty()) {
    state.SkipWithError("TinyShakespeare not found (set KD_SHARED_DATA)");
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(kd::Gpt2Tokenizer::pretokenize(corpus()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * corpus().size()));
}
BENCHMARK(BM_PretokenizeOnly)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
