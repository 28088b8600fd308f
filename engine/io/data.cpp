#include "engine/io/data.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "engine/base/error.h"

namespace kd {

namespace fs = std::filesystem;

namespace {

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

void put_le32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
int32_t get_le32(const unsigned char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return static_cast<int32_t>(v);
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw InputError("cannot open '" + p.string() + "': " + std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw InputError("error reading '" + p.string() + "'");
  return ss.str();
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

void check_window(size_t have, int B, int T, const char* split) {
  KD_REQUIRE(B > 0 && T > 0, "batch size and block size must be positive, got B=" +
                                 std::to_string(B) + " T=" + std::to_string(T));
  if (have < static_cast<size_t>(T) + 1) {
    throw InputError(std::string("the ") + split + " split has " + std::to_string(have) +
                     " tokens, fewer than one window of T+1 = " + std::to_string(T + 1) +
                     "; use more data, a smaller block size or a different val fraction");
  }
}

}  // namespace

void write_shard(const std::string& path, std::span<const uint16_t> tokens) {
  if (tokens.size() > 0x7FFFFFFFu) {
    throw InputError("shard '" + path + "': " + std::to_string(tokens.size()) +
                     " tokens do not fit the int32 count");
  }
  File f(std::fopen(path.c_str(), "wb"));
  if (!f) throw InputError("cannot create shard '" + path + "': " + std::strerror(errno));
  unsigned char header[kShardHeaderInts * 4] = {};
  put_le32(header, static_cast<uint32_t>(kShardMagic));
  put_le32(header + 4, static_cast<uint32_t>(kShardVersion));
  put_le32(header + 8, static_cast<uint32_t>(tokens.size()));
  auto fail = [&] {
    throw InputError("error writing shard '" + path + "': " + std::strerror(errno));
  };
  if (std::fwrite(header, 1, sizeof header, f.get()) != sizeof header) fail();
  std::vector<unsigned char> buf;
  constexpr size_t kChunk = 1 << 16;
  for (size_t i = 0; i < tokens.size(); i += kChunk) {
    const size_t n = std::min(kChunk, tokens.size() - i);
    buf.resize(2 * n);
    for (size_t k = 0; k < n; ++k) {
      buf[2 * k] = static_cast<unsigned char>(tokens[i + k] & 0xFF);
      buf[2 * k + 1] = static_cast<unsigned char>(tokens[i + k] >> 8);
    }
    if (std::fwrite(buf.data(), 1, buf.size(), f.get()) != buf.size()) fail();
  }
  if (std::fflush(f.get()) != 0) fail();
  if (std::fclose(f.release()) != 0) fail();
}

std::vector<uint16_t> read_shard(const std::string& path, int vocab_size) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) throw InputError("cannot read shard '" + path + "': " + ec.message());
  constexpr size_t kHeaderBytes = kShardHeaderInts * 4;
  if (size < kHeaderBytes) {
    throw InputError("shard '" + path + "' is " + std::to_string(size) +
                     " bytes, shorter than its " + std::to_string(kHeaderBytes) + "-byte header");
  }
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) throw InputError("cannot open shard '" + path + "': " + std::strerror(errno));
  unsigned char header[kHeaderBytes];
  if (std::fread(header, 1, kHeaderBytes, f.get()) != kHeaderBytes) {
    throw InputError("error reading the header of shard '" + path + "'");
  }
  const int32_t magic = get_le32(header), version = get_le32(header + 4);
  const int32_t count = get_le32(header + 8);
  if (magic != kShardMagic) {
    throw InputError("shard '" + path + "': bad magic " + std::to_string(magic) + ", expected " +
                     std::to_string(kShardMagic) + " (not an llm.c token shard)");
  }
  if (version != kShardVersion) {
    throw InputError("shard '" + path + "': unsupported version " + std::to_string(version) +
                     ", expected " + std::to_string(kShardVersion) + " (uint16 tokens)");
  }
  const uint64_t expected = kHeaderBytes + 2 * static_cast<uint64_t>(count < 0 ? 0 : count);
  if (count < 0 || expected != size) {
    throw InputError("shard '" + path + "': header says " + std::to_string(count) +
                     " tokens, which needs " + std::to_string(expected) +
                     " bytes, but the file is " + std::to_string(size) + " bytes");
  }
  std::vector<unsigned char> raw(2 * static_cast<size_t>(count));
  if (!raw.empty() && std::fread(raw.data(), 1, raw.size(), f.get()) != raw.size()) {
    throw InputError("error reading the tokens of shard '" + path + "'");
  }
  std::vector<uint16_t> tokens(count);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<uint16_t>(raw[2 * i] | (raw[2 * i + 1] << 8));
    if (vocab_size > 0 && tokens[i] >= vocab_size) {
      throw InputError("shard '" + path + "': token " + std::to_string(i) + " is " +
                       std::to_string(tokens[i]) + ", not below the vocabulary size " +
                       std::to_string(vocab_size));
    }
  }
  return tokens;
}

