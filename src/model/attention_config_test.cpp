// The per-layer attention policy and its JSON / flag settings.
#include "model/attention_config.h"

#include <gtest/gtest.h>

#include "util/common.h"

namespace hs {
namespace {

TEST(AttentionConfig, LayerPolicyFirstDenseLayersThenHip) {
  AttentionConfig c;  // paper defaults: l_d = 3
  for (int l = 0; l < 3; ++l) EXPECT_FALSE(c.layer_uses_hip(l)) << l;
  for (int l = 3; l < 40; ++l) EXPECT_TRUE(c.layer_uses_hip(l)) << l;
  c.kind = AttentionKind::Dense;
  for (int l = 0; l < 40; ++l) EXPECT_FALSE(c.layer_uses_hip(l)) << l;
}

TEST(AttentionConfig, DenseAlsoKeepsListedLayersDense) {
  AttentionConfig c;
  apply_attention_json(c, R"({"dense_also": "9-15,20"})", "test");
  ASSERT_EQ(c.validate(), "");
  for (int l = 0; l < 30; ++l) {
    const bool dense = l < 3 || (l >= 9 && l <= 15) || l == 20;
    EXPECT_EQ(c.layer_uses_hip(l), !dense) << l;
  }
  EXPECT_NE(c.describe().find(" dense_layers=3 dense_also=9-15,20"), std::string::npos) << c.describe();
  // An array gives the same policy; duplicates and order do not matter.
  AttentionConfig d;
  apply_attention_json(d, R"({"dense_also": [20, 15, 9, 10, 11, 12, 13, 14, 9]})", "test");
  EXPECT_EQ(d.dense_also, c.dense_also);
  // Not set: the description is the paper's.
  EXPECT_EQ(AttentionConfig().describe().find("dense_also"), std::string::npos);
}

TEST(AttentionConfig, LayerListParsing) {
  EXPECT_EQ(parse_layer_list("", "x"), std::vector<int32_t>{});
  EXPECT_EQ(parse_layer_list("7", "x"), std::vector<int32_t>{7});
  EXPECT_EQ(parse_layer_list("3-5,1,4", "x"), (std::vector<int32_t>{1, 3, 4, 5}));
  EXPECT_EQ(layer_list_str({1, 3, 4, 5, 9}), "1,3-5,9");
  EXPECT_EQ(layer_list_str({}), "");
  for (const char* bad : {"a", "3-", "-3", "5-3", "1,,2", "1,", "1 2", "3-4-5", "99999999"})
    EXPECT_THROW(parse_layer_list(bad, "--hip-dense-also"), Error) << bad;
  AttentionConfig c;
  EXPECT_THROW(apply_attention_json(c, R"({"dense_also": 9})", "test"), Error);
  EXPECT_THROW(apply_attention_json(c, R"({"dense_also": ["9"]})", "test"), Error);
  EXPECT_THROW(apply_attention_json(c, R"({"dense_also": [-1]})", "test"), Error);
}

}  // namespace
}  // namespace hs
