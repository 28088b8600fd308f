// kd_loss against PyTorch autograd (fixture from tools/make_reference.py): for every divergence,
// temperature and T^2 setting, the loss, its component sums and d loss / d logits, with a padded
// teacher vocabulary and masked rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/json.h"
#include "engine/io/safetensors.h"
#include "engine/ops/cpu/ops.h"
#include "tests/fixture_util.h"

namespace {

using kd::test::kFixtures;
using kd::test::read_json;
using kd::test::rel_err;

double rel_err(double a, double b) {
  return std::fabs(a - b) / std::fabs(b);
}

kd::Divergence divergence_of(const std::string& name) {
  if (name == "forward_kl") return kd::Divergence::ForwardKL;
  if (name == "reverse_kl") return kd::Divergence::ReverseKL;
  if (name == "jsd") return kd::Divergence::JSD;
  throw std::runtime_error("unknown divergence " + name);
}

}  // namespace

TEST(KDFixture, LossSumsAndGradientsMatchTorch) {
  const kd::Json ref = read_json(kFixtures + "/kd_loss_expected.json");
  const kd::SafetensorsFile file(kFixtures + "/kd_loss_expected.safetensors");
  const int N = static_cast<int>(ref.at("N").as_int());
  const int V = static_cast<int>(ref.at("V").as_int());
  const int Vt = static_cast<int>(ref.at("Vt").as_int());
  ASSERT_GT(Vt, V);  // the teacher's padded columns must be ignored
  const std::vector<float> student = file.read_f32("student");
  const std::vector<float> teacher = file.read_f32("teacher");
  ASSERT_EQ(student.size(), size_t(N) * V);
  ASSERT_EQ(teacher.size(), size_t(N) * Vt);
  std::vector<int32_t> targets;
  for (const auto& t : ref.at("targets").items()) targets.push_back(int32_t(t.as_int()));
  int rows = 0;
  for (int32_t t : targets) rows += t >= 0;
  ASSERT_LT(rows, N);

  const auto& cases = ref.at("cases").items();
  ASSERT_EQ(cases.size(), 24u);
  double worst = 0;
  std::string worst_case;
  for (const kd::Json& c : cases) {
    const std::string name = c.at("name").as_string();
    SCOPED_TRACE(name);
    kd::LossConfig cfg;
    cfg.ce_weight = static_cast<float>(ref.at("ce_weight").as_number());
    cfg.kd_weight = static_cast<float>(ref.at("kd_weight").as_number());
    cfg.beta = static_cast<float>(ref.at("beta").as_number());
    cfg.temperature = static_cast<float>(c.at("temperature").as_number());
    cfg.divergence = divergence_of(c.at("divergence").as_string());
    cfg.t2_scaling = c.at("t2_scaling").as_bool();

    std::vector<float> dlogits(student.size(), 7.0f);  // kd_loss must overwrite every value
    kd::LossSums sums;
    kd::cpu::kd_loss(dlogits.data(), &sums, student.data(), teacher.data(), Vt, targets.data(), N,
                     V, cfg, 1.0f / rows);
    EXPECT_EQ(sums.rows, rows);
    EXPECT_LT(rel_err(sums.loss / rows, c.at("loss").as_number()), 1e-5);
    EXPECT_LT(rel_err(sums.loss, c.at("sum_loss").as_number()), 1e-5);
    EXPECT_LT(rel_err(sums.ce, c.at("sum_ce").as_number()), 1e-5);
    EXPECT_LT(rel_err(sums.kd, c.at("sum_kd").as_number()), 1e-5);
    EXPECT_LT(rel_err(sums.kl, c.at("sum_kl").as_number()), 1e-5);
    EXPECT_LT(rel_err(sums.teacher_entropy, c.at("sum_teacher_entropy").as_number()), 1e-5);
    EXPECT_LT(rel_err(sums.student_entropy, c.at("sum_student_entropy").as_number()), 1e-5);

    const std::vector<float> want = file.read_f32("dlogits." + name);
    const double err = rel_err(dlogits.data(), want.data(), want.size());
    EXPECT_LT(err, 1e-5);
    if (err > worst) worst = err, worst_case = name;
    for (int r = 0; r < N; ++r) {
      if (targets[r] >= 0) continue;
      for (int k = 0; k < V; ++k) ASSERT_EQ(dlogits[size_t(r) * V + k], 0.0f) << "masked row " << r;
    }

    // In place (dlogits aliasing the logits) gives the same bits; no dlogits gives the same sums.
    std::vector<float> inplace = student;
    kd::LossSums sums_inplace, sums_eval;
    kd::cpu::kd_loss(inplace.data(), &sums_inplace, inplace.data(), teacher.data(), Vt,
                     targets.data(), N, V, cfg, 1.0f / rows);
    EXPECT_EQ(std::memcmp(inplace.data(), dlogits.data(), inplace.size() * sizeof(float)), 0);
    kd::cpu::kd_loss(nullptr, &sums_eval, student.data(), teacher.data(), Vt, targets.data(), N, V,
                     cfg, 1.0f / rows);
    EXPECT_EQ(sums_eval.loss, sums.loss);
    EXPECT_EQ(sums_eval.kd, sums.kd);
  }
  std::printf("worst dlogits rel err %.3g (%s)\n", worst, worst_case.c_str());
}
