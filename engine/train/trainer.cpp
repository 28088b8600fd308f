#include "engine/train/trainer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <sstream>
#include <type_traits>

#include "engine/base/error.h"
#include "engine/base/json.h"
#include "engine/base/profiler.h"
#include "engine/base/rng.h"
#include "engine/base/trace.h"
#include "engine/io/data.h"
#include "engine/io/safetensors.h"
#include "engine/io/tensorboard.h"
#include "engine/io/tokenizer.h"
#include "engine/ops/cpu/threads.h"
#include "engine/train/backend.h"
#include "engine/train/comm.h"
#include "engine/train/nccl_comm.h"
#include "engine/train/run_dir.h"
#include "engine/train/student_init.h"
#include "engine/train/train_log.h"
#include "model/checkpoint.h"
#include "model/checkpoint_tokenizer.h"

namespace fs = std::filesystem;

namespace kd {

std::atomic<bool>& interrupt_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

double learning_rate(const Recipe& r, int64_t step) {
  const double lr = r.optim.lr, min_lr = r.schedule.min_lr;
  const int64_t warm = r.schedule.warmup_steps, total = r.train.max_steps;
  if (step < warm) return lr * double(step + 1) / double(warm);
  if (r.schedule.decay == Decay::Constant || total <= warm) return lr;
  const double progress =
      std::min(1.0, double(step - warm) / double(std::max<int64_t>(1, total - warm)));
  if (r.schedule.decay == Decay::Linear) return lr + (min_lr - lr) * progress;
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));  // cosine
}

namespace {

using Clock = std::chrono::steady_clock;

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%06lld", static_cast<long long>(step));
  return buf;
}

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

// "1 layer", "2 layers".
std::string count_of(int64_t n, const char* noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The model, its optimizer state and the loop's position: everything a checkpoint holds.
struct State {
  int64_t step = 0;  // optimizer steps done
  uint64_t rng_state = 0;
  int64_t tokens_seen = 0;
  double best_val_loss = std::numeric_limits<double>::quiet_NaN();
};

// out_dir/step_NNNNNN, written whole (model/checkpoint.h), then copied to out_dir/final.
void write_checkpoint(const std::string& out_dir, const GPT2& model, const std::vector<float>& m,
                      const std::vector<float>& v, const State& st, const Recipe& r,
                      const Tokenizer& tok) {
  const fs::path final_dir = fs::path(out_dir) / step_dir_name(st.step);
  write_dir_atomically(final_dir.string(), [&](const std::string& tmp_dir) {
    const fs::path tmp(tmp_dir);
    save_model(tmp.string(), model);
    std::vector<TensorView> opt;
    for (const auto& p : model.table()) {
      opt.push_back({"m." + p.name, p.shape, m.data() + p.offset});
      opt.push_back({"v." + p.name, p.shape, v.data() + p.offset});
    }
    write_safetensors((tmp / "optimizer.safetensors").string(), opt);
    save_tokenizer_files(tmp.string(), tok, model.config().block_size);
    Json s = Json::object();
    s["step"] = st.step;
    char hex[32];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(st.rng_state));
    s["rng_state"] = std::string(hex);
    s["tokens_seen"] = st.tokens_seen;
    s["best_val_loss"] = std::isfinite(st.best_val_loss) ? Json(st.best_val_loss) : Json();
    s["recipe_hash"] = recipe_hash(r);
    s["recipe"] = recipe_to_toml(r);
    // Written last: a directory with trainer_state.json is a complete checkpoint.
    write_file_synced((tmp / "trainer_state.json").string(), s.dump(2) + "\n");
  });
  publish_checkpoint_copy(final_dir.string(), (fs::path(out_dir) / "final").string());
}

// The complete checkpoints under out_dir (step_* directories holding trainer_state.json, which is
// written last), oldest first.
std::vector<fs::path> complete_checkpoints(const std::string& out_dir) {
  std::vector<fs::path> dirs;
  if (!fs::is_directory(out_dir)) return dirs;
  for (const auto& e : fs::directory_iterator(out_dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && !e.is_symlink() && n.rfind("step_", 0) == 0 &&
        fs::exists(e.path() / "trainer_state.json"))
      dirs.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

void prune_checkpoints(const std::string& out_dir, int keep_last) {
  const std::vector<fs::path> dirs = complete_checkpoints(out_dir);
  for (size_t i = 0; i + keep_last < dirs.size(); ++i) fs::remove_all(dirs[i]);
}

State read_state(const std::string& dir) {
  const fs::path p = fs::path(dir) / "trainer_state.json";
  if (!fs::exists(p)) throw InputError(p.string() + ": cannot open");
  try {
    Json j = Json::parse(read_text(p));
    State st;
    st.step = j.at("step").as_int();
    st.rng_state = std::stoull(j.at("rng_state").as_string(), nullptr, 16);
    st.tokens_seen = j.at("tokens_seen").as_int();
    const Json& b = j.at("best_val_loss");
    st.best_val_loss = b.is_null() ? std::numeric_limits<double>::quiet_NaN() : b.as_number();
    return st;
  } catch (const std::exception& e) {
    throw InputError(p.string() + ": " + e.what());
  }
}

// Keeps the JSON-lines log consistent with a resumed checkpoint: drops records after its step.
void truncate_log(const fs::path& log, int64_t step) {
  if (!fs::exists(log)) return;
  std::ifstream in(log);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      if (Json::parse(line).at("step").as_int() <= step) kept += line + "\n";
    } catch (const JsonError&) {
      // a torn last line from a crash: dropped
    }
  }
  in.close();
  write_file_synced(log.string(), kept);
}

