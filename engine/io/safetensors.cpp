#include "engine/io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <stdexcept>

#include "engine/base/error.h"
#include "engine/base/json.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts are not supported");

namespace kd {

namespace {

// The reference implementation refuses headers above 100 MB; so do we.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Bytes per element of every dtype the format defines; 0 for an unknown name.
size_t dtype_size(std::string_view dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2")
    return 1;
  return 0;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ',';
    s += std::to_string(shape[i]);
  }
  s += ']';
  return s;
}

// Reads a non-negative integer that fits in uint64 from a JSON number; false when it is not one.
bool to_u64(const Json& j, uint64_t* out) {
  if (!j.is_number()) return false;
  double d = j.as_number();
  // Integers above 2^53 are not exact in a double; no real file needs them.
  if (!(d >= 0 && d <= 9007199254740992.0) || d != static_cast<double>(static_cast<uint64_t>(d)))
    return false;
  *out = static_cast<uint64_t>(d);
  return true;
}

}  // namespace

size_t SafetensorsEntry::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

SafetensorsFile::SafetensorsFile(std::string path) : path_(std::move(path)) {
  auto fail = [&](const std::string& what) { throw InputError(path_ + ": " + what); };

  std::ifstream in(path_, std::ios::binary);
  if (!in) fail(std::string("cannot open the file (") + std::strerror(errno) + ")");
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  if (!in || end < 0) fail("cannot determine the file size (is it a directory?)");
  const auto file_size = static_cast<uint64_t>(end);
  in.seekg(0);
  if (file_size < 8)
    fail("the file is " + std::to_string(file_size) +
         " bytes, shorter than the 8-byte header length; not a safetensors file");

  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  if (!in) fail("cannot read the header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > kMaxHeaderBytes)
    fail("the header length " + std::to_string(header_len) + " is larger than the " +
         std::to_string(kMaxHeaderBytes) + "-byte limit; not a safetensors file");
  if (header_len > file_size - 8)
    fail("the header length " + std::to_string(header_len) + " runs past the end of the file (" +
         std::to_string(file_size) + " bytes); the file is truncated or not a safetensors file");
  data_start_ = 8 + header_len;
  const uint64_t data_size = file_size - data_start_;

  std::string text(header_len, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_len));
  if (!in) fail("cannot read the header");

  Json header;
  try {
    header = Json::parse(text);
  } catch (const JsonError& e) {
    fail(std::string("the header is not valid JSON (") + e.what() + ")");
  }
  if (!header.is_object()) fail("the header is not a JSON object");

  for (const auto& [name, value] : header.members()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail("\"__metadata__\" is not an object of strings");
      for (const auto& [key, v] : value.members()) {
        if (!v.is_string()) fail("\"__metadata__\" entry \"" + key + "\" is not a string");
        metadata_[key] = v.as_string();
      }
      continue;
    }
    const std::string tensor = "tensor \"" + name + "\"";
    if (!value.is_object()) fail(tensor + " is not a JSON object");
    const Json* dtype = value.find("dtype");
    const Json* shape = value.find("shape");
    const Json* offsets = value.find("data_offsets");
    if (!dtype) fail(tensor + " has no \"dtype\"");
    if (!shape) fail(tensor + " has no \"shape\"");
    if (!offsets) fail(tensor + " has no \"data_offsets\"");

    SafetensorsEntry e;
    e.name = name;
    if (!dtype->is_string()) fail(tensor + ": \"dtype\" is not a string");
    e.dtype = dtype->as_string();
    const size_t esize = dtype_size(e.dtype);
    if (esize == 0) fail(tensor + " has the unknown dtype \"" + e.dtype + "\"");

    if (!shape->is_array()) fail(tensor + ": \"shape\" is not an array");
    uint64_t bytes = esize;
    for (const Json& d : shape->items()) {
      uint64_t dim = 0;
      if (!to_u64(d, &dim)) fail(tensor + ": \"shape\" holds something other than a size");
      e.shape.push_back(static_cast<int64_t>(dim));
      // Products beyond the data size are errors anyway; stop before they could overflow.
      if (dim != 0 && bytes > std::numeric_limits<uint64_t>::max() / dim)
        fail(tensor + " has shape " + shape_str(e.shape) + "..., too large for any file");
      bytes *= dim;
    }

    if (!offsets->is_array() || offsets->size() != 2 || !to_u64(offsets->items()[0], &e.begin) ||
        !to_u64(offsets->items()[1], &e.end))
      fail(tensor + ": \"data_offsets\" is not a pair of byte offsets [begin, end]");
    std::string range = "[";
    range += std::to_string(e.begin);
    range += ", ";
    range += std::to_string(e.end);
    range += ")";
    if (e.begin > e.end) fail(tensor + " has data_offsets " + range + " with begin > end");
    if (e.end > data_size)
      fail(tensor + " has data_offsets " + range + " past the end of the data (" +
           std::to_string(data_size) + " bytes); the file is truncated");
    if (e.end - e.begin != bytes)
      fail(tensor + " has " + std::to_string(e.end - e.begin) + " bytes but dtype " + e.dtype +
           " and shape " + shape_str(e.shape) + " need " + std::to_string(bytes));
    entries_.push_back(std::move(e));
  }

  // The tensors must tile the data section: sorted by offset, each starts where the last ended.
  std::vector<const SafetensorsEntry*> order;
  for (const auto& e : entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t pos = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const auto* e : order) {
    if (e->begin < pos)
      fail("tensors \"" + prev->name + "\" and \"" + e->name + "\" overlap in the data");
    if (e->begin > pos)
      fail("data bytes [" + std::to_string(pos) + ", " + std::to_string(e->begin) +
           ") belong to no tensor");
    pos = e->end;
    prev = e;
  }
  if (pos != data_size)
    fail("the data is " + std::to_string(data_size) + " bytes but the tensors cover " +
         std::to_string(pos));
}

