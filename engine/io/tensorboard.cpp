#include "engine/io/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "engine/base/crc32c.h"
#include "engine/base/json.h"

namespace kd {

double unix_time_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

namespace tb {

namespace {

// Protobuf wire types.
constexpr uint32_t kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5;

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_key(std::string& out, uint32_t field, uint32_t wire_type) {
  put_varint(out, (uint64_t{field} << 3) | wire_type);
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void put_double(std::string& out, uint32_t field, double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  put_key(out, field, kFixed64);
  put_le(out, bits, 8);
}

void put_float(std::string& out, uint32_t field, float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  put_key(out, field, kFixed32);
  put_le(out, bits, 4);
}

void put_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}

}  // namespace

std::string encode_file_version_event(double wall_time, std::string_view version) {
  std::string ev;
  put_double(ev, 1, wall_time);
  put_bytes(ev, 3, version);
  return ev;
}

std::string encode_scalar_event(double wall_time, int64_t step, std::string_view tag, float value) {
  std::string val;  // Value
  put_bytes(val, 1, tag);
  put_float(val, 2, value);
  std::string summary;  // Summary
  put_bytes(summary, 1, val);
  std::string ev;  // Event
  put_double(ev, 1, wall_time);
  if (step != 0) {
    put_key(ev, 2, kVarint);
    put_varint(ev, static_cast<uint64_t>(step));  // int64: negative steps take ten bytes
  }
  put_bytes(ev, 5, summary);
  return ev;
}

std::string encode_session_start_event(double wall_time, int64_t step) {
  std::string log;  // SessionLog
  put_key(log, 1, kVarint);
  put_varint(log, 1);  // status = START
  std::string ev;
  put_double(ev, 1, wall_time);
  if (step != 0) {
    put_key(ev, 2, kVarint);
    put_varint(ev, static_cast<uint64_t>(step));
  }
  put_bytes(ev, 7, log);  // Event.session_log (6 is the deprecated log_message)
  return ev;
}

std::string frame_record(std::string_view data) {
  std::string rec;
  rec.reserve(data.size() + 16);
  put_le(rec, data.size(), 8);
  put_le(rec, crc32c_mask(crc32c(rec.data(), 8)), 4);
  rec.append(data);
  put_le(rec, crc32c_mask(crc32c(data.data(), data.size())), 4);
  return rec;
}

}  // namespace tb

namespace {

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

// The 10-digit time of the newest events.out.tfevents.<time>.* file in dir (0 when none).
int64_t newest_event_time(const std::string& dir) {
  const std::string prefix = "events.out.tfevents.";
  int64_t newest = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) != 0) continue;
    const std::string t = n.substr(prefix.size(), n.find('.', prefix.size()) - prefix.size());
    if (t.empty() || t.find_first_not_of("0123456789") != std::string::npos) continue;
    newest = std::max<int64_t>(newest, std::stoll(t));
  }
  return newest;
}

[[noreturn]] void fail(const std::string& what, const std::string& path, int err) {
  throw std::runtime_error("tensorboard: " + what + " " + path + ": " + std::strerror(err));
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw std::runtime_error("tensorboard: cannot create " + dir + ": " + ec.message());
  // <n> tells apart writers opened by one process in the same second. TensorBoard reads a
  // folder's files in name order, and a restart must come after the run it cuts short: when a file
  // of this second or later is already there (a run resumed within a second, or a clock set
  // back), the time is the newest one + 1.
  static std::atomic<int> counter{0};
  int64_t t = static_cast<int64_t>(unix_time_now());
  const int64_t newest = newest_event_time(dir);
  if (newest >= t) t = newest + 1;
  char name[64];
  std::snprintf(name, sizeof name, "%010" PRId64, t);
  path_ = (std::filesystem::path(dir) /
           ("events.out.tfevents." + std::string(name) + "." + host_name() + "." +
            std::to_string(getpid()) + "." + std::to_string(counter++)))
              .string();
  file_ = std::fopen(path_.c_str(), "wb");
  if (!file_) fail("cannot create", path_, errno);
  write(tb::frame_record(tb::encode_file_version_event(unix_time_now())));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);  // errors here cannot be reported; flush() reports them
}

void TensorBoardWriter::write(const std::string& record) {
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size())
    fail("cannot write", path_, errno);
}

void TensorBoardWriter::scalar(const std::string& tag, int64_t step, float value,
                               double wall_time) {
  if (wall_time < 0) wall_time = unix_time_now();
  write(tb::frame_record(tb::encode_scalar_event(wall_time, step, tag, value)));
}

void TensorBoardWriter::restart(int64_t step) {
  write(tb::frame_record(tb::encode_session_start_event(unix_time_now(), step)));
}

void TensorBoardWriter::flush() {
  if (std::fflush(file_) != 0) fail("cannot write", path_, errno);
}

int write_log_record(TensorBoardWriter& w, const Json& record, double wall_time) {
  const int64_t step = record.at("step").as_int();
  if (wall_time < 0) wall_time = unix_time_now();
  int n = 0;
  for (const TensorBoardTag& t : kTensorBoardTags) {
    const Json* v = record.find(t.key);
    if (v && v->is_number()) {
      w.scalar(t.tag, step, static_cast<float>(v->as_number()), wall_time);
      ++n;
    }
  }
  return n;
}

}  // namespace kd
