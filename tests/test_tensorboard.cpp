// TensorBoard event files: CRC-32C and record bytes against golden vectors, and a written file read
// back by an independent reader (its own bitwise CRC, its own protobuf decoding).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "engine/base/crc32c.h"
#include "engine/base/json.h"
#include "engine/io/tensorboard.h"

namespace fs = std::filesystem;

namespace {

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string to_hex(const std::string& bytes) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(d[c >> 4]);
    out.push_back(d[c & 15]);
  }
  return out;
}

// Bit-at-a-time CRC-32C: the reference the table-driven version is checked against.
uint32_t crc32c_bitwise(const std::string& s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char byte : s) {
    c ^= byte;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked(uint32_t crc) {
  return static_cast<uint32_t>(((crc >> 15) | (crc << 17)) + 0xa282ead8ull);
}

uint64_t read_le(const std::string& s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t{static_cast<unsigned char>(s.at(at + i))} << (8 * i);
  return v;
}

struct Value {
  std::string tag;
  float simple_value = NAN;
};
struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  int session_status = -1;  // SessionLog.status when the event has a session_log, else -1
  std::vector<Value> values;
};

// A minimal protobuf reader: varint / fixed64 / length-delimited / fixed32 fields.
struct Proto {
  const std::string& s;
  size_t i = 0;
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      const auto b = static_cast<unsigned char>(s.at(i++));
      v |= uint64_t{b & 0x7Fu} << shift;
      if (!(b & 0x80)) return v;
      if (shift > 63) throw std::runtime_error("varint too long");
    }
  }
  std::string bytes() {
    const size_t n = varint();
    if (i + n > s.size()) throw std::runtime_error("length past end");
    std::string out = s.substr(i, n);
    i += n;
    return out;
  }
  bool done() const { return i >= s.size(); }
};

Value decode_value(const std::string& data) {
  Value v;
  Proto p{data};
  while (!p.done()) {
    const uint64_t key = p.varint();
    if (key == ((1 << 3) | 2)) {
      v.tag = p.bytes();
    } else if (key == ((2 << 3) | 5)) {
      const auto bits = static_cast<uint32_t>(read_le(data, p.i, 4));
      std::memcpy(&v.simple_value, &bits, 4);
      p.i += 4;
    } else {
      throw std::runtime_error("unexpected Value field key " + std::to_string(key));
    }
  }
  return v;
}

Event decode_event(const std::string& data) {
  Event e;
  Proto p{data};
  while (!p.done()) {
    const uint64_t key = p.varint();
    switch (key) {
      case (1 << 3) | 1: {
        const uint64_t bits = read_le(data, p.i, 8);
        std::memcpy(&e.wall_time, &bits, 8);
        p.i += 8;
        break;
      }
      case (2 << 3) | 0:
        e.step = static_cast<int64_t>(p.varint());
        break;
      case (3 << 3) | 2:
        e.file_version = p.bytes();
        break;
      case (5 << 3) | 2: {
        const std::string summary = p.bytes();
        Proto q{summary};
        while (!q.done()) {
          if (q.varint() != ((1 << 3) | 2)) throw std::runtime_error("unexpected Summary field");
          e.values.push_back(decode_value(q.bytes()));
        }
        break;
      }
      case (7 << 3) | 2: {  // session_log
        const std::string log = p.bytes();
        Proto q{log};
        e.session_status = 0;
        while (!q.done()) {
          if (q.varint() != ((1 << 3) | 0)) throw std::runtime_error("unexpected SessionLog field");
          e.session_status = static_cast<int>(q.varint());
        }
        break;
      }
      default:
        throw std::runtime_error("unexpected Event field key " + std::to_string(key));
    }
  }
  return e;
}

