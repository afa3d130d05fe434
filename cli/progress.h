// A progress bar on the terminal for long-running commands (eval, diagnose, train).
//
// Contract: drawn on stderr only when stderr is a terminal (pipes, files and CI logs get nothing,
// so machine-readable stdout stays clean); redrawn at most every kRefreshSeconds except for the
// final update; shows done / total, percent, elapsed time and the remaining-time estimate from the
// average rate so far. Lines printed through print_line() while a bar is shown first erase the bar
// and draw it again after the line, so step lines and the bar never overwrite each other.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace engine::cli {

class ProgressBar {
 public:
  // label: the command ("eval"); unit: what is counted ("windows").
  ProgressBar(std::string label, std::string unit);

  // done out of total units finished; done == total ends the bar with a newline.
  void update(int64_t done, int64_t total);
  // Prints one line on stdout without tearing the bar.
  void print_line(const std::string& line);
  bool enabled() const { return enabled_; }

 private:
  using Clock = std::chrono::steady_clock;
  void draw();
  void erase();

  std::string label_, unit_;
  bool enabled_ = false;
  bool shown_ = false;
  int64_t done_ = 0, total_ = 0;
  Clock::time_point start_, last_draw_;
};

}  // namespace engine::cli