TokenSource load_tokens(const std::string& path, const Tokenizer& tok,
                        const std::string& cache_dir) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) throw InputError("data path '" + path + "' does not exist");
  TokenSource src;
  if (fs::is_regular_file(st) && fs::path(path).extension() == ".bin") {
    src.tokens = read_shard(path, tok.vocab_size());
    if (src.tokens.empty()) throw InputError("shard '" + path + "' holds no tokens");
    return src;
  }
  if (tok.vocab_size() > 65536) {
    throw InputError("tokenizer '" + tok.name() + "' has " + std::to_string(tok.vocab_size()) +
                     " tokens; shards store uint16 ids (at most 65536)");
  }

  std::vector<fs::path> files;
  if (fs::is_regular_file(st)) {
    files.push_back(path);
  } else if (fs::is_directory(st)) {
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      const std::string name = entry.path().filename().string();
      std::error_code e2;
      if (name.empty() || name[0] == '.' || !entry.is_regular_file(e2)) continue;
      files.push_back(entry.path());
    }
    if (ec) throw InputError("cannot list directory '" + path + "': " + ec.message());
    std::sort(files.begin(), files.end(),
              [](const fs::path& a, const fs::path& b) { return a.filename() < b.filename(); });
    if (files.empty()) {
      throw InputError("data directory '" + path + "' has no regular, non-hidden files");
    }
  } else {
    throw InputError("data path '" + path + "' is neither a file nor a directory");
  }

  // The cache key: everything that changes the tokens.
  std::string key =
      "kdengine token cache v1\n" + tok.name() + "\n" + hex64(tok.fingerprint()) + "\n";
  for (const auto& f : files) {
    const auto size = fs::file_size(f, ec);
    if (ec) throw InputError("cannot read '" + f.string() + "': " + ec.message());
    const auto mtime = fs::last_write_time(f, ec).time_since_epoch().count();
    if (ec) throw InputError("cannot read '" + f.string() + "': " + ec.message());
    key += fs::absolute(f).lexically_normal().string() + "\n" + std::to_string(size) + " " +
           std::to_string(static_cast<long long>(mtime)) + "\n";
  }
  if (!cache_dir.empty()) {
    src.cache_path =
        (fs::path(cache_dir) / ("tokens-" + tok.name() + "-" + hex64(fnv1a64(key)) + ".bin"))
            .string();
    if (fs::is_regular_file(src.cache_path, ec)) {
      try {
        src.tokens = read_shard(src.cache_path, tok.vocab_size());
        if (!src.tokens.empty()) return src;
      } catch (const InputError&) {
        // A damaged cache entry: tokenize again and replace it.
      }
    }
  }

  std::vector<int32_t> sep;
  if (tok.eot() >= 0) {
    sep.push_back(tok.eot());
  } else {
    sep = tok.encode("\n");
  }
  src.tokens.clear();
  for (size_t i = 0; i < files.size(); ++i) {
    if (i > 0) src.tokens.insert(src.tokens.end(), sep.begin(), sep.end());
    for (const int32_t id : tok.encode(read_text(files[i]))) {
      src.tokens.push_back(static_cast<uint16_t>(id));
    }
  }
  src.tokenized = true;
  // Only separators means there was no text at all.
  if (src.tokens.size() <= (files.size() - 1) * sep.size()) {
    throw InputError("data path '" + path + "' holds no text to train on");
  }

  if (!cache_dir.empty()) {
    fs::create_directories(cache_dir, ec);
    if (ec) throw InputError("cannot create cache directory '" + cache_dir + "': " + ec.message());
    static std::atomic<uint64_t> counter{0};
    const std::string tmp =
        src.cache_path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
    try {
      write_shard(tmp, src.tokens);
    } catch (...) {
      fs::remove(tmp, ec);
      throw;
    }
    fs::rename(tmp, src.cache_path, ec);
    if (ec) {
      std::error_code ignored;
      fs::remove(tmp, ignored);
      throw InputError("cannot move the token cache into place at '" + src.cache_path +
                       "': " + ec.message());
    }
  }
  return src;
}

TokenSplit split_tokens(std::span<const uint16_t> tokens, double val_fraction) {
  if (!(val_fraction >= 0.0 && val_fraction < 1.0)) {
    throw InputError("val_fraction must be in [0, 1), got " + std::to_string(val_fraction));
  }
  const auto n_val =
      static_cast<size_t>(std::floor(static_cast<double>(tokens.size()) * val_fraction));
  const size_t n_train = tokens.size() - n_val;
  TokenSplit s;
  s.train.assign(tokens.begin(), tokens.begin() + n_train);
  s.val.assign(tokens.begin() + n_train, tokens.end());
  return s;
}

BatchSampler::BatchSampler(std::vector<uint16_t> train, std::vector<uint16_t> val, uint64_t seed)
    : train_(std::move(train)), val_(std::move(val)), rng_(seed) {}

void BatchSampler::next(int B, int T, int32_t* inputs, int32_t* targets) {
  check_window(train_.size(), B, T, "train");
  const uint64_t starts = train_.size() - static_cast<size_t>(T);  // start in [0, n - T - 1]
  for (int b = 0; b < B; ++b) {
    const auto s = static_cast<size_t>(rng_.below(starts));
    const uint16_t* w = train_.data() + s;
    for (int t = 0; t < T; ++t) {
      inputs[static_cast<size_t>(b) * T + t] = w[t];
      targets[static_cast<size_t>(b) * T + t] = w[t + 1];
    }
  }
}

int BatchSampler::eval_batch_count(int B, int T) const {
  check_window(val_.size(), B, T, "val");
  const size_t windows = (val_.size() - 1) / static_cast<size_t>(T);
  return static_cast<int>(std::max<size_t>(1, (windows + B - 1) / B));
}

void BatchSampler::eval_batch(int index, int B, int T, int32_t* inputs, int32_t* targets) const {
  check_window(val_.size(), B, T, "val");
  if (index < 0) throw InputError("eval batch index must be >= 0, got " + std::to_string(index));
  const size_t windows = (val_.size() - 1) / static_cast<size_t>(T);
  for (int b = 0; b < B; ++b) {
    const size_t k = (static_cast<size_t>(index) * B + b) % windows;
    const uint16_t* w = val_.data() + k * T;
    for (int t = 0; t < T; ++t) {
      inputs[static_cast<size_t>(b) * T + t] = w[t];
      targets[static_cast<size_t>(b) * T + t] = w[t + 1];
    }
  }
}

}  // namespace kd
