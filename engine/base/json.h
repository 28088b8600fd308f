// A small JSON reader and writer: enough for safetensors headers, HF config.json, GPT-2's
// encoder.json, trainer state and the JSON-lines log. Objects keep their keys in insertion order.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kd {

struct JsonError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;
  Json(std::nullptr_t) {}
  Json(bool b) : type_(Type::Bool), bool_(b) {}
  Json(double d) : type_(Type::Number), num_(d) {}
  Json(int v) : type_(Type::Number), num_(v) {}
  Json(int64_t v) : type_(Type::Number), num_(static_cast<double>(v)) {}
  Json(uint64_t v) : type_(Type::Number), num_(static_cast<double>(v)) {}
  Json(const char* s) : type_(Type::String), str_(s) {}
  Json(std::string s) : type_(Type::String), str_(std::move(s)) {}
  static Json array() {
    Json j;
    j.type_ = Type::Array;
    return j;
  }
  static Json object() {
    Json j;
    j.type_ = Type::Object;
    return j;
  }

  // Parses text; throws JsonError "line L, column C: what" on malformed input.
  static Json parse(std::string_view text);
  // Compact when indent < 0, else pretty-printed with that many spaces.
  std::string dump(int indent = -1) const;

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed access; throws JsonError when the type differs.
  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;  // the number must be an exact integer
  const std::string& as_string() const;
  const std::vector<Json>& items() const;                            // array
  const std::vector<std::pair<std::string, Json>>& members() const;  // object

  // Object access. find() returns null when absent; at() throws naming the key.
  const Json* find(std::string_view key) const;
  const Json& at(std::string_view key) const;
  Json& operator[](std::string_view key);  // inserts when absent (object)
  void push_back(Json v);                  // array
  // Appends a member without looking for an existing one (the caller knows the key is new).
  void append_member(std::string key, Json v);
  size_t size() const;

 private:
  void dump_to(std::string& out, int indent, int depth) const;

  Type type_ = Type::Null;
  bool bool_ = false;
  double num_ = 0;
  std::string str_;
  std::vector<Json> arr_;
  std::vector<std::pair<std::string, Json>> obj_;
};

// Escapes s as a JSON string literal (with quotes).
std::string json_quote(std::string_view s);

}  // namespace kd