const SafetensorsEntry* SafetensorsFile::find(std::string_view name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

void SafetensorsFile::read_f32(const SafetensorsEntry& entry, float* out) const {
  const std::string tensor = "tensor \"" + entry.name + "\"";
  if (entry.dtype != "F32" && entry.dtype != "F16" && entry.dtype != "BF16")
    throw InputError(path_ + ": " + tensor + " has dtype " + entry.dtype +
                     "; only F32, F16 and BF16 tensors can be read");
  const size_t n = entry.numel();
  const size_t bytes = entry.end - entry.begin;

  std::ifstream in(path_, std::ios::binary);
  if (in) in.seekg(static_cast<std::streamoff>(data_start_ + entry.begin));
  auto read = [&](void* dst) {
    in.read(static_cast<char*>(dst), static_cast<std::streamsize>(bytes));
    if (!in) throw InputError(path_ + ": cannot read " + tensor + " (was the file changed?)");
  };

  if (entry.dtype == "F32") {
    read(out);
    return;
  }
  std::vector<uint16_t> raw(n);
  read(raw.data());
  if (entry.dtype == "F16") {
    for (size_t i = 0; i < n; ++i) out[i] = half_to_float(raw[i]);
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(raw[i]);
  }
}

std::vector<float> SafetensorsFile::read_f32(std::string_view name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) throw InputError(path_ + ": no tensor \"" + std::string(name) + "\"");
  std::vector<float> out(e->numel());
  read_f32(*e, out.data());
  return out;
}

// ---- writing
// ---------------------------------------------------------------------------------------

namespace {

// An open file descriptor that is closed on every path out.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

[[noreturn]] void sys_fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what + " (" + std::strerror(errno) + ")");
}

void write_all(int fd, const std::string& path, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      sys_fail(path, "write failed");
    }
    if (w == 0) {
      errno = ENOSPC;
      sys_fail(path, "write failed");
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

void write_file_synced(const std::string& path, std::string_view bytes) {
  Fd f;
  f.fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f.fd < 0) sys_fail(path, "cannot create the file");
  write_all(f.fd, path, bytes.data(), bytes.size());
  if (::fsync(f.fd) != 0) sys_fail(path, "fsync failed");
  int fd = f.fd;
  f.fd = -1;
  if (::close(fd) != 0) sys_fail(path, "close failed");
}

void write_safetensors(const std::string& path, std::span<const TensorView> tensors,
                       const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [k, v] : metadata) meta.append_member(k, Json(v));
    header.append_member("__metadata__", std::move(meta));
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    KD_REQUIRE(!t.name.empty() && t.name != "__metadata__",
               path + ": invalid tensor name \"" + t.name + "\"");
    KD_REQUIRE(names.insert(t.name).second, path + ": tensor \"" + t.name + "\" is given twice");
    size_t n = 1;
    Json shape = Json::array();
    for (int64_t d : t.shape) {
      KD_REQUIRE(d >= 0, path + ": tensor \"" + t.name + "\" has a negative dimension");
      n *= static_cast<size_t>(d);
      shape.push_back(Json(d));
    }
    KD_REQUIRE(n == 0 || t.data, path + ": tensor \"" + t.name + "\" has no data");
    Json entry = Json::object();
    entry.append_member("dtype", Json("F32"));
    entry.append_member("shape", std::move(shape));
    Json offsets = Json::array();
    offsets.push_back(Json(offset));
    offset += n * sizeof(float);
    offsets.push_back(Json(offset));
    entry.append_member("data_offsets", std::move(offsets));
    header.append_member(t.name, std::move(entry));
  }

  // Pad the header with spaces so the data starts 8-byte aligned.
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string prefix(8, '\0');
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((len >> (8 * i)) & 0xff);

  Fd f;
  f.fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f.fd < 0) sys_fail(path, "cannot create the file");
  write_all(f.fd, path, prefix.data(), prefix.size());
  write_all(f.fd, path, text.data(), text.size());
  for (const TensorView& t : tensors) {
    size_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<size_t>(d);
    write_all(f.fd, path, reinterpret_cast<const char*>(t.data), n * sizeof(float));
  }
  if (::fsync(f.fd) != 0) sys_fail(path, "fsync failed");
  int fd = f.fd;
  f.fd = -1;
  if (::close(fd) != 0) sys_fail(path, "close failed");
}

// ---- half-precision conversions -----------------------------------------------------------------

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in float.
    float v = static_cast<float>(mant) * 0x1p-24f;
    return sign ? -v : v;
  }
  uint32_t bits;
  if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);  // infinity, or NaN keeping its payload
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);  // rebias the exponent
  }
  return std::bit_cast<float>(bits);
}

float bf16_to_float(uint16_t h) {
  // bfloat16 is the top half of a float.
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

}  // namespace kd