struct Batches {
  std::vector<int32_t> inputs, targets;
};

}  // namespace

std::string latest_checkpoint(const std::string& out_dir) {
  const std::vector<fs::path> dirs = complete_checkpoints(out_dir);
  return dirs.empty() ? "" : dirs.back().string();
}

namespace {

// Everything the loop needs, built from the recipe before the first step.
struct Setup {
  std::unique_ptr<Tokenizer> tok;
  std::vector<uint16_t> train_tokens, val_tokens;
  std::unique_ptr<GPT2> student, teacher;
  LossConfig loss;
};

GPT2Config student_config(const Recipe& r, int vocab) {
  GPT2Config c;
  c.n_layer = r.student.n_layer;
  c.n_head = r.student.n_head;
  c.n_embd = r.student.n_embd;
  c.block_size = r.student.block_size;
  c.vocab_size = vocab;
  return c;
}

// The recipe's train and held-out tokens: [data] val, or the last val_fraction of [data] train.
TokenSplit recipe_tokens(const Recipe& r, const Tokenizer& tok) {
  const std::string& cache = r.data.cache_dir;  // empty: no cache
  TokenSplit split;
  split.train = load_tokens(r.data.train, tok, cache).tokens;
  if (r.data.val.empty())
    split = split_tokens(split.train, r.data.val_fraction);
  else
    split.val = load_tokens(r.data.val, tok, cache).tokens;
  return split;
}

// Loads tokenizer, data, student and teacher, and checks what only the files can tell.
Setup prepare(const Recipe& r, std::ostream& out, bool load_data) {
  Setup s;
  s.tok = make_tokenizer(r.data.tokenizer, r.data.encoder, r.data.vocab_bpe);
  check_recipe_tokenizers(r, *s.tok, out);  // teacher and student init speak it too
  const int V = s.tok->vocab_size();
  if (!r.student.init.empty()) {
    s.student = std::make_unique<GPT2>(load_model(r.student.init));
  } else {
    s.student = std::make_unique<GPT2>(student_config(r, V));
    s.student->init_random(static_cast<uint64_t>(r.run.seed));
  }
  const GPT2Config& sc = s.student->config();
  if (sc.vocab_size < V)
    throw InputError("[student] vocabulary of " + std::to_string(sc.vocab_size) +
                     " is smaller than the tokenizer's " + std::to_string(V));
  const int T = r.train.seq_len > 0 ? r.train.seq_len : sc.block_size;
  if (T > sc.block_size)
    throw InputError("[train] seq_len = " + std::to_string(T) +
                     " exceeds the student's block_size " + std::to_string(sc.block_size));
  if (r.has_teacher()) {
    s.teacher = std::make_unique<GPT2>(load_model(r.teacher.checkpoint));
    const GPT2Config& tc = s.teacher->config();
    if (tc.vocab_size < sc.vocab_size)
      throw InputError("[teacher] " + r.teacher.checkpoint + ": teacher vocabulary " +
                       std::to_string(tc.vocab_size) + " is smaller than the student's " +
                       std::to_string(sc.vocab_size) +
                       "; they must match, or the teacher's may be "
                       "padded larger");
    if (tc.vocab_size > sc.vocab_size)
      out << "note: teacher vocabulary " << tc.vocab_size << " is padded beyond the student's "
          << sc.vocab_size << "; using its first " << sc.vocab_size << " logits\n";
    if (T > tc.block_size)
      throw InputError("[train] seq_len = " + std::to_string(T) +
                       " exceeds the teacher's block_size " + std::to_string(tc.block_size));
    if (!r.student.teacher_layers.empty())  // DistilBERT-style start (engine/student_init.h)
      init_from_teacher_layers(*s.student, *s.teacher, r.student.teacher_layers,
                               r.teacher.checkpoint);
  }
  s.loss.ce_weight = static_cast<float>(r.loss.ce_weight);
  s.loss.kd_weight = r.has_teacher() ? static_cast<float>(r.loss.kd_weight) : 0.0f;
  s.loss.temperature = static_cast<float>(r.loss.temperature);
  s.loss.divergence = r.loss.divergence;
  s.loss.beta = static_cast<float>(r.loss.beta);
  s.loss.t2_scaling = r.loss.t2_scaling;
  if (!load_data) return s;

  TokenSplit split = recipe_tokens(r, *s.tok);
  s.train_tokens = std::move(split.train);
  s.val_tokens = std::move(split.val);
  for (const auto* v : {&s.train_tokens, &s.val_tokens})
    if (v->size() < static_cast<size_t>(T) + 1)
      throw InputError("[data] " + std::string(v == &s.train_tokens ? "train" : "val") + " has " +
                       std::to_string(v->size()) +
                       " tokens, fewer than one window of seq_len + 1 = " + std::to_string(T + 1));
  return s;
}

// Mean held-out loss over fixed evaluation windows: the student's CE and, with a teacher,
// KL(p_T || q_T) at `temperature`; or (teacher_only) the teacher's own CE.
struct EvalStats {
  double student_ce = 0, teacher_ce = 0, kl = 0;
  int64_t tokens = 0;
};

// The sums of this rank's share of the evaluation batches: batches rank, rank + ranks, ... (all of
// them for one rank).
LossSums evaluate_sums(Backend& backend, bool teacher_only, const std::vector<uint16_t>& val, int B,
                       int T, int batches, float temperature, int rank, int ranks) {
  const BatchSampler sampler({}, val, 0);
  std::vector<int32_t> in(size_t(B) * T), tg(size_t(B) * T);
  LossSums sums;
  for (int i = rank; i < batches; i += ranks) {
    sampler.eval_batch(i, B, T, in.data(), tg.data());
    sums += teacher_only ? backend.eval_teacher(in.data(), tg.data(), B, T)
                         : backend.eval_student(in.data(), tg.data(), B, T, temperature);
  }
  return sums;
}

EvalStats eval_stats(const LossSums& sums, bool teacher_only) {
  EvalStats e;
  const double rows = double(std::max<int64_t>(1, sums.rows));
  (teacher_only ? e.teacher_ce : e.student_ce) = sums.ce / rows;
  e.kl = sums.kl / rows;
  e.tokens = sums.rows;
  return e;
}

// With ranks > 1 (the trainer under MPI) every rank evaluates its share and the sums are added
// over the ranks: every rank gets the result of evaluating every batch.
EvalStats evaluate(Backend& backend, bool teacher_only, const std::vector<uint16_t>& val, int B,
                   int T, int batches, float temperature, int rank = 0, int ranks = 1) {
  LossSums sums =
      evaluate_sums(backend, teacher_only, val, B, T, batches, temperature, rank, ranks);
  if (ranks > 1) comm::allreduce_sum(sums);
  return eval_stats(sums, teacher_only);
}

void check_out_dir_writable(const std::string& out_dir) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw InputError("[run] out_dir " + out_dir + ": cannot create: " + ec.message());
  const fs::path probe = fs::path(out_dir) / ".write-probe";
  {
    std::ofstream f(probe);
    f << "probe\n";
    f.flush();
    if (!f) throw InputError("[run] out_dir " + out_dir + ": not writable");
  }
  fs::remove(probe, ec);
}

