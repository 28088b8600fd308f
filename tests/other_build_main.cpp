// A stand-in for a different kdengine build, for test_distributed: kdengine's train command (the
// same trainer) under another build identity. Usage: kd_other_build RECIPE [--set KEY=VALUE]...
#include <iostream>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/io/recipe.h"
#include "engine/train/trainer.h"

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw kd::InputError("usage: kd_other_build RECIPE [--set KEY=VALUE]...");
    std::vector<std::string> sets;
    for (int i = 2; i + 1 < argc; i += 2) {
      if (std::string(argv[i]) != "--set") throw kd::InputError("expected --set KEY=VALUE");
      sets.push_back(argv[i + 1]);
    }
    kd::set_build_identity("kdengine 0.0.0-other, commit 0000000, CUDA no");
    kd::train(kd::load_recipe(argv[1], sets), std::cout);
    return 0;
  } catch (...) {
    return kd::report_error(std::cerr);
  }
}
