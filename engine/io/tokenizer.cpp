#include "engine/io/tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/json.h"

namespace kd {

namespace {

struct CodePointRange {
  uint32_t lo, hi;
};

#include "engine/io/unicode_tables.inc"

// The character classes the GPT-2 pattern distinguishes. Other is everything else, including each
// byte that is not part of a well-formed UTF-8 sequence.
enum class CharClass : uint8_t { Letter, Number, Space, Other };

bool in_ranges(const CodePointRange* begin, const CodePointRange* end, uint32_t cp) {
  const CodePointRange* it = std::upper_bound(
      begin, end, cp, [](uint32_t v, const CodePointRange& r) { return v < r.lo; });
  return it != begin && cp <= (it - 1)->hi;
}

CharClass classify(uint32_t cp) {
  if (in_ranges(std::begin(kLetterRanges), std::end(kLetterRanges), cp)) return CharClass::Letter;
  if (in_ranges(std::begin(kNumberRanges), std::end(kNumberRanges), cp)) return CharClass::Number;
  if (in_ranges(std::begin(kWhitespaceRanges), std::end(kWhitespaceRanges), cp)) {
    return CharClass::Space;
  }
  return CharClass::Other;
}

struct AsciiClasses {
  CharClass c[128];
  AsciiClasses() {
    for (uint32_t i = 0; i < 128; ++i) c[i] = classify(i);
  }
};
const AsciiClasses kAscii;

// Reads one code point at s[i]. Returns its length in bytes and its class. A byte that does not
// start a well-formed UTF-8 sequence (RFC 3629: no overlong forms, no surrogates, nothing above
// U+10FFFF) is returned alone with class Other, so every byte of the input lands in some piece.
size_t next_char(std::string_view s, size_t i, CharClass* cls) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    *cls = kAscii.c[b0];
    return 1;
  }
  auto cont = [&](size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) {
    if (i + k >= s.size()) return false;
    const auto b = static_cast<unsigned char>(s[i + k]);
    return b >= lo && b <= hi;
  };
  uint32_t cp = 0;
  size_t len = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (cont(1)) {
      cp = b0 & 0x1Fu;
      len = 2;
    }
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    const unsigned lo = b0 == 0xE0 ? 0xA0 : 0x80;
    const unsigned hi = b0 == 0xED ? 0x9F : 0xBF;
    if (cont(1, lo, hi) && cont(2)) {
      cp = b0 & 0x0Fu;
      len = 3;
    }
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    const unsigned lo = b0 == 0xF0 ? 0x90 : 0x80;
    const unsigned hi = b0 == 0xF4 ? 0x8F : 0xBF;
    if (cont(1, lo, hi) && cont(2) && cont(3)) {
      cp = b0 & 0x07u;
      len = 4;
    }
  }
  if (len == 0) {
    *cls = CharClass::Other;
    return 1;
  }
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3Fu);
  *cls = classify(cp);
  return len;
}

// GPT-2's byte <-> printable code point mapping: printable Latin-1 bytes map to themselves, the
// other 68 bytes to U+0100, U+0101, ... in byte order.
void byte_alphabet(uint32_t byte_to_cp[256]) {
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    byte_to_cp[b] = printable ? b : next++;
  }
}

std::string read_whole_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    throw InputError("cannot open " + std::string(what) + " '" + path +
                     "': " + std::strerror(errno));
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw InputError("error reading " + std::string(what) + " '" + path + "'");
  return ss.str();
}

// Maps a vocabulary string (UTF-8 over GPT-2's byte alphabet) back to raw bytes. Returns false
// when it holds a character outside the alphabet or is not valid UTF-8.
bool unmap_bytes(std::string_view s, const std::unordered_map<uint32_t, uint8_t>& cp_to_byte,
                 std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size();) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    size_t len;
    if (b0 < 0x80) {
      cp = b0;
      len = 1;
    } else if ((b0 & 0xE0) == 0xC0) {
      cp = b0 & 0x1Fu;
      len = 2;
    } else {
      return false;  // the alphabet stops at U+0143, so nothing longer than two bytes is valid
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3Fu);
    }
    const auto it = cp_to_byte.find(cp);
    if (it == cp_to_byte.end()) return false;
    out->push_back(static_cast<char>(it->second));
    i += len;
  }
  return true;
}