// A run that meets a NaN or Inf stops; the newest checkpoint on disk is the last good one.
[[noreturn]] void throw_non_finite(const Recipe& r, int64_t step, double loss) {
  const std::string ck = latest_checkpoint(r.run.out_dir);
  throw std::runtime_error(
      "step " + std::to_string(step + 1) + ": the loss is " +
      (std::isfinite(loss) ? "finite but the gradient norm is not" : std::to_string(loss)) +
      "; stopping. Last good checkpoint: " + (ck.empty() ? "none" : ck));
}

AdamWConfig adamw_config(const Recipe& r) {
  AdamWConfig opt;
  opt.lr = float(r.optim.lr);
  opt.beta1 = float(r.optim.beta1);
  opt.beta2 = float(r.optim.beta2);
  opt.eps = float(r.optim.eps);
  opt.weight_decay = float(r.optim.weight_decay);
  return opt;
}

StepShape step_shape(const Recipe& r, const GPT2Config& student) {
  return {r.train.micro_batch, r.train.seq_len > 0 ? r.train.seq_len : student.block_size,
          r.train.grad_accum, r.train.loss_chunk};
}

// Resumes from the newest checkpoint under out_dir when the recipe asks for it: the student's
// parameters, the AdamW moments, the loop's state and the sampler's position. Otherwise (or when
// there is none) the run starts at step 0 with a fresh log.
void release(std::vector<float>& m, std::vector<float>& v) {
  std::vector<float>().swap(m);
  std::vector<float>().swap(v);
}

