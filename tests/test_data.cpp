// Token shards, loading text through the cache, the split and the batch sampler.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/io/data.h"
#include "engine/io/tokenizer.h"

namespace fs = std::filesystem;

namespace {

std::string test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path p = fs::path(KD_BINARY_DIR) / "test_data_tmp" /
                     (std::string(info->test_suite_name()) + "." + info->name());
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A raw shard built byte by byte, independent of write_shard.
std::string raw_shard(int32_t magic, int32_t version, int32_t count,
                      const std::vector<uint16_t>& tokens) {
  std::string s(1024, '\0');
  auto put = [&](size_t at, int32_t v) {
    for (int i = 0; i < 4; ++i)
      s[at + i] = static_cast<char>((static_cast<uint32_t>(v) >> (8 * i)));
  };
  put(0, magic);
  put(4, version);
  put(8, count);
  for (const uint16_t t : tokens) {
    s.push_back(static_cast<char>(t & 0xFF));
    s.push_back(static_cast<char>(t >> 8));
  }
  return s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const kd::InputError& e) {
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Byte-level, but with an end-of-text id and a count of encode() calls.
class CountingTokenizer : public kd::Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override {
    ++calls;
    return bytes_.encode(text);
  }
  std::string decode(std::span<const int32_t> ids) const override { return bytes_.decode(ids); }
  int vocab_size() const override { return 257; }
  int eot() const override { return 256; }
  std::string name() const override { return "counting"; }
  uint64_t fingerprint() const override { return 42; }
  mutable std::atomic<int> calls{0};

 private:
  kd::ByteTokenizer bytes_;
};

std::vector<uint16_t> iota_tokens(size_t n, uint16_t first = 0) {
  std::vector<uint16_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

}  // namespace

// ---- shards ----

TEST(Shard, WritesTheLlmcLayout) {
  const std::string dir = test_dir();
  const std::vector<uint16_t> toks = {0, 1, 255, 256, 50256, 65535};
  kd::write_shard(dir + "/a.bin", toks);
  EXPECT_EQ(slurp(dir + "/a.bin"), raw_shard(20240520, 1, 6, toks));
  EXPECT_EQ(kd::read_shard(dir + "/a.bin"), toks);
  EXPECT_EQ(kd::read_shard(dir + "/a.bin", 65536), toks);

  kd::write_shard(dir + "/empty.bin", {});
  EXPECT_EQ(fs::file_size(dir + "/empty.bin"), 1024u);
  EXPECT_TRUE(kd::read_shard(dir + "/empty.bin").empty());

  std::vector<uint16_t> wrapped(140000);  // more than one internal write chunk
  for (size_t i = 0; i < wrapped.size(); ++i) wrapped[i] = static_cast<uint16_t>(i * 7919u);
  kd::write_shard(dir + "/big.bin", wrapped);
  EXPECT_EQ(kd::read_shard(dir + "/big.bin"), wrapped);
}

TEST(Shard, ErrorsNameThePathAndTheProblem) {
  const std::string dir = test_dir();
  const std::vector<uint16_t> toks = {1, 2, 3};

  spit(dir + "/short.bin", std::string(100, '\0'));
  std::string msg = error_of([&] { kd::read_shard(dir + "/short.bin"); });
  EXPECT_TRUE(contains(msg, "short.bin") && contains(msg, "100") && contains(msg, "header")) << msg;

  spit(dir + "/magic.bin", raw_shard(12345, 1, 3, toks));
  msg = error_of([&] { kd::read_shard(dir + "/magic.bin"); });
  EXPECT_TRUE(contains(msg, "magic.bin") && contains(msg, "magic") && contains(msg, "12345"))
      << msg;

  spit(dir + "/version.bin", raw_shard(20240520, 2, 3, toks));
  msg = error_of([&] { kd::read_shard(dir + "/version.bin"); });
  EXPECT_TRUE(contains(msg, "version.bin") && contains(msg, "version 2")) << msg;

  spit(dir + "/count.bin", raw_shard(20240520, 1, 4, toks));  // says 4, holds 3
  msg = error_of([&] { kd::read_shard(dir + "/count.bin"); });
  EXPECT_TRUE(contains(msg, "count.bin") && contains(msg, "4 tokens") && contains(msg, "1032") &&
              contains(msg, "1030"))
      << msg;

  spit(dir + "/extra.bin", raw_shard(20240520, 1, 2, toks));  // says 2, holds 3
  msg = error_of([&] { kd::read_shard(dir + "/extra.bin"); });
  EXPECT_TRUE(contains(msg, "extra.bin") && contains(msg, "1028") && contains(msg, "1030")) << msg;

  spit(dir + "/negative.bin", raw_shard(20240520, 1, -1, {}));
  EXPECT_TRUE(contains(error_of([&] { kd::read_shard(dir + "/negative.bin"); }), "-1 tokens"));

  kd::write_shard(dir + "/vocab.bin", std::vector<uint16_t>{5, 300, 2});
  msg = error_of([&] { kd::read_shard(dir + "/vocab.bin", 256); });
  EXPECT_TRUE(contains(msg, "vocab.bin") && contains(msg, "300") && contains(msg, "256")) << msg;
  EXPECT_EQ(kd::read_shard(dir + "/vocab.bin", 301).size(), 3u);

  msg = error_of([&] { kd::read_shard(dir + "/missing.bin"); });
  EXPECT_TRUE(contains(msg, "missing.bin")) << msg;

  msg = error_of([&] { kd::write_shard(dir + "/no/such/dir/x.bin", toks); });
  EXPECT_TRUE(contains(msg, "x.bin")) << msg;
}

// ---- loading ----

TEST(LoadTokens, TextFileWithByteTokenizer) {
  const std::string dir = test_dir();
  const char raw[] = "To be, or not to be\n\xff\x00 tail";
  const std::string text(raw, sizeof raw - 1);  // with the NUL byte
  spit(dir + "/in.txt", text);
  kd::ByteTokenizer tok;
  const kd::TokenSource src = kd::load_tokens(dir + "/in.txt", tok, "");
  ASSERT_EQ(src.tokens.size(), text.size());
  for (size_t i = 0; i < text.size(); ++i) EXPECT_EQ(src.tokens[i], static_cast<uint8_t>(text[i]));
  EXPECT_TRUE(src.tokenized);
  EXPECT_TRUE(src.cache_path.empty());
}

TEST(LoadTokens, DirectoryJoinsSortedVisibleFilesWithSeparators) {
  const std::string dir = test_dir();
  fs::create_directories(dir + "/corpus/sub");
  spit(dir + "/corpus/b.txt", "BB");
  spit(dir + "/corpus/a.txt", "A");
  spit(dir + "/corpus/c", "C");
  spit(dir + "/corpus/.hidden", "HIDDEN");
  spit(dir + "/corpus/sub/d.txt", "SUB");

  CountingTokenizer eot_tok;  // has an EOT: 256 between documents
  const auto with_eot = kd::load_tokens(dir + "/corpus", eot_tok, "").tokens;
  EXPECT_EQ(with_eot, (std::vector<uint16_t>{'A', 256, 'B', 'B', 256, 'C'}));

  kd::ByteTokenizer bytes;  // none: a newline between documents
  const auto with_nl = kd::load_tokens(dir + "/corpus", bytes, "").tokens;
  EXPECT_EQ(with_nl, (std::vector<uint16_t>{'A', '\n', 'B', 'B', '\n', 'C'}));
}

TEST(LoadTokens, CacheHitSkipsTokenizing) {
  const std::string dir = test_dir();
  const std::string cache = dir + "/cache/nested";
  spit(dir + "/in.txt", "the quick brown fox");
  CountingTokenizer tok;

  const kd::TokenSource first = kd::load_tokens(dir + "/in.txt", tok, cache);
  EXPECT_TRUE(first.tokenized);
  EXPECT_EQ(tok.calls, 1);
  ASSERT_TRUE(fs::is_regular_file(first.cache_path));
  EXPECT_EQ(kd::read_shard(first.cache_path), first.tokens);
  const auto mtime = fs::last_write_time(first.cache_path);
  // Nothing but the shard is left in the cache folder (no temp files).
  EXPECT_EQ(std::distance(fs::directory_iterator(cache), fs::directory_iterator()), 1);

  const kd::TokenSource second = kd::load_tokens(dir + "/in.txt", tok, cache);
  EXPECT_FALSE(second.tokenized);
  EXPECT_EQ(tok.calls, 1);
  EXPECT_EQ(second.cache_path, first.cache_path);
  EXPECT_EQ(second.tokens, first.tokens);
  EXPECT_EQ(fs::last_write_time(first.cache_path), mtime);

  // A different tokenizer is a different cache entry.
  kd::ByteTokenizer bytes;
  const kd::TokenSource other = kd::load_tokens(dir + "/in.txt", bytes, cache);
  EXPECT_TRUE(other.tokenized);
  EXPECT_NE(other.cache_path, first.cache_path);

  // Changing the text invalidates the entry.
  spit(dir + "/in.txt", "the quick brown fox jumps");
  const kd::TokenSource third = kd::load_tokens(dir + "/in.txt", tok, cache);
  EXPECT_TRUE(third.tokenized);
  EXPECT_EQ(tok.calls, 2);
  EXPECT_NE(third.cache_path, first.cache_path);
  EXPECT_EQ(third.tokens.size(), 25u);

  // A damaged entry is rebuilt, not trusted.
  spit(third.cache_path, "garbage");
  const kd::TokenSource fourth = kd::load_tokens(dir + "/in.txt", tok, cache);
  EXPECT_TRUE(fourth.tokenized);
  EXPECT_EQ(fourth.tokens, third.tokens);
  EXPECT_EQ(kd::read_shard(fourth.cache_path), third.tokens);
}

TEST(LoadTokens, ShardIsReadDirectlyAndChecked) {
  const std::string dir = test_dir();
  const std::vector<uint16_t> toks = {10, 20, 30, 40};
  kd::write_shard(dir + "/train.bin", toks);
  CountingTokenizer tok;
  const kd::TokenSource src = kd::load_tokens(dir + "/train.bin", tok, dir + "/cache");
  EXPECT_EQ(src.tokens, toks);
  EXPECT_FALSE(src.tokenized);
  EXPECT_EQ(tok.calls, 0);
  EXPECT_FALSE(fs::exists(dir + "/cache"));

  kd::write_shard(dir + "/big_ids.bin", std::vector<uint16_t>{1, 400});
  EXPECT_TRUE(contains(error_of([&] { kd::load_tokens(dir + "/big_ids.bin", tok, ""); }), "400"));
}

TEST(LoadTokens, EmptyOrMissingInputIsAnError) {
  const std::string dir = test_dir();
  kd::ByteTokenizer tok;
  std::string msg = error_of([&] { kd::load_tokens(dir + "/nothing.txt", tok, ""); });
  EXPECT_TRUE(contains(msg, "nothing.txt") && contains(msg, "does not exist")) << msg;

  spit(dir + "/empty.txt", "");
  msg = error_of([&] { kd::load_tokens(dir + "/empty.txt", tok, ""); });
  EXPECT_TRUE(contains(msg, "empty.txt") && contains(msg, "no text")) << msg;

  fs::create_directories(dir + "/hollow");
  spit(dir + "/hollow/.only_hidden", "x");
  msg = error_of([&] { kd::load_tokens(dir + "/hollow", tok, ""); });
  EXPECT_TRUE(contains(msg, "hollow") && contains(msg, "no regular")) << msg;

  fs::create_directories(dir + "/blank");
  spit(dir + "/blank/a", "");
  spit(dir + "/blank/b", "");
  msg = error_of([&] { kd::load_tokens(dir + "/blank", tok, ""); });
  EXPECT_TRUE(contains(msg, "no text")) << msg;

  kd::write_shard(dir + "/zero.bin", {});
  msg = error_of([&] { kd::load_tokens(dir + "/zero.bin", tok, ""); });
  EXPECT_TRUE(contains(msg, "zero.bin") && contains(msg, "no tokens")) << msg;
}

TEST(LoadTokens, TinyShakespeareWithGpt2MatchesFixtureCount) {
  const std::string data = KD_SHARED_DATA;
  const std::string text = data + "/tinyshakespeare/input.txt";
  if (!fs::exists(text) || !fs::exists(data + "/gpt2-bpe/encoder.json")) {
    GTEST_SKIP() << "shared corpora not found under " << data;
  }
  const auto tok = kd::make_tokenizer(kd::TokenizerKind::Gpt2, data + "/gpt2-bpe/encoder.json",
                                      data + "/gpt2-bpe/vocab.bpe");
  const std::string cache = test_dir() + "/cache";
  const auto a = kd::load_tokens(text, *tok, cache);
  const auto b = kd::load_tokens(text, *tok, cache);
  EXPECT_TRUE(a.tokenized);
  EXPECT_FALSE(b.tokenized);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.tokens.size(), 338025u);  // tests/fixtures/tokenizer_tinyshakespeare.json "count"
}

