// The safetensors reader and writer: bitwise round trips, the F16/BF16 conversions against an
// independent decoding (and against files written by PyTorch), and every malformed-file case.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "engine/base/error.h"
#include "engine/base/json.h"
#include "engine/io/safetensors.h"

namespace fs = std::filesystem;

namespace {

// A fresh directory for one test, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() / ("kd_st_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file from a header text and raw data, with the 8-byte length in front.
std::string make_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// Independent decoding of a binary16 pattern: (-1)^s * 2^(e-15) * (1 + m/1024), subnormals
// 2^-14 * (m/1024).
double ref_half(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 31) {
    v = m ? NAN : INFINITY;
  } else if (e == 0) {
    v = std::ldexp(m / 1024.0, -14);
  } else {
    v = std::ldexp(1.0 + m / 1024.0, e - 15);
  }
  return s ? -v : v;
}

// bfloat16: 8 exponent bits (bias 127), 7 mantissa bits.
double ref_bf16(uint16_t h) {
  const int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
  double v;
  if (e == 255) {
    v = m ? NAN : INFINITY;
  } else if (e == 0) {
    v = std::ldexp(m / 128.0, -126);
  } else {
    v = std::ldexp(1.0 + m / 128.0, e - 127);
  }
  return s ? -v : v;
}

// Equal as values, NaN matching NaN, and the sign of zero respected.
void expect_same_value(float got, double want, const std::string& what) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << what;
  } else {
    EXPECT_EQ(static_cast<double>(got), want) << what;
    EXPECT_EQ(std::signbit(got), std::signbit(want)) << what;
  }
}

// Expects an Error (InputError for a bad file, ContractError for bad writer arguments) whose
// message names the path and contains problem.
template <class Error = kd::InputError, class F>
void expect_error(F&& f, const std::string& path, const std::string& problem) {
  try {
    f();
    ADD_FAILURE() << "no error; expected: " << problem;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(problem), std::string::npos) << msg << "\n  expected: " << problem;
  }
}

std::vector<float> random_floats(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace

TEST(Safetensors, RoundTripIsBitwise) {
  TempDir dir;
  std::mt19937 rng(7);
  auto a = random_floats(3 * 5 * 7, rng);
  auto b = random_floats(11, rng);
  auto c = random_floats(1, rng);
  a[4] = -0.0f;
  a[5] = std::numeric_limits<float>::denorm_min();
  b[0] = INFINITY;
  std::vector<kd::TensorView> tensors = {
      {"layer.a", {3, 5, 7}, a.data()},
      {"b", {11}, b.data()},
      {"scalar", {}, c.data()},
      {"empty", {0, 4}, nullptr},
  };
  const std::string path = dir.file("rt.safetensors");
  kd::write_safetensors(path, tensors, {{"format", "pt"}, {"note", "round trip"}});

  kd::SafetensorsFile f(path);
  ASSERT_EQ(f.entries().size(), 4u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "round trip");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& e = f.entries()[i];
    EXPECT_EQ(e.name, tensors[i].name);
    EXPECT_EQ(e.dtype, "F32");
    EXPECT_EQ(e.shape, tensors[i].shape);
    std::vector<float> got = f.read_f32(e.name);
    ASSERT_EQ(got.size(), e.numel());
    if (!got.empty()) {
      EXPECT_EQ(std::memcmp(got.data(), tensors[i].data, got.size() * 4), 0);
    }
  }
  expect_error([&] { f.read_f32("nope"); }, path, "no tensor \"nope\"");
}