State resume_or_start(const Recipe& r, GPT2& model, std::vector<float>& m, std::vector<float>& v,
                      BatchSampler& sampler, std::ostream& out) {
  const fs::path log_path = fs::path(r.run.out_dir) / "log.jsonl";
  State st;
  m.assign(model.params.size(), 0.0f);
  v.assign(model.params.size(), 0.0f);
  const std::string ck = r.checkpoint.resume ? latest_checkpoint(r.run.out_dir) : "";
  if (ck.empty()) {
    if (r.checkpoint.resume)
      out << "resume: no checkpoint in " << r.run.out_dir << "; starting from step 0\n";
    if (fs::exists(log_path)) fs::remove(log_path);
    return st;
  }
  st = read_state(ck);
  GPT2 loaded = load_model(ck);
  if (!(loaded.config() == model.config()))
    throw InputError(ck + ": checkpoint model config differs from the recipe's student");
  model.params = loaded.params;
  SafetensorsFile opt((fs::path(ck) / "optimizer.safetensors").string());
  for (const auto& p : model.table()) {
    const auto* em = opt.find("m." + p.name);
    const auto* ev = opt.find("v." + p.name);
    if (!em || !ev || em->numel() != p.numel || ev->numel() != p.numel)
      throw InputError(opt.path() + ": missing or mis-sized optimizer state for " + p.name);
    opt.read_f32(*em, m.data() + p.offset);
    opt.read_f32(*ev, v.data() + p.offset);
  }
  sampler.set_state(st.rng_state);
  // Say which recipe keys changed since the checkpoint was written.
  const fs::path old_recipe = fs::path(r.run.out_dir) / ".resume-recipe.toml";
  try {
    const std::string text =
        Json::parse(read_text(fs::path(ck) / "trainer_state.json")).at("recipe").as_string();
    write_file_synced(old_recipe.string(), text);
    Recipe before = load_recipe(old_recipe.string());
    for (const auto& d : recipe_diff(before, r)) out << "resume: recipe changed: " << d << "\n";
  } catch (const std::exception& e) {
    out << "resume: cannot compare with the checkpoint's recipe (" << e.what() << ")\n";
  }
  std::error_code ec;
  fs::remove(old_recipe, ec);
  truncate_log(log_path, st.step);
  out << "resume: from " << ck << " at step " << st.step << "\n";
  return st;
}

// The run's outputs besides checkpoints: log.jsonl and, when enabled, the TensorBoard scalars.
class RunLog {
 public:
  // resumed_at: the step of the checkpoint a resumed run continues from (-1: a fresh run). A
  // disabled log (the ranks other than 0) writes nothing.
  RunLog(const Recipe& r, int64_t resumed_at, bool enabled = true) : enabled_(enabled) {
    if (!enabled_) return;
    path_ = fs::path(r.run.out_dir) / "log.jsonl";
    log_.open(path_, std::ios::app);
    if (!log_) throw InputError("[run] out_dir: cannot write " + path_.string());
    if (r.log.tensorboard)
      tb_ = std::make_unique<TensorBoardWriter>((fs::path(r.run.out_dir) / "tb").string());
    // TensorBoard discards what the interrupted run logged after the checkpoint.
    if (tb_ && resumed_at >= 0) tb_->restart(resumed_at + 1);
  }
  // One record to log.jsonl and, for every numeric field, the matching TensorBoard scalar.
  void emit(const Json& j) {
    if (!enabled_) return;
    log_ << j.dump() << "\n";
    log_.flush();
    if (!tb_) return;
    write_log_record(*tb_, j);
    tb_->flush();
  }

 private:
  bool enabled_;
  fs::path path_;
  std::ofstream log_;
  std::unique_ptr<TensorBoardWriter> tb_;
};

void print_models(const GPT2Config& sc, const GPT2* teacher, std::ostream& out) {
  out << "student: " << count_of(sc.n_layer, "layer") << ", " << count_of(sc.n_head, "head") << ", "
      << sc.n_embd << " dims, vocab " << sc.vocab_size << ", " << sc.num_parameters()
      << " parameters\n";
  if (teacher) {
    const GPT2Config& tc = teacher->config();
    out << "teacher: " << count_of(tc.n_layer, "layer") << ", " << count_of(tc.n_head, "head")
        << ", " << tc.n_embd << " dims, " << tc.num_parameters() << " parameters\n";
  }
}

void write_summary(const Recipe& r, const TrainSummary& sum, size_t parameters) {
  Json j = Json::object();
  j["steps"] = sum.steps_done;
  j["parameters"] = int64_t(parameters);
  j["final_val_loss"] = sum.final_val_loss;
  j["best_val_loss"] = sum.best_val_loss;
  j["teacher_val_loss"] = sum.teacher_val_loss;
  j["tokens_seen"] = sum.tokens_seen;
  j["wall_seconds"] = sum.wall_seconds;
  j["interrupted"] = sum.interrupted;
  write_file_synced((fs::path(r.run.out_dir) / "summary.json").string(), j.dump(2) + "\n");
}

// Data parallelism (docs/distributed.md): rank 0 resumes or starts the run, and every other rank
// receives its parameters, moments, loop state and sampler position, so all ranks start equal.
void share_start(State& st, GPT2& model, std::vector<float>& m, std::vector<float>& v,
                 BatchSampler& sampler) {
  if (comm::size() == 1) return;
  m.resize(model.params.size());
  v.resize(model.params.size());
  comm::broadcast(model.params.data(), model.params.size() * sizeof(float));
  comm::broadcast(m.data(), m.size() * sizeof(float));
  comm::broadcast(v.data(), v.size() * sizeof(float));
  st.rng_state = sampler.state();
  static_assert(std::is_trivially_copyable_v<State>, "State is broadcast as bytes");
  comm::broadcast(&st, sizeof st);
  sampler.set_state(st.rng_state);
}

