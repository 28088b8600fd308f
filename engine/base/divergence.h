// The divergence of the distillation loss, declared below its two users: the op layer's LossConfig
// (engine/ops/ops.h) and the recipe (engine/io/recipe.h), which reads it from its word. The words
// sit with the enum so they cannot drift from its values.
#pragma once

#include "engine/base/choice.h"

namespace kd {

// KL(p_T || q_T), KL(q_T || p_T) or the beta-skew Jensen-Shannon divergence (p teacher, q student).
enum class Divergence { ForwardKL, ReverseKL, JSD };
template <>
struct ChoiceNames<Divergence> {
  static constexpr std::array names{"forward_kl", "reverse_kl", "jsd"};
};

}  // namespace kd