// Reads every record of an event file, verifying both CRCs of each.
std::vector<Event> read_event_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  const std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<Event> out;
  size_t at = 0;
  while (at < s.size()) {
    if (at + 12 > s.size()) throw std::runtime_error("truncated header");
    const uint64_t len = read_le(s, at, 8);
    if (read_le(s, at + 8, 4) != masked(crc32c_bitwise(s.substr(at, 8))))
      throw std::runtime_error("bad length crc");
    if (at + 12 + len + 4 > s.size()) throw std::runtime_error("truncated record");
    const std::string data = s.substr(at + 12, len);
    if (read_le(s, at + 12 + len, 4) != masked(crc32c_bitwise(data)))
      throw std::runtime_error("bad data crc");
    out.push_back(decode_event(data));
    at += 12 + len + 4;
  }
  return out;
}

fs::path fresh_temp_dir(const std::string& stem) {
  fs::path p = fs::temp_directory_path() / (stem + "." + std::to_string(getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) out.push_back(e.path());
  return out;
}

}  // namespace

TEST(Crc32c, GoldenVector) {
  const std::string s = "123456789";
  EXPECT_EQ(kd::crc32c(s.data(), s.size()), 0xE3069283u);
  EXPECT_EQ(kd::crc32c_mask(0xE3069283u), 0xC78AB0E5u);
  EXPECT_EQ(kd::crc32c(nullptr, 0), 0u);
}

TEST(Crc32c, MatchesBitwiseAndChains) {
  std::string s;
  for (int i = 0; i < 1000; ++i) s.push_back(static_cast<char>((i * 131 + 7) & 0xFF));
  for (size_t n : {size_t{1}, size_t{3}, size_t{64}, size_t{999}, s.size()}) {
    const std::string part = s.substr(0, n);
    EXPECT_EQ(kd::crc32c(part.data(), part.size()), crc32c_bitwise(part)) << n;
  }
  const uint32_t a = kd::crc32c(s.data(), 400);
  EXPECT_EQ(kd::crc32c(s.data() + 400, s.size() - 400, a), kd::crc32c(s.data(), s.size()));
}

TEST(TensorBoard, FileVersionRecordGolden) {
  const std::string rec = kd::tb::frame_record(kd::tb::encode_file_version_event(1.5));
  EXPECT_EQ(to_hex(rec),
            "1800000000000000a37f4b22"
            "09000000000000f83f1a0d627261696e2e4576656e743a32"
            "2a28646c");
}

TEST(TensorBoard, ScalarRecordGolden) {
  const std::string rec = kd::tb::frame_record(kd::tb::encode_scalar_event(1.5, 7, "loss", 0.25f));
  EXPECT_EQ(to_hex(rec),
            "1a00000000000000129bd82d"
            "09000000000000f83f10072a0d0a0b0a046c6f7373150000803e"
            "c9d07b8d");
}

// The bytes TensorBoard's own protobuf classes and record writer produce for
// Event{wall_time=1.5, step=7, session_log{status=START}}.
TEST(TensorBoard, SessionStartRecordGolden) {
  const std::string rec = kd::tb::frame_record(kd::tb::encode_session_start_event(1.5, 7));
  EXPECT_EQ(to_hex(rec),
            "0f000000000000006d532b09"
            "09000000000000f83f10073a020801"
            "774771c7");
  const Event e = decode_event(from_hex("09000000000000f83f10073a020801"));
  EXPECT_EQ(e.step, 7);
  EXPECT_EQ(e.session_status, 1);  // START
  EXPECT_TRUE(e.values.empty());
}

TEST(TensorBoard, GoldenRecordsDecode) {
  // The reader itself against the golden bytes, so that it is checked independently of the writer.
  const std::string data = from_hex("09000000000000f83f10072a0d0a0b0a046c6f7373150000803e");
  const Event e = decode_event(data);
  EXPECT_EQ(e.wall_time, 1.5);
  EXPECT_EQ(e.step, 7);
  ASSERT_EQ(e.values.size(), 1u);
  EXPECT_EQ(e.values[0].tag, "loss");
  EXPECT_EQ(e.values[0].simple_value, 0.25f);
}

