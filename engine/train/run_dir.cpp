#include "engine/train/run_dir.h"

#include <algorithm>
#include <filesystem>
#include <ostream>

#include "engine/base/error.h"

namespace fs = std::filesystem;

namespace kd {

namespace {

bool is_run_entry(const std::string& n) {
  static const char* const kFiles[] = {"final",      "log.jsonl",          "summary.json",
                                       "tb",         "profile.json",       "trace.json",
                                       ".tmp-final", ".resume-recipe.toml"};
  for (const char* f : kFiles)
    if (n == f) return true;
  return n.rfind("step_", 0) == 0 || n.rfind(".tmp-step_", 0) == 0;
}

std::string describe(const std::vector<std::string>& entries) {
  std::string s;
  size_t shown = 0;
  for (const auto& e : entries) {
    if (e.rfind('.', 0) == 0) continue;  // leftovers of a crash say nothing to the user
    if (shown == 4) {
      s += ", ...";
      break;
    }
    s += (shown++ ? ", " : "") + e + (e == "tb" ? "/" : "");
  }
  return s.empty() ? "unfinished checkpoint files" : s;
}

}  // namespace

std::vector<std::string> previous_run_entries(const std::string& out_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(out_dir, ec)) {
    const std::string n = e.path().filename().string();
    if (is_run_entry(n)) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

void check_out_dir(const Recipe& r) {
  if (r.checkpoint.resume || r.run.overwrite) return;
  const std::vector<std::string> old = previous_run_entries(r.run.out_dir);
  if (old.empty()) return;
  throw InputError("[run] out_dir " + r.run.out_dir + " already holds a run (" + describe(old) +
                   "). To continue it, set [checkpoint] resume = true; to delete it and start "
                   "again, set [run] overwrite = true (or pass --overwrite); or choose another "
                   "[run] out_dir.");
}

void remove_previous_run(const Recipe& r, std::ostream& out) {
  if (!r.run.overwrite || r.checkpoint.resume) return;
  const std::vector<std::string> old = previous_run_entries(r.run.out_dir);
  if (old.empty()) return;
  for (const auto& n : old) {
    std::error_code ec;
    fs::remove_all(fs::path(r.run.out_dir) / n, ec);
    if (ec)
      throw InputError("[run] overwrite: cannot remove " + (fs::path(r.run.out_dir) / n).string() +
                       ": " + ec.message());
  }
  out << "overwrite: removed the previous run in " << r.run.out_dir << " (" << describe(old)
      << ")\n";
}

}  // namespace kd