// ---- split ----

TEST(Split, LastFractionIsValidation) {
  const std::vector<uint16_t> toks = iota_tokens(1000);
  const kd::TokenSplit s = kd::split_tokens(toks, 0.1);
  ASSERT_EQ(s.val.size(), 100u);
  ASSERT_EQ(s.train.size(), 900u);
  EXPECT_EQ(s.train.front(), 0);
  EXPECT_EQ(s.train.back(), 899);
  EXPECT_EQ(s.val.front(), 900);
  EXPECT_EQ(s.val.back(), 999);

  const kd::TokenSplit again = kd::split_tokens(toks, 0.1);
  EXPECT_EQ(again.train, s.train);
  EXPECT_EQ(again.val, s.val);

  EXPECT_EQ(kd::split_tokens(iota_tokens(999), 0.1).val.size(), 99u);  // floor(99.9)
  EXPECT_TRUE(kd::split_tokens(toks, 0.0).val.empty());
  EXPECT_THROW(kd::split_tokens(toks, 1.0), kd::InputError);
  EXPECT_THROW(kd::split_tokens(toks, -0.1), kd::InputError);
  EXPECT_THROW(kd::split_tokens(toks, std::nan("")), kd::InputError);
}

// ---- sampler ----

TEST(Sampler, WindowsAreContiguousShiftedAndInRange) {
  const size_t n = 50;
  const int B = 8, T = 6;
  kd::BatchSampler s(iota_tokens(n, 1000), {}, 1);
  std::vector<int32_t> x(B * T), y(B * T);
  std::set<int> starts;
  for (int step = 0; step < 500; ++step) {
    s.next(B, T, x.data(), y.data());
    for (int b = 0; b < B; ++b) {
      const int start = x[b * T] - 1000;
      ASSERT_GE(start, 0);
      ASSERT_LE(start, static_cast<int>(n) - T - 1);
      starts.insert(start);
      for (int t = 0; t < T; ++t) {
        ASSERT_EQ(x[b * T + t], 1000 + start + t);
        ASSERT_EQ(y[b * T + t], x[b * T + t] + 1);
      }
    }
  }
  EXPECT_EQ(starts.size(), n - T);  // every start, the first and the last included
}