std::string& build_identity_storage() {
  static std::string id;
  return id;
}

uint64_t fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Every rank must run the same build and the same recipe: the build identity (set by kdengine's
// main) and the hash of the resolved recipe, compared across ranks.
void check_same_job(const Recipe& r) {
  if (comm::size() == 1) return;
  const std::string& build = build_identity_storage();
  const std::vector<uint64_t> builds = comm::allgather(fnv1a(build));
  for (size_t k = 1; k < builds.size(); ++k)
    if (builds[k] != builds[0])
      throw InputError("rank " + std::to_string(k) +
                       " runs a different kdengine build than rank 0 " + "(rank " +
                       std::to_string(comm::rank()) + " is " +
                       (build.empty() ? std::string("an unnamed build") : build) +
                       "); every rank must run the same binary");
  const std::vector<uint64_t> all = comm::allgather(fnv1a(recipe_hash(r)));
  for (size_t k = 1; k < all.size(); ++k)
    if (all[k] != all[0])
      throw InputError("rank " + std::to_string(k) +
                       " runs a different recipe than rank 0 (the "
                       "resolved recipes' hashes differ); every rank must get the same recipe "
                       "and --set overrides");
}

std::ostream& null_stream() {
  static std::ostream s(nullptr);  // no buffer: every write is dropped
  return s;
}

}  // namespace

namespace {
TrainSummary train_ranks(const Recipe& r, std::ostream& console);
}  // namespace

// A rank that is lost (comm::RankLost) ends this one with an error that names it and, on rank 0,
// the last complete checkpoint (the run resumes from it).
TrainSummary train(const Recipe& r, std::ostream& console) {
  try {
    return train_ranks(r, console);
  } catch (const comm::RankLost& e) {
    if (!comm::is_root()) throw;
    const std::string ck = latest_checkpoint(r.run.out_dir);
    throw std::runtime_error(std::string(e.what()) +
                             ". Stopping; last complete checkpoint: " + (ck.empty() ? "none" : ck));
  }
}