TEST(TensorBoard, WriterRoundTrip) {
  const fs::path dir = fresh_temp_dir("kd_tb_roundtrip");
  std::string path;
  {
    kd::TensorBoardWriter w((dir / "run").string());
    path = w.path();
    w.scalar("train/loss", 0, 5.5f, 100.0);
    w.scalar("train/loss", 1, 4.25f, 101.0);
    w.scalar("train/lr", 300, 6e-4f, 102.0);
    w.scalar("odd/negative", -3, -1.0f, 103.0);
    w.scalar("big/step", int64_t{1} << 40, 1e30f, 104.0);
    w.flush();
  }
  // events.out.tfevents.<10 digits>.<host>.<pid>.<n>
  const std::string name = fs::path(path).filename().string();
  EXPECT_TRUE(std::regex_match(name, std::regex("events\\.out\\.tfevents\\.[0-9]{10}\\..+\\." +
                                                std::to_string(getpid()) + "\\.[0-9]+")))
      << name;
  EXPECT_EQ(event_files(dir / "run").size(), 1u);

  const std::vector<Event> ev = read_event_file(path);
  ASSERT_EQ(ev.size(), 6u);
  EXPECT_EQ(ev[0].file_version, "brain.Event:2");
  EXPECT_TRUE(ev[0].values.empty());
  EXPECT_GT(ev[0].wall_time, 1.6e9);  // "now", in seconds since 1970
  struct Want {
    const char* tag;
    int64_t step;
    float value;
    double wall;
  };
  const Want want[] = {{"train/loss", 0, 5.5f, 100.0},
                       {"train/loss", 1, 4.25f, 101.0},
                       {"train/lr", 300, 6e-4f, 102.0},
                       {"odd/negative", -3, -1.0f, 103.0},
                       {"big/step", int64_t{1} << 40, 1e30f, 104.0}};
  for (size_t i = 0; i < 5; ++i) {
    const Event& e = ev[i + 1];
    EXPECT_EQ(e.step, want[i].step) << i;
    EXPECT_EQ(e.wall_time, want[i].wall) << i;
    ASSERT_EQ(e.values.size(), 1u) << i;
    EXPECT_EQ(e.values[0].tag, want[i].tag) << i;
    EXPECT_EQ(e.values[0].simple_value, want[i].value) << i;
  }
  fs::remove_all(dir);
}

TEST(TensorBoard, TwoWritersGetDistinctFiles) {
  const fs::path dir = fresh_temp_dir("kd_tb_two");
  {
    kd::TensorBoardWriter a(dir.string());
    kd::TensorBoardWriter b(dir.string());
    EXPECT_NE(a.path(), b.path());
  }
  EXPECT_EQ(event_files(dir).size(), 2u);
  fs::remove_all(dir);
}

// TensorBoard reads a folder's event files in name order; a restart's file must come after the
// run it cuts short even when that run's file carries a later time (same second, clock set back).
TEST(TensorBoard, NewFileSortsAfterExistingOnesAndRecordsTheRestart) {
  const fs::path dir = fresh_temp_dir("kd_tb_order");
  const long long later = static_cast<long long>(kd::unix_time_now()) + 100;
  const std::string old_name =
      "events.out.tfevents." + std::to_string(later) + ".zzzz-host.99999.7";
  std::ofstream(dir / old_name) << "";
  std::string path;
  {
    kd::TensorBoardWriter w(dir.string());
    w.restart(13);
    w.scalar("train/loss", 13, 2.5f, 10.0);
    w.flush();
    path = w.path();
  }
  const std::string name = fs::path(path).filename().string();
  EXPECT_GT(name, old_name);
  EXPECT_EQ(name.substr(0, 31), "events.out.tfevents." + std::to_string(later + 1) + ".") << name;
  const std::vector<Event> ev = read_event_file(path);
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0].file_version, "brain.Event:2");
  EXPECT_EQ(ev[1].step, 13);
  EXPECT_EQ(ev[1].session_status, 1);
  EXPECT_TRUE(ev[1].values.empty());
  EXPECT_EQ(ev[2].values.at(0).simple_value, 2.5f);
  fs::remove_all(dir);
}