TEST(Sampler, SameSeedSameBatchesAndExactResume) {
  const auto toks = iota_tokens(10000);
  const int B = 4, T = 16;
  kd::BatchSampler a(toks, {}, 42), b(toks, {}, 42), c(toks, {}, 43);
  std::vector<int32_t> xa(B * T), ya(B * T), xb(B * T), yb(B * T), xc(B * T), yc(B * T);
  bool differs = false;
  for (int step = 0; step < 20; ++step) {
    a.next(B, T, xa.data(), ya.data());
    b.next(B, T, xb.data(), yb.data());
    c.next(B, T, xc.data(), yc.data());
    ASSERT_EQ(xa, xb);
    ASSERT_EQ(ya, yb);
    differs |= xa != xc;
  }
  EXPECT_TRUE(differs);

  const uint64_t saved = a.state();
  std::vector<std::vector<int32_t>> expected;
  for (int step = 0; step < 10; ++step) {
    a.next(B, T, xa.data(), ya.data());
    expected.push_back(xa);
  }
  kd::BatchSampler resumed(toks, {}, 999);
  resumed.set_state(saved);
  for (int step = 0; step < 10; ++step) {
    resumed.next(B, T, xb.data(), yb.data());
    ASSERT_EQ(xb, expected[step]) << "step " << step;
  }
}

