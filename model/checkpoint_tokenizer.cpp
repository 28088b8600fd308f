#include "model/checkpoint_tokenizer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <ostream>
#include <set>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/json.h"
#include "engine/io/safetensors.h"

namespace fs = std::filesystem;

namespace kd {

namespace {

constexpr const char* kEot = "<|endoftext|>";

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw InputError(p.string() + ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Json parse_file(const fs::path& p) {
  try {
    return Json::parse(read_text(p));
  } catch (const JsonError& e) {
    throw InputError(p.string() + ": malformed JSON: " + e.what());
  }
}

std::string hex64(uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// How to give a checkpoint its tokenizer by hand: the message's tail for "carries none".
std::string how_to_add_files(const std::string& dir) {
  return "give it its tokenizer files: for GPT-2 BPE copy encoder.json to " +
         (fs::path(dir) / "vocab.json").string() + " and vocab.bpe to " +
         (fs::path(dir) / "merges.txt").string() + "; for bytes write " +
         (fs::path(dir) / kTokenizerRecord).string() +
         " holding {\"kind\": \"bytes\"} (docs/checkpoints.md)";
}

std::string none_found(const std::string& dir) {
  return dir + " carries no tokenizer (none of " + kTokenizerRecord +
         ", vocab.json + merges.txt, tokenizer.json)";
}

// HF's tokenizers file (tokenizer.json) of a GPT-2 byte-level BPE: model.vocab and model.merges
// hold what vocab.json and merges.txt hold. Anything that would encode differently is refused.
std::unique_ptr<Tokenizer> read_hf_tokenizer_json(const fs::path& p, const Json& j) {
  const std::string where = p.string() + ": ";
  const std::string refuse =
      "; kdengine runs GPT-2's byte-level BPE only (ByteLevel pre-tokenizer with GPT-2's regex, "
      "no prefix space, no normalizer)";
  const Json* model = j.find("model");
  if (!model || !model->is_object()) throw InputError(where + "no \"model\" object");
  const Json* type = model->find("type");
  if (type && !(type->is_string() && type->as_string() == "BPE"))
    throw InputError(where + "model.type is " + type->dump() + ", not \"BPE\"" + refuse);
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const Json* v = model->find(k);
    if (v && !v->is_null() && !(v->is_string() && v->as_string().empty()))
      throw InputError(where + "model." + k + " is " + v->dump() + refuse);
  }
  for (const char* k : {"byte_fallback", "ignore_merges"})
    if (const Json* v = model->find(k); v && v->is_bool() && v->as_bool())
      throw InputError(where + "model." + k + " is true" + refuse);
  if (const Json* n = j.find("normalizer"); n && !n->is_null())
    throw InputError(where + "has a normalizer" + refuse);
  const Json* pre = j.find("pre_tokenizer");
  const Json* pre_type = pre && pre->is_object() ? pre->find("type") : nullptr;
  if (!pre_type || !pre_type->is_string() || pre_type->as_string() != "ByteLevel")
    throw InputError(where + "pre_tokenizer is " + (pre ? pre->dump() : std::string("missing")) +
                     refuse);
  if (const Json* v = pre->find("add_prefix_space"); v && v->is_bool() && v->as_bool())
    throw InputError(where + "pre_tokenizer.add_prefix_space is true" + refuse);
  if (const Json* v = pre->find("use_regex"); v && v->is_bool() && !v->as_bool())
    throw InputError(where + "pre_tokenizer.use_regex is false" + refuse);

  const Json* vocab = model->find("vocab");
  const Json* merges = model->find("merges");
  if (!vocab || !vocab->is_object()) throw InputError(where + "model.vocab is not an object");
  if (!merges || !merges->is_array()) throw InputError(where + "model.merges is not an array");
  std::string merges_text;
  for (const Json& m : merges->items()) {
    if (m.is_string()) {
      merges_text += m.as_string();
    } else if (m.is_array() && m.items().size() == 2 && m.items()[0].is_string() &&
               m.items()[1].is_string()) {
      merges_text += m.items()[0].as_string() + " " + m.items()[1].as_string();
    } else {
      throw InputError(where + "model.merges: expected \"left right\" or [left, right], got " +
                       m.dump());
    }
    merges_text += '\n';
  }
  // Added tokens (<|endoftext|>) must already be vocabulary entries with the same id.
  if (const Json* added = j.find("added_tokens"); added && added->is_array()) {
    for (const Json& a : added->items()) {
      const Json* content = a.is_object() ? a.find("content") : nullptr;
      const Json* id = a.is_object() ? a.find("id") : nullptr;
      const Json* in_vocab =
          content && content->is_string() ? vocab->find(content->as_string()) : nullptr;
      if (!id || !in_vocab || !id->is_number() || !in_vocab->is_number() ||
          id->as_number() != in_vocab->as_number())
        throw InputError(where + "added token " + a.dump() +
                         " is not an entry of model.vocab with the same id" + refuse);
    }
  }
  return std::make_unique<Gpt2Tokenizer>(Gpt2Tokenizer::FromText{}, vocab->dump(), merges_text,
                                         p.string() + " (model.vocab)",
                                         p.string() + " (model.merges)");
}

// Prints the old-layout note once per directory and process.
void note_old_layout(const std::string& dir, std::ostream& note) {
  static std::mutex mu;
  static std::set<std::string> seen;
  std::lock_guard<std::mutex> lock(mu);
  std::error_code ec;
  const fs::path key = fs::weakly_canonical(dir, ec);
  if (!seen.insert(ec ? dir : key.string()).second) return;
  note << "note: " << dir
       << " uses kdengine's old checkpoint layout (tokenizer.json holding the tokenizer's kind and "
          "the paths of its files); it loads, but is not self-contained. Checkpoints written now "
          "carry the tokenizer's own files (docs/checkpoints.md)\n";
}

// kdengine's tokenizer.json from before the tokenizer moved into the checkpoint.
std::unique_ptr<Tokenizer> read_old_record(const std::string& dir, const fs::path& p, const Json& j,
                                           std::ostream& note) {
  const std::string where = p.string() + " (kdengine's old layout): ";
  try {
    const std::string kind = j.at("kind").as_string();
    if (kind == "bytes" || kind == "byte") {
      note_old_layout(dir, note);
      return std::make_unique<ByteTokenizer>();
    }
    if (kind != "gpt2")
      throw InputError(where + "unknown kind \"" + kind + "\"; expected \"gpt2\" or \"bytes\"");
    const std::string enc = j.at("encoder").as_string(), bpe = j.at("vocab_bpe").as_string();
    for (const std::string& f : {enc, bpe})
      if (!fs::exists(f))
        throw InputError(where + "names " + f +
                         ", which no longer exists; copy encoder.json to vocab.json and vocab.bpe "
                         "to merges.txt in " +
                         dir + " and delete its tokenizer.json to make it self-contained");
    note_old_layout(dir, note);
    return std::make_unique<Gpt2Tokenizer>(enc, bpe);
  } catch (const JsonError& e) {
    throw InputError(where + e.what());
  }
}

std::unique_ptr<Tokenizer> read_vocab_merges(const fs::path& d) {
  const fs::path v = d / "vocab.json", m = d / "merges.txt";
  return std::make_unique<Gpt2Tokenizer>(Gpt2Tokenizer::FromText{}, read_text(v), read_text(m),
                                         v.string(), m.string());
}

}  // namespace

std::string tokenizer_kind(const Tokenizer& tok) {
  return tok.name();
}

std::string describe_tokenizer(const Tokenizer& tok) {
  if (tok.name() == "bytes") return "bytes (256 byte values)";
  return "GPT-2 BPE (" + std::to_string(tok.vocab_size()) + " tokens, hash " +
         hex64(tok.vocab_hash()) + ")";
}

void save_tokenizer_files(const std::string& dir, const Tokenizer& tok, int model_max_length) {
  const fs::path d(dir);
  Json rec = Json::object();
  rec["kind"] = tokenizer_kind(tok);
  rec["vocab_size"] = tok.vocab_size();
  rec["vocab_hash"] = hex64(tok.vocab_hash());
  if (const auto* g = dynamic_cast<const Gpt2Tokenizer*>(&tok)) {
    rec["files"] = Json::array();
    rec["files"].push_back("vocab.json");
    rec["files"].push_back("merges.txt");
    write_file_synced((d / "vocab.json").string(), g->vocab_json());
    write_file_synced((d / "merges.txt").string(), g->merges_txt());
    // HF's GPT2Tokenizer settings. split_special_tokens: "<|endoftext|>" inside a text is ordinary
    // text, as kdengine encodes it (the id itself only ever goes between documents).
    const bool eot = g->eot() >= 0;
    const Json special = eot ? Json(kEot) : Json();
    Json cfg = Json::object();
    cfg["tokenizer_class"] = "GPT2Tokenizer";
    cfg["model_max_length"] = model_max_length;
    cfg["add_prefix_space"] = false;
    cfg["add_bos_token"] = false;
    cfg["errors"] = "replace";
    cfg["clean_up_tokenization_spaces"] = false;
    cfg["split_special_tokens"] = true;
    cfg["bos_token"] = special;
    cfg["eos_token"] = special;
    cfg["unk_token"] = special;
    if (eot) {
      Json t = Json::object();
      t["content"] = kEot;
      t["lstrip"] = false;
      t["normalized"] = true;
      t["rstrip"] = false;
      t["single_word"] = false;
      t["special"] = true;
      Json added = Json::object();
      added[std::to_string(g->eot())] = std::move(t);
      cfg["added_tokens_decoder"] = std::move(added);
    }
    write_file_synced((d / "tokenizer_config.json").string(), cfg.dump(2) + "\n");
    Json map = Json::object();
    if (eot)
      for (const char* k : {"bos_token", "eos_token", "unk_token"}) map[k] = kEot;
    write_file_synced((d / "special_tokens_map.json").string(), map.dump(2) + "\n");
  } else {
    KD_REQUIRE(tok.name() == "bytes", "save_tokenizer_files: unknown tokenizer kind " + tok.name());
  }
  write_file_synced((d / kTokenizerRecord).string(), rec.dump(2) + "\n");
}

CheckpointTokenizer load_checkpoint_tokenizer(const std::string& dir, std::ostream& note) {
  const fs::path d(dir);
  CheckpointTokenizer out;
  const bool has_vm = fs::exists(d / "vocab.json") && fs::exists(d / "merges.txt");
  if (const fs::path rec_path = d / kTokenizerRecord; fs::exists(rec_path)) {
    const Json rec = parse_file(rec_path);
    const Json* kind = rec.is_object() ? rec.find("kind") : nullptr;
    if (!kind || !kind->is_string())
      throw InputError(rec_path.string() + ": expected an object with \"kind\": \"gpt2\" or " +
                       "\"bytes\"");
    if (kind->as_string() == "bytes") {
      out.tok = std::make_unique<ByteTokenizer>();
      out.source = rec_path.string();
    } else if (kind->as_string() == "gpt2") {
      if (!has_vm)
        throw InputError(rec_path.string() + ": says \"gpt2\", but " + dir +
                         " lacks vocab.json or merges.txt");
      out.tok = read_vocab_merges(d);
      out.source = (d / "vocab.json").string() + " + merges.txt";
    } else {
      throw InputError(rec_path.string() + ": unknown kind " + kind->dump() +
                       "; expected \"gpt2\" or \"bytes\"");
    }
    // The recorded hash catches tokenizer files edited or swapped after the checkpoint was written.
    if (const Json* h = rec.find("vocab_hash");
        h && h->is_string() && h->as_string() != hex64(out.tok->vocab_hash()))
      throw InputError(rec_path.string() + ": records vocab_hash " + h->as_string() +
                       ", but the tokenizer files of " + dir + " hash to " +
                       hex64(out.tok->vocab_hash()) + "; they were changed after it was written");
    return out;
  }
  if (has_vm) {
    out.tok = read_vocab_merges(d);
    out.source = (d / "vocab.json").string() + " + merges.txt";
    return out;
  }
  if (const fs::path p = d / "tokenizer.json"; fs::exists(p)) {
    const Json j = parse_file(p);
    if (!j.is_object()) throw InputError(p.string() + ": expected a JSON object");
    if (j.find("kind") && !j.find("model")) {
      out.tok = read_old_record(dir, p, j, note);
    } else {
      out.tok = read_hf_tokenizer_json(p, j);
    }
    out.source = p.string();
    return out;
  }
  return out;
}

std::unique_ptr<Tokenizer> require_checkpoint_tokenizer(const std::string& dir, int model_vocab,
                                                        std::ostream& note) {
  CheckpointTokenizer ct = load_checkpoint_tokenizer(dir, note);
  if (!ct.tok) throw InputError(none_found(dir) + "; " + how_to_add_files(dir));
  if (ct.tok->vocab_size() > model_vocab)
    throw InputError(ct.source + ": " + describe_tokenizer(*ct.tok) + " has more tokens than the " +
                     "model's vocab_size " + std::to_string(model_vocab) + " (" +
                     (fs::path(dir) / "config.json").string() + "): not this model's tokenizer");
  return std::move(ct.tok);
}

void check_same_tokenizer(const Tokenizer& teacher, const std::string& teacher_name,
                          const Tokenizer& student, const std::string& student_name) {
  if (teacher.name() == student.name() && teacher.vocab_hash() == student.vocab_hash()) return;
  throw InputError(
      "tokenizer mismatch: the teacher " + teacher_name + " uses " + describe_tokenizer(teacher) +
      ", but the student " + student_name + " uses " + describe_tokenizer(student) +
      ". Distillation compares the two models' predictions token id by token id, which means "
      "something only when both use the same tokenizer: pick a teacher trained with the student's "
      "tokenizer, or train the student with the teacher's");
}

void check_eval_teacher_tokenizer(const std::string& teacher_dir, const Tokenizer& student,
                                  const std::string& student_dir, std::ostream& note) {
  CheckpointTokenizer t = load_checkpoint_tokenizer(teacher_dir, note);
  if (!t.tok)
    throw InputError("teacher " + none_found(teacher_dir) +
                     ", so eval cannot tell whether it speaks the tokenizer of " + student_dir +
                     " (" + describe_tokenizer(student) + "); " + how_to_add_files(teacher_dir));
  check_same_tokenizer(*t.tok, teacher_dir, student, student_dir);
}

void check_recipe_tokenizers(const Recipe& r, const Tokenizer& run_tok, std::ostream& note) {
  const std::string run_kind = tokenizer_kind(run_tok);
  const std::string data_name =
      std::string("[data] tokenizer = \"") + to_string(r.data.tokenizer) + "\"";
  std::string student_name = "(a new model, " + data_name + ")";
  if (!r.student.init.empty()) {
    CheckpointTokenizer s = load_checkpoint_tokenizer(r.student.init, note);
    if (s.tok) {
      if (s.tok->name() != run_tok.name() || s.tok->vocab_hash() != run_tok.vocab_hash())
        throw InputError("tokenizer mismatch: [student] init " + r.student.init + " uses " +
                         describe_tokenizer(*s.tok) + ", but the recipe's " + data_name + " is " +
                         describe_tokenizer(run_tok) +
                         "; the student must go on with the tokenizer it was trained with");
    } else {
      note << "note: [student] init " << none_found(r.student.init) << "; it is taken to use the "
           << data_name << " (" << describe_tokenizer(run_tok) << ")\n";
    }
    student_name = "([student] init " + r.student.init + ", " + data_name + ")";
  }
  if (!r.has_teacher()) return;
  const std::string teacher_name = "([teacher] checkpoint " + r.teacher.checkpoint + ")";
  CheckpointTokenizer t = load_checkpoint_tokenizer(r.teacher.checkpoint, note);
  const std::string& declared = r.teacher.tokenizer;
  if (!t.tok) {
    if (declared.empty())
      throw InputError("[teacher] " + none_found(r.teacher.checkpoint) +
                       ", so nothing shows that it speaks the student's tokenizer (" +
                       describe_tokenizer(run_tok) +
                       "). If you know it was trained with that tokenizer, say so "
                       "in the recipe: [teacher] tokenizer = \"" +
                       run_kind + "\"; or " + how_to_add_files(r.teacher.checkpoint));
    if (declared != run_kind)
      throw InputError("tokenizer mismatch: the teacher " + teacher_name +
                       " is declared by [teacher] tokenizer = \"" + declared +
                       "\", but the student " + student_name + " uses " +
                       describe_tokenizer(run_tok) +
                       "; distillation needs both to use the same tokenizer");
    note << "note: [teacher] " << r.teacher.checkpoint << " carries no tokenizer; taken to use the "
         << "student's " << describe_tokenizer(run_tok) << " as [teacher] tokenizer = \""
         << declared << "\" declares\n";
    return;
  }
  if (!declared.empty() && declared != tokenizer_kind(*t.tok))
    throw InputError("[teacher] tokenizer = \"" + declared + "\", but " + r.teacher.checkpoint +
                     " carries " + describe_tokenizer(*t.tok) + " (" + t.source +
                     "); remove the key or correct it");
  check_same_tokenizer(*t.tok, teacher_name, run_tok, student_name);
  note << "tokenizer: teacher and student both use " << describe_tokenizer(run_tok)
       << " (the teacher's read from " << t.source << ")\n";
}

}  // namespace kd
