// Enumerations that files spell as words (a recipe's `device = "cuda"`, a checkpoint's tokenizer
// kind). Each such enum E specialises ChoiceNames<E> with its spellings in the order of its values
// (0, 1, ...); to_string and parse_choice are then the only places a word meets a value.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string_view>
#include <type_traits>

namespace kd {

// Specialise as: template <> struct ChoiceNames<E> { static constexpr std::array names{...}; };
template <class E>
struct ChoiceNames;

template <class E>
concept Choice = std::is_enum_v<E> && requires {
  ChoiceNames<E>::names.size();
};

template <Choice E>
constexpr const char* to_string(E v) {
  return ChoiceNames<E>::names[static_cast<size_t>(v)];
}

// The value spelled `word`, or nothing (the caller reports the error with its own location).
template <Choice E>
constexpr std::optional<E> parse_choice(std::string_view word) {
  const auto& names = ChoiceNames<E>::names;
  for (size_t i = 0; i < names.size(); ++i)
    if (word == names[i]) return static_cast<E>(i);
  return std::nullopt;
}

}  // namespace kd