TEST(Sampler, EvalBatchesAreFixedBackToBackWindows) {
  const int B = 3, T = 5;
  const size_t n_val = 53;  // W = floor(52 / 5) = 10 windows
  kd::BatchSampler s(iota_tokens(100), iota_tokens(n_val, 2000), 7);
  EXPECT_EQ(s.eval_batch_count(B, T), 4);  // ceil(10 / 3)
  std::vector<int32_t> x(B * T), y(B * T), x2(B * T), y2(B * T);
  for (int index = 0; index < 6; ++index) {
    s.eval_batch(index, B, T, x.data(), y.data());
    for (int b = 0; b < B; ++b) {
      const int window = (index * B + b) % 10;
      for (int t = 0; t < T; ++t) {
        ASSERT_EQ(x[b * T + t], 2000 + window * T + t);
        ASSERT_EQ(y[b * T + t], 2000 + window * T + t + 1);
      }
    }
  }
  // Drawing training batches in between changes nothing.
  s.eval_batch(2, B, T, x.data(), y.data());
  std::vector<int32_t> tx(B * T), ty(B * T);
  s.next(B, T, tx.data(), ty.data());
  s.eval_batch(2, B, T, x2.data(), y2.data());
  EXPECT_EQ(x, x2);
  EXPECT_EQ(y, y2);
}

TEST(Sampler, TooFewTokensIsAClearError) {
  kd::BatchSampler s(iota_tokens(8), iota_tokens(4), 0);
  std::vector<int32_t> x(64), y(64);
  s.next(1, 7, x.data(), y.data());  // exactly T+1 tokens: fine
  EXPECT_EQ(x[0], 0);
  std::string msg = error_of([&] { s.next(1, 8, x.data(), y.data()); });
  EXPECT_TRUE(contains(msg, "train") && contains(msg, "8 tokens") && contains(msg, "T+1 = 9"))
      << msg;
  msg = error_of([&] { s.eval_batch(0, 1, 4, x.data(), y.data()); });
  EXPECT_TRUE(contains(msg, "val") && contains(msg, "4 tokens")) << msg;
  EXPECT_THROW(s.next(0, 4, x.data(), y.data()), kd::ContractError);  // B = 0: a caller's bug
  kd::BatchSampler no_val(iota_tokens(8), {}, 0);
  EXPECT_THROW(no_val.eval_batch_count(1, 2), kd::InputError);
}
