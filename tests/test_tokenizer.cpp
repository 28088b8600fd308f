// Tokenizers: GPT-2 BPE against fixtures made by an independent implementation
// (tools/make_tokenizer_fixture.py), round trips on arbitrary bytes, and file errors.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/json.h"
#include "engine/io/tokenizer.h"

namespace fs = std::filesystem;

namespace {

const std::string kBpeDir = std::string(KD_SHARED_DATA) + "/gpt2-bpe";
const std::string kShakespeare = std::string(KD_SHARED_DATA) + "/tinyshakespeare/input.txt";

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void spit(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

bool have_gpt2_files() {
  return fs::exists(kBpeDir + "/encoder.json") && fs::exists(kBpeDir + "/vocab.bpe");
}

// Loaded once for the whole binary (it reads about 1.5 MB of vocabulary).
const kd::Gpt2Tokenizer& gpt2() {
  static const kd::Gpt2Tokenizer tok(kBpeDir + "/encoder.json", kBpeDir + "/vocab.bpe");
  return tok;
}

#define REQUIRE_GPT2() \
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir

std::string tmp_dir(const std::string& name) {
  const fs::path p = fs::path(KD_BINARY_DIR) / "test_tokenizer_tmp" / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// FNV-1a 64 over each id as four little-endian bytes (the fixture's definition).
uint64_t hash_ids(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const int32_t id : ids) {
    const auto u = static_cast<uint32_t>(id);
    for (int i = 0; i < 4; ++i) {
      h ^= (u >> (8 * i)) & 0xFFu;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

// Random bytes drawn to hit the interesting cases: ASCII letters, digits, spaces, newlines,
// apostrophes, well-formed multi-byte characters and arbitrary (often invalid) bytes.
std::string random_bytes(std::mt19937_64& g, size_t len) {
  static const char* kPieces[] = {"a",
                                  "Z",
                                  "7",
                                  " ",
                                  "  ",
                                  "\n",
                                  "\t",
                                  "'",
                                  "'s",
                                  "'ll",
                                  "!",
                                  "\xc3\xa9",
                                  "\xe6\x97\xa5",
                                  "\xf0\x9f\x98\x80",
                                  "\xcc\x81",
                                  "\xe2\x80\x83",
                                  "\xc2\xa0"};
  std::string s;
  while (s.size() < len) {
    const auto r = g() % 4;
    if (r == 0) {
      s.push_back(static_cast<char>(g() & 0xFF));  // anything, including invalid UTF-8
    } else if (r == 1) {
      s.push_back(static_cast<char>(0x80 + g() % 0x80));  // a lone continuation or lead byte
    } else {
      s += kPieces[g() % (sizeof kPieces / sizeof *kPieces)];
    }
  }
  return s;
}

}  // namespace

TEST(Gpt2Tokenizer, MatchesReferenceOnTinyShakespeare) {
  REQUIRE_GPT2();
  if (!fs::exists(kShakespeare)) GTEST_SKIP() << "TinyShakespeare not found at " << kShakespeare;
  const kd::Json fx = kd::Json::parse(
      slurp(std::string(KD_SOURCE_DIR) + "/tests/fixtures/tokenizer_tinyshakespeare.json"));
  const std::string text = slurp(kShakespeare);
  ASSERT_EQ(static_cast<int64_t>(text.size()), fx.at("bytes").as_int());

  const std::vector<int32_t> ids = gpt2().encode(text);
  ASSERT_EQ(static_cast<int64_t>(ids.size()), fx.at("count").as_int());
  const auto& first = fx.at("first").items();
  for (size_t i = 0; i < first.size(); ++i) {
    ASSERT_EQ(ids[i], first[i].as_int()) << "token " << i;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash_ids(ids)));
  EXPECT_EQ(std::string(hex), fx.at("fnv1a64_le_int32").as_string());
  EXPECT_EQ(gpt2().decode(ids), text);
}

TEST(Gpt2Tokenizer, MatchesReferenceOnTrickyStrings) {
  REQUIRE_GPT2();
  const kd::Json fx =
      kd::Json::parse(slurp(std::string(KD_SOURCE_DIR) + "/tests/fixtures/tokenizer_tricky.json"));
  ASSERT_GT(fx.size(), 20u);
  for (const kd::Json& c : fx.items()) {
    const std::string& text = c.at("text").as_string();
    std::vector<int32_t> want;
    for (const kd::Json& v : c.at("ids").items()) want.push_back(static_cast<int32_t>(v.as_int()));
    EXPECT_EQ(gpt2().encode(text), want) << "text: " << kd::json_quote(text);
    EXPECT_EQ(gpt2().decode(want), text);
  }
}

TEST(Gpt2Tokenizer, EndOfTextIsOrdinaryText) {
  REQUIRE_GPT2();
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2().eot(), 50256);
  EXPECT_EQ(gpt2().name(), "gpt2");
  const auto ids = gpt2().encode("a<|endoftext|>b");
  EXPECT_GT(ids.size(), 3u);
  for (const int32_t id : ids) EXPECT_NE(id, 50256);
  const int32_t eot = 50256;
  EXPECT_EQ(gpt2().decode(std::span<const int32_t>(&eot, 1)), "<|endoftext|>");
}

TEST(Gpt2Tokenizer, RoundTripsArbitraryBytes) {
  REQUIRE_GPT2();
  std::mt19937_64 g(12345);
  for (int trial = 0; trial < 3000; ++trial) {
    const std::string s = random_bytes(g, g() % 96);
    const auto ids = gpt2().encode(s);
    for (const int32_t id : ids) ASSERT_TRUE(id >= 0 && id < gpt2().vocab_size());
    ASSERT_EQ(gpt2().decode(ids), s) << "trial " << trial;
  }
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(gpt2().decode(gpt2().encode(all)), all);
  // A long run of one character stays fast and exact.
  const std::string spaces(20000, ' ');
  EXPECT_EQ(gpt2().decode(gpt2().encode(spaces + "x")), spaces + "x");
}

TEST(Gpt2Tokenizer, DecodeRejectsOutOfRangeIds) {
  REQUIRE_GPT2();
  const std::vector<int32_t> bad = {15496, 50257};
  EXPECT_THROW(gpt2().decode(bad), kd::InputError);
  const std::vector<int32_t> neg = {-1};
  EXPECT_THROW(gpt2().decode(neg), kd::InputError);
}

// Pre-tokenization expectations worked out by hand from the pattern
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
TEST(Gpt2Pretokenize, FollowsThePattern) {
  using V = std::vector<std::string_view>;
  auto pre = [](std::string_view s) { return kd::Gpt2Tokenizer::pretokenize(s); };
  EXPECT_EQ(pre(""), V{});
  EXPECT_EQ(pre("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pre("I'm here"), (V{"I", "'m", " here"}));
  EXPECT_EQ(pre("they'll we've"), (V{"they", "'ll", " we", "'ve"}));
  EXPECT_EQ(pre("'S"), (V{"'", "S"}));  // contractions are case-sensitive
  EXPECT_EQ(pre("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(pre("a\n\nb"), (V{"a", "\n", "\n", "b"}));
  EXPECT_EQ(pre("a   "), (V{"a", "   "}));
  EXPECT_EQ(pre(" 42x"), (V{" 42", "x"}));
  EXPECT_EQ(pre("x!?  y"), (V{"x", "!?", " ", " y"}));
  EXPECT_EQ(pre(" !!"), (V{" !!"}));
  EXPECT_EQ(pre("\t x"), (V{"\t", " x"}));
  // U+00E9 is a letter, U+0661 (Arabic-Indic one) a number, U+3000 whitespace.
  EXPECT_EQ(pre("caf\xc3\xa9 \xd9\xa1\xd9\xa2"), (V{"caf\xc3\xa9", " \xd9\xa1\xd9\xa2"}));
  EXPECT_EQ(pre("a\xe3\x80\x80\xe3\x80\x80"
                "b"),
            (V{"a", "\xe3\x80\x80", "\xe3\x80\x80", "b"}));
}

TEST(Gpt2Pretokenize, InvalidUtf8BytesAreOtherCharacters) {
  using V = std::vector<std::string_view>;
  auto pre = [](std::string_view s) { return kd::Gpt2Tokenizer::pretokenize(s); };
  EXPECT_EQ(pre("\xff\xfe abc"), (V{"\xff\xfe", " abc"}));
  EXPECT_EQ(pre("caf\xc3"), (V{"caf", "\xc3"}));                        // truncated sequence
  EXPECT_EQ(pre("x\xc0\x80y"), (V{"x", "\xc0\x80", "y"}));              // overlong NUL
  EXPECT_EQ(pre("x\xed\xa0\x80y"), (V{"x", "\xed\xa0\x80", "y"}));      // a surrogate
  EXPECT_EQ(pre("x \xf4\x90\x80\x80"), (V{"x", " \xf4\x90\x80\x80"}));  // above U+10FFFF
  EXPECT_EQ(pre("\xc3\xa9\xa9"), (V{"\xc3\xa9", "\xa9"}));              // letter then a stray byte
}

TEST(ByteTokenizer, IdentityOnBytes) {
  kd::ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.eot(), -1);
  EXPECT_EQ(tok.name(), "bytes");
  std::mt19937_64 g(7);
  for (int trial = 0; trial < 200; ++trial) {
    const std::string s = random_bytes(g, g() % 200);
    const auto ids = tok.encode(s);
    ASSERT_EQ(ids.size(), s.size());
    for (size_t i = 0; i < s.size(); ++i) ASSERT_EQ(ids[i], static_cast<unsigned char>(s[i]));
    ASSERT_EQ(tok.decode(ids), s);
  }
  const std::vector<int32_t> bad = {65, 256};
  EXPECT_THROW(tok.decode(bad), kd::InputError);
}

// A tiny hand-made vocabulary: the 256 single bytes plus three merges, to check the merge order
// and every loading error without the real files.
class TinyVocab : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    // GPT-2's byte alphabet, written out independently of the engine.
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      alpha_[b] = utf8(printable ? b : next++);
    }
    std::string enc = "{";
    for (int b = 0; b < 256; ++b)
      enc += kd::json_quote(alpha_[b]) + ": " + std::to_string(b) + ", ";
    enc += "\"bc\": 256, \"ab\": 257, \"abc\": 258, \"<|endoftext|>\": 259}";
    encoder_ = dir_ + "/encoder.json";
    spit(encoder_, enc);
    merges_ = dir_ + "/vocab.bpe";
    spit(merges_, "#version: 0.2\nb c\na b\na bc\n");
  }
  static std::string utf8(int cp) {
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    return s;
  }
  std::string error_of(const std::string& enc, const std::string& merges) {
    try {
      kd::make_tokenizer(kd::TokenizerKind::Gpt2, enc, merges);
    } catch (const kd::InputError& e) {
      return e.what();
    }
    return "(no error)";
  }

  std::string dir_, encoder_, merges_;
  std::string alpha_[256];
};

TEST_F(TinyVocab, MergesByRank) {
  const auto tok = kd::make_tokenizer(kd::TokenizerKind::Gpt2, encoder_, merges_);
  EXPECT_EQ(tok->vocab_size(), 260);
  EXPECT_EQ(tok->eot(), 259);
  // "abc": (b,c) has rank 0 so it merges before (a,b); then (a,bc) makes abc.
  EXPECT_EQ(tok->encode("abc"), (std::vector<int32_t>{258}));
  EXPECT_EQ(tok->encode("abab"), (std::vector<int32_t>{257, 257}));
  // "abcbc": bc merges twice (leftmost first), then a+bc.
  EXPECT_EQ(tok->encode("abcbc"), (std::vector<int32_t>{258, 256}));
  EXPECT_EQ(tok->encode("ab c"), (std::vector<int32_t>{257, ' ', 'c'}));
  EXPECT_EQ(tok->encode("\n"), (std::vector<int32_t>{'\n'}));
}

TEST_F(TinyVocab, ErrorsNameTheFile) {
  std::string msg = error_of(dir_ + "/missing.json", merges_);
  EXPECT_NE(msg.find("missing.json"), std::string::npos) << msg;

  spit(dir_ + "/bad.json", "{\"a\": 0,");
  msg = error_of(dir_ + "/bad.json", merges_);
  EXPECT_NE(msg.find("bad.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed JSON"), std::string::npos) << msg;

  spit(dir_ + "/few.json", "{\"a\": 0, \"b\": 1}");
  msg = error_of(dir_ + "/few.json", merges_);
  EXPECT_NE(msg.find("no token for byte"), std::string::npos) << msg;

  spit(dir_ + "/bad1.bpe", "#version: 0.2\nb c\nabc\n");
  msg = error_of(encoder_, dir_ + "/bad1.bpe");
  EXPECT_NE(msg.find("bad1.bpe:3:"), std::string::npos) << msg;

  spit(dir_ + "/bad2.bpe", "b c\nc a\n");  // "ca" is not in the vocabulary
  msg = error_of(encoder_, dir_ + "/bad2.bpe");
  EXPECT_NE(msg.find("bad2.bpe:2:"), std::string::npos) << msg;

  msg = error_of(encoder_, dir_ + "/nope.bpe");
  EXPECT_NE(msg.find("nope.bpe"), std::string::npos) << msg;
}

// A kind is parsed once from its word (recipes, checkpoints); each tokenizer calls itself by that
// same word, which also names its token cache files.
TEST_F(TinyVocab, KindsAreSpelledOneWay) {
  EXPECT_STREQ(kd::to_string(kd::TokenizerKind::Bytes), "bytes");
  EXPECT_STREQ(kd::to_string(kd::TokenizerKind::Gpt2), "gpt2");
  for (const kd::TokenizerKind k : {kd::TokenizerKind::Bytes, kd::TokenizerKind::Gpt2}) {
    const auto tok = kd::make_tokenizer(k, encoder_, merges_);
    EXPECT_EQ(tok->name(), kd::to_string(k));
    EXPECT_EQ(kd::parse_choice<kd::TokenizerKind>(tok->name()), k);
  }
  for (const char* word : {"sentencepiece", "byte", "Bytes", ""})
    EXPECT_FALSE(kd::parse_choice<kd::TokenizerKind>(word).has_value()) << word;
}