constexpr size_t kMaxCachedPiece = 64;
constexpr size_t kMaxCacheEntries = 1 << 17;

}  // namespace

uint64_t fnv1a64(std::string_view bytes, uint64_t h) {
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

// ---- ByteTokenizer ----

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] > 255) {
      throw InputError("byte tokenizer: token id " + std::to_string(ids[i]) +
                       " is outside [0, 256)");
    }
    out[i] = static_cast<char>(ids[i]);
  }
  return out;
}

uint64_t ByteTokenizer::vocab_hash() const {
  return fnv1a64("bytes");
}

// ---- Gpt2Tokenizer ----

Gpt2Tokenizer::Gpt2Tokenizer(const std::string& encoder_json, const std::string& vocab_bpe) {
  load(read_whole_file(encoder_json, "GPT-2 encoder"), read_whole_file(vocab_bpe, "GPT-2 merges"),
       encoder_json, vocab_bpe);
}

Gpt2Tokenizer::Gpt2Tokenizer(FromText, const std::string& encoder_text,
                             const std::string& merges_text, const std::string& encoder_name,
                             const std::string& merges_name) {
  load(encoder_text, merges_text, encoder_name, merges_name);
}

void Gpt2Tokenizer::load(const std::string& enc_text, const std::string& bpe_text,
                         const std::string& encoder_json, const std::string& vocab_bpe) {
  uint32_t byte_to_cp[256];
  byte_alphabet(byte_to_cp);
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  for (int b = 0; b < 256; ++b) cp_to_byte[byte_to_cp[b]] = static_cast<uint8_t>(b);

  // encoder.json: {"token": id, ...}, ids dense in [0, N).
  Json enc;
  try {
    enc = Json::parse(enc_text);
  } catch (const JsonError& e) {
    throw InputError(encoder_json + ": malformed JSON: " + e.what());
  }
  if (!enc.is_object() || enc.size() == 0) {
    throw InputError(encoder_json + ": expected a non-empty JSON object of token -> id");
  }
  const size_t n = enc.members().size();
  tokens_.assign(n, std::string());
  std::vector<bool> seen(n, false);
  std::unordered_map<std::string, int32_t> id_of;
  id_of.reserve(n * 2);
  std::string raw;
  for (const auto& [key, value] : enc.members()) {
    const double v = value.is_number() ? value.as_number() : -1.0;
    if (!value.is_number() || v != std::floor(v) || v < 0 || v > 2147483647.0) {
      throw InputError(encoder_json + ": token " + json_quote(key) +
                       ": expected an integer id, got " + value.dump());
    }
    const auto id = static_cast<int64_t>(v);
    if (id < 0 || id >= static_cast<int64_t>(n) || seen[id]) {
      throw InputError(encoder_json + ": token " + json_quote(key) + " has id " +
                       std::to_string(id) + "; expected each id in [0, " + std::to_string(n) +
                       ") exactly once");
    }
    seen[id] = true;
    if (!unmap_bytes(key, cp_to_byte, &raw)) {
      throw InputError(encoder_json + ": token " + json_quote(key) +
                       " has a character outside GPT-2's byte alphabet");
    }
    if (key == "<|endoftext|>") eot_ = static_cast<int>(id);
    if (!id_of.emplace(raw, static_cast<int32_t>(id)).second) {
      throw InputError(encoder_json + ": token " + json_quote(key) +
                       " decodes to the same bytes as another token");
    }
    tokens_[id] = raw;
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = id_of.find(std::string(1, static_cast<char>(b)));
    if (it == id_of.end()) {
      throw InputError(encoder_json + ": no token for byte " + std::to_string(b) +
                       "; a byte-level BPE needs all 256");
    }
    byte_id_[b] = it->second;
  }

  // vocab.bpe: an optional "#version" line, then one merge "left right" per line, by rank.
  merges_.reserve(65536);
  merge_list_.clear();
  size_t line_no = 0;
  uint64_t rank = 0;
  std::string left, right;
  for (size_t pos = 0; pos < bpe_text.size();) {
    size_t eol = bpe_text.find('\n', pos);
    if (eol == std::string::npos) eol = bpe_text.size();
    std::string_view line(bpe_text.data() + pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.front() == '#')) continue;
    const auto where = [&] { return vocab_bpe + ":" + std::to_string(line_no) + ": "; };
    const size_t sp = line.find(' ');
    if (sp == 0 || sp == std::string_view::npos || sp + 1 == line.size() ||
        line.find(' ', sp + 1) != std::string_view::npos) {
      throw InputError(where() + "expected two symbols separated by one space, got '" +
                       std::string(line) + "'");
    }
    if (!unmap_bytes(line.substr(0, sp), cp_to_byte, &left) ||
        !unmap_bytes(line.substr(sp + 1), cp_to_byte, &right)) {
      throw InputError(where() + "a symbol has a character outside GPT-2's byte alphabet");
    }
    const auto l = id_of.find(left), r = id_of.find(right), m = id_of.find(left + right);
    if (l == id_of.end() || r == id_of.end() || m == id_of.end()) {
      throw InputError(where() + "merge '" + std::string(line) + "' uses or makes a token that " +
                       encoder_json + " does not have");
    }
    const uint64_t key =
        (static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(r->second);
    merges_.emplace(key, (rank << 32) | static_cast<uint32_t>(m->second));  // first rank wins
    merge_list_.emplace_back(l->second, r->second);
    ++rank;
  }
  fingerprint_ = fnv1a64(bpe_text, fnv1a64(enc_text));
  // The identity: kind, then each token as (length, bytes) in id order, then each merge as its two
  // ids in rank order, all little-endian.
  auto put = [](uint64_t h, uint32_t v) {
    const char b[4] = {char(v), char(v >> 8), char(v >> 16), char(v >> 24)};
    return fnv1a64(std::string_view(b, 4), h);
  };
  uint64_t h = fnv1a64("gpt2");
  h = put(h, static_cast<uint32_t>(tokens_.size()));
  for (const std::string& t : tokens_) h = fnv1a64(t, put(h, static_cast<uint32_t>(t.size())));
  h = put(h, static_cast<uint32_t>(merge_list_.size()));
  for (const auto& [a, b] : merge_list_) h = put(put(h, uint32_t(a)), uint32_t(b));
  vocab_hash_ = h;
}

