// Terminal progress bar; see progress.h.
#include "cli/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace engine::cli {
namespace {

// Often enough to look alive, rarely enough to cost nothing next to the work it reports.
constexpr double kRefreshSeconds = 0.2;
constexpr int kBarWidth = 30;

std::string duration_text(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buf;
}

}  // namespace

ProgressBar::ProgressBar(std::string label, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      enabled_(::isatty(::fileno(stderr)) != 0),
      start_(Clock::now()),
      last_draw_(start_) {}

void ProgressBar::update(int64_t done, int64_t total) {
  done_ = done;
  total_ = total;
  if (!enabled_) return;
  const Clock::time_point now = Clock::now();
  const bool finished = done >= total;
  if (!finished && shown_ &&
      std::chrono::duration<double>(now - last_draw_).count() < kRefreshSeconds) {
    return;
  }
  last_draw_ = now;
  draw();
  if (finished) {
    std::fputc('\n', stderr);
    std::fflush(stderr);
    shown_ = false;
    enabled_ = false;  // one bar per command; later lines print plainly
  }
}

void ProgressBar::print_line(const std::string& line) {
  if (shown_) erase();
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  if (enabled_ && total_ > 0) draw();
}

void ProgressBar::erase() {
  std::fputs("\r\033[K", stderr);
  std::fflush(stderr);
  shown_ = false;
}

void ProgressBar::draw() {
  const double fraction =
      total_ > 0 ? std::clamp(static_cast<double>(done_) / static_cast<double>(total_), 0.0, 1.0)
                 : 0.0;
  const int filled = static_cast<int>(fraction * kBarWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kBarWidth - filled), '.');
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  std::string eta = "--";
  if (done_ > 0 && done_ < total_) {
    eta = duration_text(elapsed * static_cast<double>(total_ - done_) / static_cast<double>(done_));
  }
  std::fprintf(stderr, "\r\033[K%s [%s] %lld/%lld %s (%.0f%%)  %s elapsed, %s left", label_.c_str(),
               bar.c_str(), static_cast<long long>(done_), static_cast<long long>(total_),
               unit_.c_str(), 100.0 * fraction, duration_text(elapsed).c_str(),
               done_ >= total_ ? "0m00s" : eta.c_str());
  std::fflush(stderr);
  shown_ = true;
}

}  // namespace engine::cli
