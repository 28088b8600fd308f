// TensorBoard scalars without TensorFlow: an event file written by hand.
//
// A run folder holds events.out.tfevents.<unix time, 10 digits>.<host>.<pid>.<n>. The file is a
// sequence of TFRecords:
//   uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32
//   masked_crc32c(data)
// and each record's data is a serialized tensorflow.Event protobuf. The first record carries
// file_version = "brain.Event:2"; every scalar is one Event{wall_time, step, summary{value{tag,
// simple_value}}}. Only the protobuf fields needed for that are encoded:
//   Event:   wall_time = 1 (double), step = 2 (varint), file_version = 3 (string), summary = 5
//   Summary: value = 1 (repeated message)
//   Value:   tag = 1 (string), simple_value = 2 (float)
//   Event:   session_log = 7 (message); SessionLog: status = 1 (enum, START = 1)
//
// A resumed run writes a new event file whose first event after file_version is
// Event{step = S, session_log{status = START}}: reading the folder's files in name order,
// TensorBoard then discards every point it has read with step >= S (the old run's points past the
// checkpoint it resumed from), so each step shows once. PyTorch's SummaryWriter(purge_step = S)
// does the same. For that the new file's name must sort after the old ones: its 10-digit time is
// raised, when needed, past the newest event file already in the folder.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace kd {

class Json;

// Seconds since the Unix epoch (system clock), as TensorBoard's wall_time.
double unix_time_now();

namespace tb {
// Serialized Event{wall_time, file_version}.
std::string encode_file_version_event(double wall_time, std::string_view version = "brain.Event:2");
// Serialized Event{wall_time, step, summary{value{tag, simple_value}}}. step 0 is left out, as
// proto3 does for default values (readers treat a missing step as 0).
std::string encode_scalar_event(double wall_time, int64_t step, std::string_view tag, float value);
// Serialized Event{wall_time, step, session_log{status = START}}: a restart at `step`.
std::string encode_session_start_event(double wall_time, int64_t step);
// TFRecord framing of one record's data.
std::string frame_record(std::string_view data);
}  // namespace tb

class TensorBoardWriter {
 public:
  // Creates dir (and parents) and a new event file in it, and writes the file_version record. The
  // file's name sorts after every event file already in dir. Throws std::runtime_error naming the
  // path when the folder or file cannot be written.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Appends one scalar. wall_time < 0 means now. Throws on a write error.
  void scalar(const std::string& tag, int64_t step, float value, double wall_time = -1);
  // Records that the run restarted at `step` (a resume from the checkpoint after step - 1):
  // TensorBoard discards the points of earlier files at steps >= `step`. Call it before any scalar.
  void restart(int64_t step);
  // Pushes buffered records to the file (TensorBoard reads a file while it grows). Throws on error.
  void flush();

  const std::string& path() const { return path_; }

 private:
  void write(const std::string& record);

  std::string path_;
  std::FILE* file_ = nullptr;
};

// The run log (log.jsonl) and TensorBoard share one mapping: each key of a log record that has a
// tag here becomes that scalar, at the record's "step". Keys without a tag are not plotted.
struct TensorBoardTag {
  const char* key;  // key in a log.jsonl record
  const char* tag;  // TensorBoard tag
};
inline constexpr TensorBoardTag kTensorBoardTags[] = {
    {"loss", "train/loss"},
    {"ce", "train/ce"},
    {"kd", "train/kd"},
    {"kl", "train/kl"},
    {"teacher_entropy", "train/teacher_entropy"},
    {"student_entropy", "train/student_entropy"},
    {"lr", "train/lr"},
    {"grad_norm", "train/grad_norm"},
    {"tokens_per_s", "perf/tokens_per_s"},
    {"step_time_ms", "perf/step_time_ms"},
    {"peak_mem_bytes", "mem/peak_bytes"},
    {"val_loss", "val/loss"},
    {"teacher_val_loss", "val/teacher_loss"},
    {"val_kl", "val/kl"},
};

// Writes every mapped numeric member of a log record (a JSON object with an integer "step") as a
// scalar. Returns how many scalars were written. Throws kd::JsonError when "step" is missing.
int write_log_record(TensorBoardWriter& w, const Json& record, double wall_time = -1);

}  // namespace kd
