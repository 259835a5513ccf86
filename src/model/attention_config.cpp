#include "model/attention_config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "util/common.h"

namespace hs {

std::string AttentionConfig::validate() const {
  if (dense_layers < 0) return "dense_layers must be >= 0";
  if (kind == AttentionKind::Hip) return hip.validate();
  return "";
}

std::string AttentionConfig::describe() const {
  if (kind == AttentionKind::Dense) return "dense";
  return strfmt("hip k=%d b_q=%d b_k=%d b_sq=%d b_sk=%d sink=%d window=%d refresh=%d dense_layers=%d", hip.k,
                hip.block_q, hip.block_k, hip.stride_q, hip.stride_k, hip.n_sink, hip.window, hip.refresh,
                dense_layers);
}

void apply_attention_json(AttentionConfig& c, const std::string& text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail(strfmt("%s: invalid JSON: %s", origin.c_str(), e.what()));
  }
  HS_CHECK(j.is_object(), "%s: expected a JSON object", origin.c_str());
  auto get_int = [&](const std::string& key, const nlohmann::json& v) {
    HS_CHECK(v.is_number_integer(), "%s: '%s' must be an integer", origin.c_str(), key.c_str());
    const int64_t x = v.get<int64_t>();
    HS_CHECK(x >= 0 && x <= (1 << 24), "%s: '%s' = %lld is out of range", origin.c_str(), key.c_str(), (long long)x);
    return int32_t(x);
  };
  for (const auto& [key, v] : j.items()) {
    if (key == "attn") {
      HS_CHECK(v.is_string(), "%s: 'attn' must be \"dense\" or \"hip\"", origin.c_str());
      const std::string s = v.get<std::string>();
      HS_CHECK(s == "dense" || s == "hip", "%s: 'attn' must be \"dense\" or \"hip\", got \"%s\"", origin.c_str(),
               s.c_str());
      c.kind = s == "dense" ? AttentionKind::Dense : AttentionKind::Hip;
    } else if (key == "k") {
      c.hip.k = get_int(key, v);
    } else if (key == "block_q") {
      c.hip.block_q = get_int(key, v);
    } else if (key == "block_k") {
      c.hip.block_k = get_int(key, v);
    } else if (key == "stride_q") {
      c.hip.stride_q = get_int(key, v);
    } else if (key == "stride_k") {
      c.hip.stride_k = get_int(key, v);
    } else if (key == "sink") {
      c.hip.n_sink = get_int(key, v);
    } else if (key == "window") {
      c.hip.window = get_int(key, v);
    } else if (key == "refresh") {
      c.hip.refresh = get_int(key, v);
    } else if (key == "dense_layers") {
      c.dense_layers = get_int(key, v);
    } else {
      fail(strfmt("%s: unknown key '%s' (known: attn, k, block_q, block_k, stride_q, stride_k, sink, window, "
                  "refresh, dense_layers)",
                  origin.c_str(), key.c_str()));
    }
  }
}

void load_attention_config_file(AttentionConfig& c, const std::string& path) {
  std::ifstream in(path);
  HS_CHECK(in.good(), "cannot open attention config '%s'", path.c_str());
  std::stringstream ss;
  ss << in.rdbuf();
  apply_attention_json(c, ss.str(), path);
}

}  // namespace hs
