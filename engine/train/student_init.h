// Starting a student from its teacher (DistilBERT's initialisation): the student's layer i is a
// copy of the teacher's layer layers[i], and the token embeddings, position embeddings and final
// layernorm are the teacher's. The student has the teacher's width (n_embd, n_head) and fewer
// layers; typically every other one (`[student] teacher_layers = [0, 2]` for a 4-layer teacher).
#pragma once

#include <string>
#include <vector>

#include "model/gpt2.h"

namespace kd {

// Overwrites every parameter of `student`: h.i.* <- teacher h.layers[i].*, wte <- the teacher's
// first vocab_size rows (a teacher vocabulary padded larger is fine), wpe <- its first block_size
// rows, ln_f <- ln_f. Throws InputError starting with "[student] teacher_layers" and naming
// teacher_path when they do not fit: another n_embd or n_head, a layer index past the teacher's
// last, a longer block_size or a larger vocabulary than the teacher's, or layers.size() !=
// student n_layer.
void init_from_teacher_layers(GPT2& student, const GPT2& teacher, const std::vector<int>& layers,
                              const std::string& teacher_path);

}  // namespace kd