namespace {

TrainSummary train_ranks(const Recipe& r, std::ostream& console) {
  comm::init();  // joins the MPI job when started by mpirun / srun; else one rank
  comm::set_timeout(r.distributed.timeout_s);
  const bool root = comm::is_root();
  const int ranks = comm::size();
  std::ostream& out = root ? console : null_stream();  // rank 0 alone prints
  check_same_job(r);
  const auto t_start = Clock::now();
  TrainSummary sum;
  sum.best_val_loss = sum.final_val_loss = sum.teacher_val_loss =
      std::numeric_limits<double>::quiet_NaN();
  cpu::set_threads(cpu::resolve_threads(r.run.threads));  // [run] threads: one pool for CPU ops
  if (root) {
    check_out_dir(r);  // a previous run in out_dir: refused unless resume or overwrite
    check_out_dir_writable(r.run.out_dir);
  }
  Setup s = prepare(r, out, true);
  if (root) remove_previous_run(r, out);
  GPT2& model = *s.student;
  const StepShape shape = step_shape(r, model.config());
  const int B = shape.B, T = shape.T;
  const size_t rank_tokens = size_t(shape.grad_accum) * B * T;  // this rank's share of a step
  const size_t step_tokens = rank_tokens * ranks;               // the global step

  BatchSampler sampler(s.train_tokens, {}, static_cast<uint64_t>(r.run.seed));
  std::vector<float> m, v;  // the moments as checkpoints hold them
  State st = root ? resume_or_start(r, model, m, v, sampler, out) : State{};
  share_start(st, model, m, v, sampler);
  std::unique_ptr<Backend> backend =
      make_backend(r.run.device, model, s.teacher.get(), s.loss, adamw_config(r), shape, out);
  // ZeRO-1 (backend.h): with several ranks and [distributed] shard_optimizer, each rank keeps its
  // shard of the moments; checkpoints gather them on rank 0.
  const bool sharded = ranks > 1 && r.distributed.shard_optimizer;
  backend->load_state(model, m, v);
  // MPI on CPU ranks, NCCL on GPU ranks (nccl_comm.h); with ZeRO-1 the backend cuts its moments
  // (and on the GPU its master weights) to its slice here.
  std::unique_ptr<StepReducer> reducer;
  if (ranks > 1) backend->set_reducer((reducer = make_step_reducer(*backend, sharded)).get());
  // The moments now live in the backend; these host copies exist again only while a checkpoint
  // is written (on the CPU they would otherwise double the optimizer's memory).
  release(m, v);
  RunLog log(r, r.checkpoint.resume ? st.step : -1, root);
  if (ranks > 1)
    out << "data parallel: " << ranks << " ranks, global batch " << shape.B << " x "
        << shape.grad_accum << " x " << ranks << " sequences"
        << (sharded ? ", optimizer state sharded (ZeRO-1)" : "") << "\n";

  backend->report_memory();
  struct ClockGuard {
    ~ClockGuard() { profiler::set_clock(nullptr); }
  } clock_guard;
  if (r.profile.enabled && root) {
    profiler::set_clock(backend->profiler_clock());
    profiler::configure(true, r.profile.wait, r.profile.warmup, r.profile.active, r.run.out_dir);
  }

  print_models(model.config(), s.teacher.get(), out);
  if (s.teacher) {  // every rank evaluates its share of the batches
    KD_RANGE_P("eval", Phase::Eval, st.step);
    sum.teacher_val_loss = evaluate(*backend, true, s.val_tokens, B, T, r.train.eval_batches, 1.0f,
                                    comm::rank(), ranks)
                               .teacher_ce;
    out << "teacher held-out loss " << std::fixed << std::setprecision(4) << sum.teacher_val_loss
        << std::defaultfloat << "\n";
  }
  out << "tokens: train " << s.train_tokens.size() << ", val " << s.val_tokens.size() << "\n";

  // Every rank calls it (under ZeRO-1 the moments are gathered on rank 0); rank 0 writes.
  auto save = [&]() {
    KD_RANGE_P("checkpoint", Phase::Checkpoint, st.step);
    st.rng_state = sampler.state();
    backend->save_state(model, m, v);
    if (sharded) {  // each rank filled its slice (of its backend's layout), zeros elsewhere
      comm::sum_to_root(m.data(), m.size());
      comm::sum_to_root(v.data(), v.size());
    }
    if (root) {
      write_checkpoint(r.run.out_dir, model, m, v, st, r, *s.tok);
      prune_checkpoints(r.run.out_dir, r.checkpoint.keep_last);
      sum.last_checkpoint = (fs::path(r.run.out_dir) / step_dir_name(st.step)).string();
    }
    release(m, v);
  };
  auto run_eval = [&]() {
    KD_RANGE_P("eval", Phase::Eval, st.step);
    const EvalStats e = evaluate(*backend, false, s.val_tokens, B, T, r.train.eval_batches,
                                 float(r.loss.temperature), comm::rank(), ranks);
    sum.final_val_loss = e.student_ce;
    if (!std::isfinite(st.best_val_loss) || e.student_ce < st.best_val_loss)
      st.best_val_loss = e.student_ce;
    Json j = Json::object();
    j["step"] = st.step;
    j["val_loss"] = e.student_ce;
    if (s.teacher) {
      j["teacher_val_loss"] = sum.teacher_val_loss;
      j["val_kl"] = e.kl;
    }
    log.emit(j);
    out << "eval step " << st.step << ": val loss " << std::fixed << std::setprecision(4)
        << e.student_ce;
    if (s.teacher) out << ", KL(teacher||student) " << e.kl;
    out << std::defaultfloat << "\n";
  };

  std::vector<int32_t> inputs(step_tokens), targets(step_tokens);
  const auto loop_start = Clock::now();
  const int64_t first_step = st.step;
  int64_t window_tokens = 0;
  auto window_start = Clock::now();
  LogWindow log_window;
  while (st.step < r.train.max_steps) {
    const auto step_start = Clock::now();
    comm::set_step(st.step + 1);                  // names the step in a lost-rank message
    profiler::StepScope step_scope(st.step + 1);  // steps count from 1, as in the log
    {
      KD_RANGE_P("data", Phase::Data, st.step);
      // Every rank draws the whole global step (grad_accum x ranks micro-batches) from the same
      // seeded sampler and takes its own slice, so a step's sequences do not depend on `ranks`.
      for (int a = 0; a < shape.grad_accum * ranks; ++a)
        sampler.next(B, T, inputs.data() + a * size_t(B) * T, targets.data() + a * size_t(B) * T);
    }
    const double lr = learning_rate(r, st.step);
    const size_t mine = rank_tokens * comm::rank();
    const StepResult res = backend->step(inputs.data() + mine, targets.data() + mine, float(lr),
                                         float(r.optim.grad_clip), int(st.step + 1));
    if (!res.finite) throw_non_finite(r, st.step, res.loss);  // nothing of this step is saved
    st.step += 1;
    st.tokens_seen += int64_t(step_tokens);
    window_tokens += int64_t(step_tokens);
    log_window.add(res.sums, res.loss,
                   std::chrono::duration<double, std::milli>(Clock::now() - step_start).count());

    if (st.step % r.log.every == 0 || st.step == r.train.max_steps) {
      const double wsec = std::chrono::duration<double>(Clock::now() - window_start).count();
      const double tps = window_tokens / std::max(wsec, 1e-9);
      window_tokens = 0;
      window_start = Clock::now();
      const double elapsed = std::chrono::duration<double>(Clock::now() - loop_start).count();
      const double eta =
          elapsed / double(st.step - first_step) * double(r.train.max_steps - st.step);
      // Loss terms: means over the window's tokens (engine/train/train_log.h).
      const LogWindow::Means wm = log_window.means();
      log.emit(log_window.record(st.step, s.teacher != nullptr, lr, res.grad_norm, tps,
                                 double(profiler::memory_stats().total_peak)));
      log_window.reset();
      char kd_part[32] = "";
      if (s.teacher) std::snprintf(kd_part, sizeof kd_part, " | kd %.4f", wm.kd);
      char line[320];
      std::snprintf(line, sizeof line,
                    "step %lld/%d | loss %.4f | ce %.4f%s | lr %.2e | norm %.3f | %.0f tok/s "
                    "| %s elapsed | ETA %s",
                    static_cast<long long>(st.step), r.train.max_steps, wm.loss, wm.ce, kd_part, lr,
                    res.grad_norm, tps, fmt_duration(elapsed).c_str(), fmt_duration(eta).c_str());
      out << line << "\n" << std::flush;
    }
    const bool last = st.step == r.train.max_steps;
    if (last || (r.train.eval_every > 0 && st.step % r.train.eval_every == 0)) run_eval();
    if (last || (r.checkpoint.every > 0 && st.step % r.checkpoint.every == 0)) save();
    if (!last && comm::any(interrupt_flag().load())) {  // every rank stops at the same step
      out << "interrupted: writing a checkpoint at step " << st.step << "\n";
      save();
      sum.interrupted = true;
      break;
    }
  }
  if (st.step == first_step && sum.last_checkpoint.empty())
    out << "nothing to do: step " << st.step << " >= max_steps " << r.train.max_steps << "\n";
  profiler::finish();
  sum.steps_done = st.step;
  sum.tokens_seen = st.tokens_seen;
  sum.best_val_loss = st.best_val_loss;
  sum.wall_seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
  if (root) write_summary(r, sum, model.config().num_parameters());
  std::ostringstream best;  // no "nan" when no evaluation ran (e.g. Ctrl-C before the first)
  if (std::isfinite(sum.best_val_loss))
    best << "best val loss " << std::fixed << std::setprecision(4) << sum.best_val_loss;
  else
    best << "no evaluation ran";
  out << "done: " << count_of(st.step, "step") << ", " << best.str() << ", " << st.tokens_seen
      << " tokens seen, wall time " << fmt_duration(sum.wall_seconds) << "\n";
  comm::finalize();  // every rank got here: leave the MPI job cleanly
  return sum;
}

}  // namespace