TEST(TensorBoard, UnwritableFolderThrowsWithPath) {
  const fs::path dir = fresh_temp_dir("kd_tb_bad");
  std::ofstream(dir / "plainfile") << "x";
  const std::string bad = (dir / "plainfile" / "run").string();
  try {
    kd::TensorBoardWriter w(bad);
    FAIL() << "expected an exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// Writes a run folder as the trainer does: log.jsonl and TensorBoard scalars from the same records.
// With KD_KEEP_TB_DIR set, the folder is written there and kept, for tools/check_tensorboard.py.
TEST(TensorBoard, LogRecordsMatchLogFile) {
  const char* keep = std::getenv("KD_KEEP_TB_DIR");
  const fs::path dir = keep && *keep ? fs::path(keep) : fresh_temp_dir("kd_tb_run");
  if (keep && *keep) {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  std::vector<kd::Json> records;
  for (int step = 1; step <= 40; ++step) {
    kd::Json r = kd::Json::object();
    r["step"] = step;
    const double ce = 5.0 * std::exp(-step / 15.0) + 2.1;
    const double kd_loss = 1.5 * std::exp(-step / 10.0) + 0.3;
    r["loss"] = 0.5 * ce + 0.5 * kd_loss;
    r["ce"] = ce;
    r["kd"] = kd_loss;
    r["kl"] = kd_loss * 0.97;
    r["teacher_entropy"] = 2.8;
    r["student_entropy"] = 3.5 - step * 0.01;
    r["lr"] = 6e-4 * std::min(1.0, step / 10.0);
    r["grad_norm"] = 1.0 + 0.3 * std::sin(step);
    r["tokens_per_s"] = 12345.678 + step;
    r["step_time_ms"] = 41.5 + 0.1 * step;
    r["peak_mem_bytes"] = int64_t{123456789} + step;  // not exact in float32
    records.push_back(r);
    if (step % 10 == 0) {
      kd::Json e = kd::Json::object();
      e["step"] = step;
      e["val_loss"] = ce + 0.1;
      e["teacher_val_loss"] = 2.0;
      e["val_kl"] = 0.4 + 1.0 / step;
      records.push_back(e);
    }
  }
  int written = 0;
  {
    std::ofstream log(dir / "log.jsonl");
    kd::TensorBoardWriter w(dir.string());
    for (size_t i = 0; i < records.size(); ++i) {
      log << records[i].dump() << "\n";
      written += kd::write_log_record(w, records[i], 1000.0 + static_cast<double>(i));
    }
    w.flush();
  }
  EXPECT_EQ(written, 40 * 11 + 4 * 3);

  const auto files = event_files(dir);
  ASSERT_EQ(files.size(), 1u);
  const std::vector<Event> ev = read_event_file(files[0].string());
  ASSERT_EQ(ev.size(), 1u + static_cast<size_t>(written));
  // Walk the records and the events together, in the table's order.
  size_t at = 1;
  for (const kd::Json& r : records) {
    for (const kd::TensorBoardTag& t : kd::kTensorBoardTags) {
      const kd::Json* v = r.find(t.key);
      if (!v) continue;
      ASSERT_LT(at, ev.size());
      const Event& e = ev[at++];
      EXPECT_EQ(e.step, r.at("step").as_int());
      ASSERT_EQ(e.values.size(), 1u);
      EXPECT_EQ(e.values[0].tag, t.tag);
      EXPECT_EQ(e.values[0].simple_value, static_cast<float>(v->as_number())) << t.key;
    }
  }
  if (!(keep && *keep)) fs::remove_all(dir);
}

TEST(TensorBoard, LogRecordWithoutStepThrows) {
  const fs::path dir = fresh_temp_dir("kd_tb_nostep");
  {
    kd::TensorBoardWriter w(dir.string());
    kd::Json r = kd::Json::object();
    r["loss"] = 1.0;
    EXPECT_THROW(kd::write_log_record(w, r), kd::JsonError);
  }
  fs::remove_all(dir);
}
