// Pieces the HTML/SVG reports share (diagnosis, report comparison, repair report).
#pragma once

#include <cstdint>
#include <string>

namespace engine {

// Escapes text for HTML/SVG content and attribute values (< > & ").
std::string html_escape(const std::string& s);

// The axis labels of a layer x head heat map whose cell (layer l, head h) has its top-left corner
// at (left + h * cell, top + l * cell): layer numbers right-aligned left of the rows, head numbers
// centred above the columns. SVG <text> elements, one per line.
std::string heatmap_axis_labels(int64_t n_layer, int64_t n_head, int left, int top, int cell);

}  // namespace engine
