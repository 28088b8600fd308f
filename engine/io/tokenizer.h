// Tokenizers: text bytes <-> token ids. Two kinds:
//   ByteTokenizer  256 symbols, token id == byte value; it has no end-of-text token (eot() == -1).
//   Gpt2Tokenizer  GPT-2's byte-level BPE, read from encoder.json + vocab.bpe.
// Both are lossless on ANY byte string: decode(encode(x)) == x, invalid UTF-8 included.
// See docs/data.md.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/base/choice.h"

namespace kd {

// The tokenizers a recipe or a checkpoint can name; spelled "bytes" and "gpt2" everywhere (recipes,
// checkpoints' tokenizer.json, Tokenizer::name and so the token cache's file names).
enum class TokenizerKind { Bytes, Gpt2 };
template <>
struct ChoiceNames<TokenizerKind> {
  static constexpr std::array names{"bytes", "gpt2"};
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Throws InputError on an id outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int vocab_size() const = 0;
  // The end-of-text id placed between documents, or -1 when the tokenizer has none.
  virtual int eot() const = 0;
  // to_string of the kind for the built-in tokenizers: "bytes" or "gpt2".
  virtual std::string name() const = 0;
  // A 64-bit digest of everything that determines the encoding (the vocabulary files for gpt2), so
  // that caches of tokenized text can tell two vocabularies with the same name apart.
  virtual uint64_t fingerprint() const = 0;
  // A 64-bit digest of the tokenizer's identity: its kind, every token's bytes in id order and
  // (gpt2) every merge in rank order. Unlike fingerprint() it does not depend on how the files
  // were formatted, so the same vocabulary read from encoder.json + vocab.bpe, from vocab.json +
  // merges.txt or from HF's tokenizer.json has the same hash. Teacher and student must agree on it.
  // The default (for tokenizers defined elsewhere, e.g. in tests) is the fingerprint.
  virtual uint64_t vocab_hash() const { return fingerprint(); }
};

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int vocab_size() const override { return 256; }
  int eot() const override { return -1; }
  std::string name() const override { return to_string(TokenizerKind::Bytes); }
  uint64_t fingerprint() const override { return 0x62797465ull; }
  uint64_t vocab_hash() const override;
};

class Gpt2Tokenizer final : public Tokenizer {
 public:
  // Reads and checks both files; throws InputError naming the file (and line for vocab.bpe).
  Gpt2Tokenizer(const std::string& encoder_json, const std::string& vocab_bpe);

  // The same from the files' contents; the names are used in error messages only.
  struct FromText {};
  Gpt2Tokenizer(FromText, const std::string& encoder_text, const std::string& merges_text,
                const std::string& encoder_name, const std::string& merges_name);

  // Like tiktoken's encode_ordinary: "<|endoftext|>" inside the text is ordinary text, never the
  // special id. Put eot() between documents yourself.
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int vocab_size() const override { return static_cast<int>(tokens_.size()); }
  int eot() const override { return eot_; }
  std::string name() const override { return to_string(TokenizerKind::Gpt2); }
  uint64_t fingerprint() const override { return fingerprint_; }
  uint64_t vocab_hash() const override { return vocab_hash_; }

  // The vocabulary and merges in the files HF's GPT-2 tokenizer reads: vocab.json (token -> id,
  // tokens spelled in GPT-2's byte alphabet, in id order) and merges.txt ("#version: 0.2", then
  // one "left right" merge per line, by rank). encoder.json and vocab.bpe are the same formats.
  std::string vocab_json() const;
  std::string merges_txt() const;

  // The pre-tokenization step alone (GPT-2's regex, by hand): the pieces, in order, whose
  // concatenation is the input. Exposed for tests.
  static std::vector<std::string_view> pretokenize(std::string_view text);

 private:
  void load(const std::string& enc_text, const std::string& bpe_text,
            const std::string& encoder_json, const std::string& vocab_bpe);
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;

  std::vector<std::string> tokens_;  // id -> raw bytes
  int32_t byte_id_[256] = {};        // byte -> id of the single-byte token
  // (left id << 32 | right id) -> (rank << 32 | merged id)
  std::unordered_map<uint64_t, uint64_t> merges_;
  std::vector<std::pair<int32_t, int32_t>> merge_list_;  // every merge line, by rank
  int eot_ = -1;
  uint64_t fingerprint_ = 0;
  uint64_t vocab_hash_ = 0;

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// The files are ignored for Bytes. Throws InputError on bad files.
std::unique_ptr<Tokenizer> make_tokenizer(TokenizerKind kind, const std::string& encoder_json,
                                          const std::string& vocab_bpe);

// 64-bit FNV-1a, used for fingerprints and cache keys.
uint64_t fnv1a64(std::string_view bytes, uint64_t h = 0xcbf29ce484222325ull);

}  // namespace kd