void print_check(const Recipe& r, std::ostream& out) {
  out << recipe_to_toml(r) << "\n";  // its first line says what it is
  Setup s = prepare(r, out, false);
  const GPT2Config& sc = s.student->config();
  const StepShape shape = step_shape(r, sc);
  out << "student parameters: " << sc.num_parameters() << "\n";
  if (s.teacher) out << "teacher parameters: " << s.teacher->config().num_parameters() << "\n";
  const MemoryPlan p =
      memory_plan_for(r.run.device, sc, s.teacher ? &s.teacher->config() : nullptr, shape);
  auto mib = [](double b) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%10.2f MiB", b / (1024.0 * 1024.0));
    return std::string(buf);
  };
  out << "memory plan (" << p.device << "):\n";
  out << "  weights            " << mib(p.weights) << "\n";
  if (p.master_weights) out << "  master weights     " << mib(p.master_weights) << "  (fp32)\n";
  out << "  gradients          " << mib(p.gradients) << "\n";
  out << "  optimizer moments  " << mib(p.moments)
      << (r.distributed.shard_optimizer ? "  (at N ranks each holds 1/N: ZeRO-1)\n" : "\n");
  out << "  activations        " << mib(p.activations) << "  (micro_batch " << shape.B
      << " x seq_len " << shape.T << ")\n";
  out << "  teacher weights    " << mib(p.teacher_weights) << "\n";
  out << "  teacher scratch    " << mib(p.teacher_scratch) << "\n";
  out << "  loss workspace     " << mib(p.loss_workspace)
      << "  (one chunk of both models' logits)\n";
  out << "  other              " << mib(p.other) << "  (the step's tokens and targets)\n";
  out << "  total              " << mib(p.total()) << "\n";
}

std::vector<uint16_t> held_out_tokens(const Recipe& r) {
  auto tok = make_tokenizer(r.data.tokenizer, r.data.encoder, r.data.vocab_bpe);
  return recipe_tokens(r, *tok).val;
}