TEST(Safetensors, WrittenLayoutFollowsTheFormat) {
  TempDir dir;
  std::mt19937 rng(8);
  auto a = random_floats(6, rng);
  auto b = random_floats(5, rng);
  std::vector<kd::TensorView> tensors = {{"z_first", {2, 3}, a.data()},
                                         {"a_second", {5}, b.data()}};
  const std::string path = dir.file("layout.safetensors");
  kd::write_safetensors(path, tensors);

  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + n + 11 * sizeof(float));
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  EXPECT_EQ(header.find('\n'), std::string::npos);  // compact
  const kd::Json j = kd::Json::parse(header);
  EXPECT_EQ(j.find("__metadata__"), nullptr);
  // Data offsets relative to the data start, in the order given.
  EXPECT_EQ(j.at("z_first").at("data_offsets").dump(), "[0,24]");
  EXPECT_EQ(j.at("a_second").at("data_offsets").dump(), "[24,44]");
  EXPECT_EQ(j.members()[0].first, "z_first");
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + n, a.data(), 24), 0);
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + n + 24, b.data(), 20), 0);
}

TEST(Safetensors, HalfConversionIsExactForEveryPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    expect_same_value(kd::half_to_float(static_cast<uint16_t>(h)), ref_half(h),
                      "f16 " + std::to_string(h));
    expect_same_value(kd::bf16_to_float(static_cast<uint16_t>(h)), ref_bf16(h),
                      "bf16 " + std::to_string(h));
  }
}

// F16 and BF16 files assembled byte by byte here, read back through the reader.
TEST(Safetensors, HandWrittenHalfFilesLoad) {
  TempDir dir;
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> bits(0, 65535);
  std::vector<uint16_t> values = {0x0000, 0x8000, 0x3c00, 0x0001, 0x83ff, 0x7bff,
                                  0x7c00, 0xfc00, 0x7e00, 0x0400, 0x3555};
  while (values.size() < 60) values.push_back(static_cast<uint16_t>(bits(rng)));
  const std::string raw(reinterpret_cast<const char*>(values.data()), values.size() * 2);

  for (const std::string dtype : {"F16", "BF16"}) {
    const std::string header = "{\"__metadata__\":{\"format\":\"pt\"},\"t\":{\"dtype\":\"" + dtype +
                               "\",\"shape\":[6,10],\"data_offsets\":[0,120]}}";
    const std::string path = dir.file(dtype + ".safetensors");
    write_bytes(path, make_file(header, raw));
    kd::SafetensorsFile f(path);
    ASSERT_EQ(f.entries().size(), 1u);
    EXPECT_EQ(f.entries()[0].dtype, dtype);
    std::vector<float> got = f.read_f32("t");
    ASSERT_EQ(got.size(), 60u);
    for (size_t i = 0; i < 60; ++i)
      expect_same_value(got[i], dtype == "F16" ? ref_half(values[i]) : ref_bf16(values[i]),
                        dtype + " value " + std::to_string(i));
  }
}

// Written by PyTorch (tools/make_reference.py): each half tensor next to torch's own fp32 of it.
TEST(Safetensors, TorchHalfTensorsMatchTorchConversion) {
  const std::string path = std::string(KD_SOURCE_DIR) + "/tests/fixtures/dtypes.safetensors";
  kd::SafetensorsFile f(path);
  for (const std::string name : {"f16", "bf16"}) {
    const auto* e = f.find(name);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->dtype, name == "f16" ? "F16" : "BF16");
    std::vector<float> got = f.read_f32(name);
    std::vector<float> want = f.read_f32(name + "_as_f32");
    ASSERT_EQ(got.size(), want.size());
    int nan = 0, inf = 0, subnormal = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      expect_same_value(got[i], want[i], name + " " + std::to_string(i));
      nan += std::isnan(want[i]);
      inf += std::isinf(want[i]);
      subnormal += name == "f16" && want[i] != 0 && std::fabs(want[i]) < 6.103515625e-05f;
    }
    EXPECT_GT(nan, 0);  // the fixture does cover the special values
    EXPECT_GT(inf, 0);
    if (name == "f16") {
      EXPECT_GT(subnormal, 0);
    }
  }
}

