#include "model/attention_config.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "util/common.h"

namespace hs {

std::vector<int32_t> parse_layer_list(const std::string& text, const std::string& what) {
  std::vector<int32_t> out;
  size_t i = 0;
  auto number = [&]() {
    HS_CHECK(i < text.size() && text[i] >= '0' && text[i] <= '9',
             "%s: expected a layer number at position %zu of \"%s\" (format: 9-15,20)", what.c_str(), i,
             text.c_str());
    int64_t v = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      v = v * 10 + (text[i++] - '0');
      HS_CHECK(v <= (1 << 16), "%s: layer number too large in \"%s\"", what.c_str(), text.c_str());
    }
    return int32_t(v);
  };
  while (i < text.size()) {
    const int32_t a = number();
    int32_t b = a;
    if (i < text.size() && text[i] == '-') {
      ++i;
      b = number();
      HS_CHECK(b >= a, "%s: range %d-%d runs backwards", what.c_str(), a, b);
    }
    for (int32_t l = a; l <= b; ++l) out.push_back(l);
    if (i < text.size()) {
      HS_CHECK(text[i] == ',' && i + 1 < text.size(), "%s: expected ',' and a layer at position %zu of \"%s\"",
               what.c_str(), i, text.c_str());
      ++i;
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::string layer_list_str(const std::vector<int32_t>& layers) {
  std::string s;
  for (size_t i = 0; i < layers.size();) {
    size_t j = i;
    while (j + 1 < layers.size() && layers[j + 1] == layers[j] + 1) ++j;
    s += strfmt(s.empty() ? "%d" : ",%d", layers[i]);
    if (j > i) s += strfmt("-%d", layers[j]);
    i = j + 1;
  }
  return s;
}

std::string AttentionConfig::validate() const {
  if (dense_layers < 0) return "dense_layers must be >= 0";
  for (size_t i = 0; i < dense_also.size(); ++i)
    if (dense_also[i] < 0 || (i > 0 && dense_also[i] <= dense_also[i - 1]))
      return "dense_also must list layers >= 0 in ascending order";
  if (kind == AttentionKind::Hip) return hip.validate();
  return "";
}

std::string AttentionConfig::describe() const {
  if (kind == AttentionKind::Dense) return "dense";
  std::string s =
      strfmt("hip k=%d b_q=%d b_k=%d b_sq=%d b_sk=%d sink=%d window=%d refresh=%d dense_layers=%d", hip.k,
             hip.block_q, hip.block_k, hip.stride_q, hip.stride_k, hip.n_sink, hip.window, hip.refresh,
             dense_layers);
  if (!dense_also.empty()) s += " dense_also=" + layer_list_str(dense_also);
  return s;
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
    } else if (key == "dense_also") {
      const std::string what = origin + ": 'dense_also'";
      if (v.is_string()) {
        c.dense_also = parse_layer_list(v.get<std::string>(), what);
      } else {
        HS_CHECK(v.is_array(), "%s must be a layer list such as \"9-15\" or an array of layers", what.c_str());
        std::vector<int32_t> layers;
        for (const auto& e : v) layers.push_back(get_int(key, e));
        std::sort(layers.begin(), layers.end());
        layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
        c.dense_also = layers;
      }
    } else {
      fail(strfmt("%s: unknown key '%s' (known: attn, k, block_q, block_k, stride_q, stride_k, sink, window, "
                  "refresh, dense_layers, dense_also)",
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