EvalResult evaluate_model(GPT2& student, const GPT2* teacher, const std::vector<uint16_t>& tokens,
                          int B, int T, int batches, float temperature, int rank, int ranks) {
  KD_REQUIRE(ranks >= 1 && rank >= 0 && rank < ranks, "evaluate_model: rank outside [0, ranks)");
  std::ostringstream quiet;
  std::unique_ptr<Backend> backend =
      make_backend(Device::Cpu, student, teacher, LossConfig{}, AdamWConfig{}, {B, T, 1}, quiet);
  const EvalStats e = eval_stats(
      evaluate_sums(*backend, false, tokens, B, T, batches, temperature, rank, ranks), false);
  EvalResult res;
  res.loss = e.student_ce;
  res.perplexity = std::exp(e.student_ce);
  res.kl = e.kl;
  res.tokens = e.tokens;
  if (teacher)
    res.teacher_loss =
        eval_stats(evaluate_sums(*backend, true, tokens, B, T, batches, 1.0f, rank, ranks), true)
            .teacher_ce;
  return res;
}

EvalResult evaluate_checkpoint(const std::string& ckpt, const std::string& data,
                               const std::string& teacher_ckpt, int batches, std::ostream& out) {
  cpu::set_threads(cpu::resolve_threads(0));
  GPT2 student = load_model(ckpt);
  auto tok = require_checkpoint_tokenizer(ckpt, student.config().vocab_size, out);
  std::unique_ptr<GPT2> teacher;
  if (!teacher_ckpt.empty()) {
    check_eval_teacher_tokenizer(teacher_ckpt, *tok, ckpt, out);
    teacher = std::make_unique<GPT2>(load_model(teacher_ckpt));
    if (teacher->config().vocab_size < student.config().vocab_size)
      throw InputError(
          teacher_ckpt + ": teacher vocabulary " + std::to_string(teacher->config().vocab_size) +
          " is smaller than the student's " + std::to_string(student.config().vocab_size));
  }
  const std::string cache = (fs::temp_directory_path() / "kdengine-eval-cache").string();
  std::vector<uint16_t> tokens = load_tokens(data, *tok, cache).tokens;
  int T = student.config().block_size;
  if (teacher) T = std::min(T, teacher->config().block_size);
  const int B = 4;
  if (tokens.size() < size_t(T) + 1) T = int(tokens.size()) - 1;
  if (T < 1) throw InputError(data + ": too few tokens to evaluate");
  batches = std::max(1, std::min<int>(batches, int(tokens.size() / (size_t(B) * T + 1)) + 1));
  std::ostringstream quiet;
  std::unique_ptr<Backend> backend = make_backend(Device::Cpu, student, teacher.get(), LossConfig{},
                                                  AdamWConfig{}, {B, T, 1}, quiet);
  EvalStats e = evaluate(*backend, false, tokens, B, T, batches, 1.0f);
  EvalResult res;
  res.loss = e.student_ce;
  res.perplexity = std::exp(e.student_ce);
  res.tokens = e.tokens;
  if (teacher) {
    res.teacher_loss = evaluate(*backend, true, tokens, B, T, batches, 1.0f).teacher_ce;
    res.kl = e.kl;
  }
  return res;
}

void set_build_identity(std::string id) {
  build_identity_storage() = std::move(id);
}

std::string sample_text(const std::string& ckpt, const std::string& prompt, int tokens,
                        double temperature, int top_k, uint64_t seed) {
  GPT2 model = load_model(ckpt);
  auto tok = require_checkpoint_tokenizer(ckpt, model.config().vocab_size, std::cerr);
  std::vector<int32_t> ids = tok->encode(prompt);
  if (ids.empty()) ids.push_back(tok->eot() >= 0 ? tok->eot() : int32_t('\n'));
  const int V = model.config().vocab_size, Vtok = tok->vocab_size(),
            block = model.config().block_size;
  Rng rng(seed);
  std::vector<float> logits;
  std::vector<std::pair<float, int>> cand;
  const size_t start = ids.size();
  for (int n = 0; n < tokens; ++n) {
    const int T = std::min<int>(int(ids.size()), block);
    logits.resize(size_t(T) * V);
    model.forward_inference(logits.data(), ids.data() + ids.size() - T, 1, T);
    const float* row = logits.data() + size_t(T - 1) * V;
    cand.clear();
    for (int i = 0; i < Vtok; ++i) cand.emplace_back(row[i], i);  // padded ids are never sampled
    int next;
    if (temperature <= 0) {
      next = std::max_element(cand.begin(), cand.end())->second;
    } else {
      if (top_k > 0 && top_k < int(cand.size())) {
        std::partial_sort(cand.begin(), cand.begin() + top_k, cand.end(),
                          [](auto& a, auto& b) { return a.first > b.first; });
        cand.resize(top_k);
      }
      float mx = -INFINITY;
      for (auto& c : cand) mx = std::max(mx, c.first);
      double total = 0;
      std::vector<double> p(cand.size());
      for (size_t i = 0; i < cand.size(); ++i)
        total += p[i] = std::exp((cand[i].first - mx) / temperature);
      double u = double(rng.uniform()) * total;
      size_t k = 0;
      while (k + 1 < cand.size() && u >= p[k]) u -= p[k++];
      next = cand[k].second;
    }
    ids.push_back(next);
  }
  return prompt + tok->decode(std::span<const int32_t>(ids.data() + start, ids.size() - start));
}

}  // namespace kd