TEST(Safetensors, MalformedFilesAreRejectedWithTheirProblem) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  auto expect_bad = [&](const std::string& bytes, const std::string& problem) {
    write_bytes(path, bytes);
    expect_error([&] { kd::SafetensorsFile f(path); }, path, problem);
  };
  const std::string data8(8, '\x11');
  auto one = [](const std::string& body) { return "{\"t\":{" + body + "}}"; };

  for (size_t n = 0; n < 8; ++n) expect_bad(std::string(n, '\x01'), "shorter than the 8-byte");
  expect_bad(std::string("\x00\x10\xa5\xd4\xe8\x00\x00\x00", 8) + "{}", "limit");
  expect_bad(make_file("{}", "").substr(0, 8) + "{", "runs past the end of the file");
  expect_bad(make_file("{\"t\": [1, 2", ""), "not valid JSON");
  expect_bad(make_file("[1,2]", ""), "not a JSON object");
  expect_bad(make_file("{\"t\":{\"dtype\":\"F32\"},\"t\":{}}", ""), "not valid JSON");  // dup key
  expect_bad(make_file(one("\"shape\":[2],\"data_offsets\":[0,8]"), data8), "has no \"dtype\"");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"data_offsets\":[0,8]"), data8), "has no \"shape\"");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":[2]"), data8), "has no \"data_offsets\"");
  expect_bad(make_file("{\"t\":5}", ""), "tensor \"t\" is not a JSON object");
  expect_bad(make_file(one("\"dtype\":\"Q7\",\"shape\":[2],\"data_offsets\":[0,8]"), data8),
             "unknown dtype \"Q7\"");
  expect_bad(make_file(one("\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]"), data8),
             "\"dtype\" is not a string");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]"), data8),
             "\"shape\" holds something other than a size");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]"), data8),
             "\"shape\" holds something other than a size");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]"), data8),
             "\"shape\" is not an array");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                           "\"data_offsets\":[0,8]"),
                       data8),
             "too large");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]"), data8),
             "not a pair of byte offsets");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,-8]"), data8),
             "not a pair of byte offsets");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]"), data8),
             "past the end of the data (8 bytes)");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]"), data8),
             "begin > end");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]"), data8),
             "has 8 bytes but dtype F32 and shape [3] need 12");
  expect_bad(make_file(one("\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,8]"), data8),
             "has 8 bytes but dtype F16 and shape [2,3] need 12");
  expect_bad(make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                       data8),
             "tensors \"a\" and \"b\" overlap");
  expect_bad(make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}",
                       data8),
             "data bytes [4, 8) belong to no tensor");
  expect_bad(make_file(one("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]"), data8),
             "the data is 8 bytes but the tensors cover 4");
  expect_bad(make_file("{\"__metadata__\":{\"format\":1}}", ""), "\"__metadata__\" entry");
  expect_bad(make_file("{\"__metadata__\":[]}", ""), "\"__metadata__\" is not an object");

  // Known but unconvertible dtypes open (a checkpoint may carry such buffers) but cannot be read.
  write_bytes(path,
              make_file(one("\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]"), data8));
  kd::SafetensorsFile f(path);
  expect_error([&] { f.read_f32("t"); }, path, "has dtype I64; only F32, F16 and BF16");

  const std::string missing = dir.file("missing.safetensors");
  expect_error([&] { kd::SafetensorsFile g(missing); }, missing, "cannot open");
  expect_error([&] { kd::SafetensorsFile g(dir.path.string()); }, dir.path.string(), "");
}