namespace {

// Appends the UTF-8 spelling of GPT-2's alphabet character for each byte of raw.
void map_bytes(std::string_view raw, const uint32_t byte_to_cp[256], std::string& out) {
  for (const char c : raw) {
    const uint32_t cp = byte_to_cp[static_cast<unsigned char>(c)];
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else {  // the alphabet stops at U+0143: two bytes
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
}

}  // namespace

std::string Gpt2Tokenizer::vocab_json() const {
  uint32_t byte_to_cp[256];
  byte_alphabet(byte_to_cp);
  Json j = Json::object();
  std::string key;
  for (size_t id = 0; id < tokens_.size(); ++id) {
    key.clear();
    map_bytes(tokens_[id], byte_to_cp, key);
    j.append_member(key, Json(static_cast<int64_t>(id)));
  }
  return j.dump() + "\n";
}

std::string Gpt2Tokenizer::merges_txt() const {
  uint32_t byte_to_cp[256];
  byte_alphabet(byte_to_cp);
  std::string out = "#version: 0.2\n";
  for (const auto& [a, b] : merge_list_) {
    map_bytes(tokens_[a], byte_to_cp, out);
    out += ' ';
    map_bytes(tokens_[b], byte_to_cp, out);
    out += '\n';
  }
  return out;
}

std::vector<std::string_view> Gpt2Tokenizer::pretokenize(std::string_view text) {
  // Decode once: start offset and class of every character.
  std::vector<uint32_t> off;
  std::vector<CharClass> cls;
  off.reserve(text.size() + 1);
  cls.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    CharClass c;
    const size_t len = next_char(text, i, &c);
    off.push_back(static_cast<uint32_t>(i));
    cls.push_back(c);
    i += len;
  }
  const size_t n = cls.size();
  off.push_back(static_cast<uint32_t>(text.size()));

  std::vector<std::string_view> out;
  auto emit = [&](size_t a, size_t b) { out.push_back(text.substr(off[a], off[b] - off[a])); };
  auto run_end = [&](size_t k, CharClass c) {
    while (k < n && cls[k] == c) ++k;
    return k;
  };
  auto byte_at = [&](size_t k) { return k < n ? text[off[k]] : '\0'; };

  for (size_t k = 0; k < n;) {
    const char b = text[off[k]];
    // 's|'t|'re|'ve|'m|'ll|'d
    if (b == '\'' && k + 1 < n) {
      const char c1 = byte_at(k + 1), c2 = byte_at(k + 2);
      size_t len = 0;
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        len = 2;
      } else if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
        len = 3;
      }
      if (len) {
        emit(k, k + len);
        k += len;
        continue;
      }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional single space, then a run of one
    // class. The class of the character after the optional space decides which (if any) applies.
    const size_t s = (b == ' ') ? k + 1 : k;
    if (s < n && cls[s] != CharClass::Space) {
      const size_t e = run_end(s, cls[s]);
      emit(k, e);
      k = e;
      continue;
    }
    // '\s+(?!\S)' then '\s+': whitespace up to the end, or all but the last whitespace character
    // before a non-space (which then leads the next piece), or a lone whitespace character.
    const size_t e = run_end(k, CharClass::Space);
    const size_t stop = (e == n || e - k == 1) ? e : e - 1;
    emit(k, stop);
    k = stop;
  }
  return out;
}

