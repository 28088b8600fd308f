#include "engine/train/student_init.h"

#include <algorithm>
#include <cstring>

#include "engine/base/error.h"

namespace kd {

namespace {

const ParamInfo* find_param(const GPT2& m, const std::string& name) {
  for (const ParamInfo& p : m.table())
    if (p.name == name) return &p;
  return nullptr;
}

}  // namespace

void init_from_teacher_layers(GPT2& student, const GPT2& teacher, const std::vector<int>& layers,
                              const std::string& teacher_path) {
  const GPT2Config& sc = student.config();
  const GPT2Config& tc = teacher.config();
  const std::string where = "[student] teacher_layers: teacher " + teacher_path + " ";
  if (sc.n_embd != tc.n_embd || sc.n_head != tc.n_head)
    throw InputError(where + "has n_embd " + std::to_string(tc.n_embd) + " and n_head " +
                     std::to_string(tc.n_head) + "; the student (n_embd " +
                     std::to_string(sc.n_embd) + ", n_head " + std::to_string(sc.n_head) +
                     ") must have the same to copy its layers");
  if (int(layers.size()) != sc.n_layer)
    throw InputError(where + "- " + std::to_string(layers.size()) +
                     " layers listed for a student of " + std::to_string(sc.n_layer));
  for (int l : layers)
    if (l < 0 || l >= tc.n_layer)
      throw InputError(where + "has layers 0.." + std::to_string(tc.n_layer - 1) +
                       "; there is no layer " + std::to_string(l));
  if (sc.block_size > tc.block_size)
    throw InputError(where + "has block_size " + std::to_string(tc.block_size) +
                     ", shorter than the student's " + std::to_string(sc.block_size));
  if (sc.vocab_size > tc.vocab_size)
    throw InputError(where + "has a vocabulary of " + std::to_string(tc.vocab_size) +
                     ", smaller than the student's " + std::to_string(sc.vocab_size));
  for (const ParamInfo& p : student.table()) {
    std::string name = p.name;
    if (name.rfind("h.", 0) == 0) {  // h.<i>.rest -> h.<layers[i]>.rest
      const size_t dot = name.find('.', 2);
      const int i = std::stoi(name.substr(2, dot - 2));
      name = "h." + std::to_string(layers[size_t(i)]) + name.substr(dot);
    }
    const ParamInfo* t = find_param(teacher, name);
    // wte and wpe: the student's rows are the teacher's first rows ([rows, C], row-major).
    if (!t || t->shape.size() != p.shape.size() || t->numel < p.numel ||
        std::equal(p.shape.begin() + 1, p.shape.end(), t->shape.begin() + 1) == false)
      throw InputError(where + "has no tensor " + name + " of the student's shape");
    if (p.shape.size() != 2 && t->numel != p.numel)
      throw InputError(where + "tensor " + name + " has another size than the student's");
    std::memcpy(student.params.data() + p.offset, teacher.params.data() + t->offset,
                p.numel * sizeof(float));
  }
}

}  // namespace kd
