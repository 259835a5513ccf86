// The passkey verdict, and the needle diagnostic on the real model: with a mask that keeps every key block it
// covers every retrieval head; with a tiny one it misses some.
#include "engine/evaluate.h"

#include <gtest/gtest.h>

#include "model/test_model.h"

namespace hs {
namespace {

TEST(Evaluate, PasskeyVerdictIsTheFirstRunOfFiveDigits) {
  EXPECT_TRUE(passkey_answer_correct(" 14958. Remember", 14958));
  EXPECT_TRUE(passkey_answer_correct("12 14958", 14958));          // a shorter run before it does not count
  EXPECT_TRUE(passkey_answer_correct("149581", 14958));            // the first five digits of a longer run
  EXPECT_FALSE(passkey_answer_correct(" 1498. Remember", 14958));  // a dropped digit
  EXPECT_FALSE(passkey_answer_correct(" 14959", 14958));
  EXPECT_FALSE(passkey_answer_correct(" the pass key.", 14958));
  EXPECT_TRUE(passkey_answer_correct("07001", 7001));  // keys print with leading zeros
}

TEST(Evaluate, NeedleDiagnosticCoversEveryRetrievalHeadOnlyWhenTheMaskKeepsEverything) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  testing::AttentionGuard guard(m);
  ThreadPool pool(2);
  const PasskeyPrompt p = make_passkey_prompt(m.tokenizer(), 1024, 0.5, 14958);
  const int32_t L = m.config().n_layer;

  AttentionConfig all;  // k >= context: every block of the searchable range is kept
  all.kind = AttentionKind::Hip;
  all.hip.k = 1024;
  m.set_attention(all);
  const NeedleResult full = evaluate_needle(m, p, pool);
  ASSERT_EQ(int32_t(full.retrieval_heads.size()), L);
  int32_t heads = 0;
  for (int32_t l = 0; l < L; ++l) {
    EXPECT_GE(full.needle_mass[size_t(l)], 0.0);
    EXPECT_LE(full.needle_mass[size_t(l)], 1.0 + 1e-9);
    EXPECT_EQ(full.covered[size_t(l)], full.retrieval_heads[size_t(l)]) << "layer " << l;
    heads += full.retrieval_heads[size_t(l)];
  }
  EXPECT_GT(heads, 0) << "SmolLM2 has heads that look at the key's digits when asked for it";
  EXPECT_TRUE(full.missed.empty());

  HipConfig tiny =
      all.hip;  // the same forward pass, probed with masks of 2 blocks of 2 keys and a 16-key window
  tiny.k = 4;
  tiny.window = 16;
  const NeedleResult few = evaluate_needle(m, p, pool, 0.1, &tiny);
  EXPECT_EQ(few.retrieval_heads, full.retrieval_heads) << "the forward pass is the same";
  EXPECT_FALSE(few.missed.empty()) << "4 selected keys cannot hold every retrieval head's digit";
}

}  // namespace
}  // namespace hs
