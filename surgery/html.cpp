// See surgery/html.h.
#include "surgery/html.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace engine {

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string heatmap_axis_labels(int64_t n_layer, int64_t n_head, int left, int top, int cell) {
  // The baseline sits 4 units below a row's centre and 4 above the grid: 10-unit text looks centred.
  constexpr int kTextOffset = 4;
  std::string s;
  for (int64_t l = 0; l < n_layer; ++l) {
    absl::StrAppend(&s, absl::StrFormat("<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%d</text>\n",
                                        left - kTextOffset,
                                        top + l * cell + cell / 2 + kTextOffset, l));
  }
  for (int64_t h = 0; h < n_head; ++h) {
    absl::StrAppend(&s, absl::StrFormat("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%d</text>\n",
                                        left + h * cell + cell / 2, top - kTextOffset, h));
  }
  return s;
}

}  // namespace engine
