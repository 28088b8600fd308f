// Training data: token shards (llm.c's .bin format), tokenizing text once into a cache, the
// train/val split and the batch sampler. See docs/data.md.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/base/rng.h"
#include "engine/io/tokenizer.h"

namespace kd {

// Shard layout: 256 little-endian int32 (header[0] = kShardMagic, header[1] = kShardVersion,
// header[2] = token count), then `count` little-endian uint16 tokens. Nothing after them.
constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr size_t kShardHeaderInts = 256;

// Writes a shard; every write is checked (InputError naming the path on failure).
void write_shard(const std::string& path, std::span<const uint16_t> tokens);
// Reads and checks a shard: header length, magic, version, count against the file size and, when
// vocab_size > 0, every id below vocab_size. Errors are InputError naming the path.
std::vector<uint16_t> read_shard(const std::string& path, int vocab_size = 0);

struct TokenSource {
  std::vector<uint16_t> tokens;
  std::string cache_path;  // the cache shard read or written; empty for a .bin input or no cache
  bool tokenized = false;  // the text was tokenized in this call (cache miss or no cache)
};

// path is one of
//   - a .bin shard: read directly (ids checked against tok.vocab_size());
//   - a text file: tokenized;
//   - a directory: its regular, non-hidden files in byte order of name, each tokenized as its own
//     document, with a separator between documents: the EOT token when the tokenizer has one,
//     else the encoding of "\n".
// Tokenized text is cached as a shard in cache_dir (created when missing; empty = no cache) under
// a name derived from the tokenizer's name and fingerprint and each file's name, size and mtime,
// so a second run reads the shard instead of tokenizing. Throws InputError on unreadable or empty
// input.
TokenSource load_tokens(const std::string& path, const Tokenizer& tok,
                        const std::string& cache_dir);

struct TokenSplit {
  std::vector<uint16_t> train, val;
};
// The last floor(n * val_fraction) tokens are val, the rest train. val_fraction in [0, 1).
TokenSplit split_tokens(std::span<const uint16_t> tokens, double val_fraction);

// Draws training windows of T+1 consecutive tokens at random positions, and fixed evaluation
// windows from the val stream.
class BatchSampler {
 public:
  BatchSampler(std::vector<uint16_t> train, std::vector<uint16_t> val, uint64_t seed);

  // B windows, each at a uniformly random start in [0, train.size() - T - 1]:
  // inputs[b*T + t] = train[s_b + t], targets[b*T + t] = train[s_b + t + 1]. Throws InputError when
  // the train split is shorter than T+1 tokens (and ContractError for B or T below 1).
  void next(int B, int T, int32_t* inputs, int32_t* targets);

  // The val stream is cut into W = floor((val.size() - 1) / T) back-to-back windows; batch `index`
  // holds windows (index*B + b) mod W, b = 0..B-1. No randomness: the same index always gives the
  // same tokens. Throws InputError when val is shorter than T+1 tokens.
  void eval_batch(int index, int B, int T, int32_t* inputs, int32_t* targets) const;
  // How many eval batches cover every window once (at least 1): ceil(W / B).
  int eval_batch_count(int B, int T) const;

  // The generator state: set_state(state()) later resumes the exact sequence of next().
  uint64_t state() const { return rng_.state(); }
  void set_state(uint64_t s) { rng_.set_state(s); }

  size_t train_tokens() const { return train_.size(); }
  size_t val_tokens() const { return val_.size(); }

 private:
  std::vector<uint16_t> train_, val_;
  Rng rng_;
};

}  // namespace kd