void Gpt2Tokenizer::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  const size_t m = piece.size();
  if (m == 1) {
    out.push_back(byte_id_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  const bool cacheable = m <= kMaxCachedPiece;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    const auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  // Symbols in a linked list; a min-heap of candidate merges keyed by (rank, left position), so the
  // lowest-ranked pair merges first and ties go to the leftmost, as in GPT-2's reference loop.
  struct Sym {
    int32_t id;
    int32_t prev, next;
  };
  std::vector<Sym> sym(m);
  for (size_t i = 0; i < m; ++i) {
    sym[i] = {byte_id_[static_cast<unsigned char>(piece[i])], static_cast<int32_t>(i) - 1,
              i + 1 < m ? static_cast<int32_t>(i + 1) : -1};
  }
  struct Cand {
    uint32_t rank;
    int32_t left, right;
    int32_t left_id, right_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::vector<Cand> heap;
  auto consider = [&](int32_t l) {
    if (l < 0) return;
    const int32_t r = sym[l].next;
    if (r < 0) return;
    const uint64_t key =
        (static_cast<uint64_t>(sym[l].id) << 32) | static_cast<uint32_t>(sym[r].id);
    const auto it = merges_.find(key);
    if (it == merges_.end()) return;
    heap.push_back({static_cast<uint32_t>(it->second >> 32), l, r, sym[l].id, sym[r].id});
    std::push_heap(heap.begin(), heap.end(), std::greater<Cand>());
  };
  for (size_t i = 0; i + 1 < m; ++i) consider(static_cast<int32_t>(i));
  std::vector<bool> dead(m, false);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<Cand>());
    const Cand c = heap.back();
    heap.pop_back();
    // Stale when either side has been merged since this candidate was pushed.
    if (dead[c.left] || dead[c.right] || sym[c.left].next != c.right ||
        sym[c.left].id != c.left_id || sym[c.right].id != c.right_id) {
      continue;
    }
    const uint64_t key =
        (static_cast<uint64_t>(c.left_id) << 32) | static_cast<uint32_t>(c.right_id);
    sym[c.left].id = static_cast<int32_t>(merges_.at(key) & 0xFFFFFFFFu);
    dead[c.right] = true;
    sym[c.left].next = sym[c.right].next;
    if (sym[c.left].next >= 0) sym[sym[c.left].next].prev = c.left;
    consider(sym[c.left].prev);
    consider(c.left);
  }
  const size_t first = out.size();
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::string(piece), std::vector<int32_t>(out.begin() + first, out.end()));
  }
}

std::vector<int32_t> Gpt2Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 16);
  for (const std::string_view piece : pretokenize(text)) bpe(piece, ids);
  return ids;
}

std::string Gpt2Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      throw InputError("gpt2 tokenizer: token id " + std::to_string(id) + " is outside [0, " +
                       std::to_string(vocab_size()) + ")");
    }
    out += tokens_[id];
  }
  return out;
}

std::unique_ptr<Tokenizer> make_tokenizer(TokenizerKind kind, const std::string& encoder_json,
                                          const std::string& vocab_bpe) {
  if (kind == TokenizerKind::Gpt2) return std::make_unique<Gpt2Tokenizer>(encoder_json, vocab_bpe);
  return std::make_unique<ByteTokenizer>();
}

}  // namespace kd
