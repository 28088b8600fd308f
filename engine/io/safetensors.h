// The safetensors file format: a reader that validates the whole header before any tensor is read
// and converts F32, F16 and BF16 tensors to fp32, and a writer of F32 tensors.
//
// Layout of a file:
//   bytes [0, 8)      N, the header length, a little-endian uint64
//   bytes [8, 8+N)    the header: a JSON object, possibly padded with trailing spaces
//   bytes [8+N, end)  the data: every tensor's raw little-endian bytes, back to back
// The header maps each tensor name to {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}
// with offsets relative to the start of the data. An optional "__metadata__" entry maps strings to
// strings. The tensors must tile the data exactly: no overlap, no hole, nothing after the last one.
//
// Every problem with a file is reported as kd::InputError("<path>: <problem>").
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kd {

// One tensor entry of a header.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;           // as written in the file: "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;  // empty for a scalar
  uint64_t begin = 0;          // byte offsets into the data section, [begin, end)
  uint64_t end = 0;
  size_t numel() const;
};

// An open, validated safetensors file. The constructor reads and checks the header; the tensors
// themselves are read on demand, so a large checkpoint is never held twice in memory.
class SafetensorsFile {
 public:
  // Throws InputError for a missing, unreadable or malformed file.
  explicit SafetensorsFile(std::string path);

  const std::string& path() const { return path_; }
  // Entries in header order.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  // The entry named name, or null.
  const SafetensorsEntry* find(std::string_view name) const;
  // The "__metadata__" entry (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Reads a tensor converted to fp32 into out (entry.numel() floats). Throws InputError when the
  // tensor's dtype is not F32, F16 or BF16, or when the file cannot be read.
  void read_f32(const SafetensorsEntry& entry, float* out) const;
  std::vector<float> read_f32(std::string_view name) const;  // throws InputError when absent

 private:
  std::string path_;
  uint64_t data_start_ = 0;  // 8 + header length
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: fp32 data of prod(shape) floats (1 for an empty shape).
struct TensorView {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

// Writes the tensors, in the order given, as F32 to path (created or truncated), with an optional
// "__metadata__" entry. The file is flushed to disk (fsync) before returning. Throws ContractError
// for invalid arguments (an empty or duplicated name, a negative dimension: the caller's bug) and
// std::runtime_error naming the path and the system error when a write fails (a full disk, for
// instance).
void write_safetensors(const std::string& path, std::span<const TensorView> tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes bytes to path (created or truncated) and fsyncs it; std::runtime_error on any failure.
void write_file_synced(const std::string& path, std::string_view bytes);

// IEEE binary16 and bfloat16 bit patterns to float, exact for every input (subnormals, infinities
// and NaNs included).
float half_to_float(uint16_t h);
float bf16_to_float(uint16_t h);

}  // namespace kd