// A valid file cut at every length: every cut is reported (the tensors must tile the data), never a
// crash.
TEST(Safetensors, EveryTruncationIsAnError) {
  TempDir dir;
  std::mt19937 rng(10);
  auto a = random_floats(12, rng);
  auto b = random_floats(5, rng);
  std::vector<kd::TensorView> tensors = {{"a", {3, 4}, a.data()}, {"b", {5}, b.data()}};
  const std::string good = dir.file("good.safetensors");
  kd::write_safetensors(good, tensors, {{"format", "pt"}});
  const std::string bytes = read_bytes(good);
  const std::string cut = dir.file("cut.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    write_bytes(cut, bytes.substr(0, n));
    expect_error([&] { kd::SafetensorsFile f(cut); }, cut, "");
  }
  // Bytes appended after the data are reported too.
  write_bytes(cut, bytes + "junk");
  expect_error([&] { kd::SafetensorsFile f(cut); }, cut, "the tensors cover");
}

// Random corruption of the length and header bytes: the reader either accepts a still-valid file or
// throws InputError; reading every tensor of an accepted file works.
TEST(Safetensors, CorruptHeaderBytesNeverCrash) {
  TempDir dir;
  std::mt19937 rng(11);
  auto a = random_floats(12, rng);
  auto b = random_floats(5, rng);
  std::vector<kd::TensorView> tensors = {{"a", {3, 4}, a.data()}, {"b", {5}, b.data()}};
  const std::string good = dir.file("good.safetensors");
  kd::write_safetensors(good, tensors, {{"format", "pt"}});
  const std::string bytes = read_bytes(good);
  uint64_t header_end = 8;
  for (int i = 7; i >= 0; --i)
    header_end += static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);

  const std::string bad = dir.file("corrupt.safetensors");
  std::uniform_int_distribution<int> byte(0, 255);
  int rejected = 0, accepted = 0;
  for (size_t pos = 0; pos < header_end; ++pos) {
    for (int k = 0; k < 4; ++k) {
      std::string c = bytes;
      const char replacement = k == 0 ? '9' : k == 1 ? '"' : static_cast<char>(byte(rng));
      if (c[pos] == replacement) continue;
      c[pos] = replacement;
      write_bytes(bad, c);
      try {
        kd::SafetensorsFile f(bad);
        for (const auto& e : f.entries()) {
          std::vector<float> out(e.numel());
          f.read_f32(e, out.data());
        }
        ++accepted;
      } catch (const kd::InputError& e) {
        EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
        ++rejected;
      }
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(accepted, 0);  // e.g. a changed letter in a tensor name is still a valid file
}

TEST(Safetensors, WriterRejectsBadArgumentsAndReportsWriteFailures) {
  TempDir dir;
  float x[2] = {1.5f, -2.5f};
  const std::string path = dir.file("w.safetensors");
  std::vector<kd::TensorView> dup = {{"a", {2}, x}, {"a", {2}, x}};
  // Bad arguments are the caller's bug, not bad input.
  using kd::ContractError;
  expect_error<ContractError>([&] { kd::write_safetensors(path, dup); }, path,
                              "\"a\" is given twice");
  std::vector<kd::TensorView> neg = {{"a", {-2}, x}};
  expect_error<ContractError>([&] { kd::write_safetensors(path, neg); }, path,
                              "negative dimension");
  std::vector<kd::TensorView> meta = {{"__metadata__", {2}, x}};
  expect_error<ContractError>([&] { kd::write_safetensors(path, meta); }, path,
                              "invalid tensor name");

  std::vector<kd::TensorView> ok = {{"a", {2}, x}};
  const std::string no_dir = dir.file("no/such/dir/w.safetensors");
  try {
    kd::write_safetensors(no_dir, ok);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(no_dir + ": cannot create the file"), std::string::npos)
        << e.what();
  }
  // A full disk: the device that answers every write with ENOSPC.
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  std::vector<float> big(1 << 16, 0.25f);
  std::vector<kd::TensorView> large = {{"big", {1 << 16}, big.data()}};
  try {
    kd::write_safetensors("/dev/full", large);
    ADD_FAILURE() << "no error writing to a full device";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("/dev/full: write failed"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::strerror(ENOSPC)), std::string::npos) << msg;
  }
}
