#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "errors.hpp"
#include "patcher.hpp"

namespace elr {
namespace {

// Corpus positions prepared for calibration: the signal that the calibrated threshold is
// compared with, and whether the position starts a patch whatever the threshold.
struct CalibrationCorpus {
  std::vector<double> signals;
  std::vector<uint8_t> forced;
  uint64_t n_bytes = 0;
};

constexpr double kNeverBoundary = -std::numeric_limits<double>::infinity();

CalibrationCorpus prepare_calibration(const FrequencyTable& table,
                                      const std::vector<ByteSpan>& documents,
                                      const PatcherSettings& settings) {
  CalibrationCorpus corpus;
  size_t total = 0;
  for (const ByteSpan& document : documents) {
    total += document.size;
  }
  corpus.signals.reserve(total);
  corpus.forced.reserve(total);
  corpus.n_bytes = total;

  std::vector<float> entropies;
  for (const ByteSpan& document : documents) {
    entropies.resize(document.size);
    table.entropies(document.data, document.size, entropies.data());
    for (size_t t = 0; t < document.size; ++t) {
      const bool forced = t == 0 || settings.boundary_after[document.data[t - 1]];
      corpus.forced.push_back(forced ? 1 : 0);
      double signal = kNeverBoundary;
      if (!forced) {
        const double rise =
            static_cast<double>(entropies[t]) - static_cast<double>(entropies[t - 1]);
        switch (settings.mode) {
          case BoundaryMode::global:
            signal = entropies[t];
            break;
          case BoundaryMode::relative:
            signal = rise;
            break;
          case BoundaryMode::both:
            signal = rise > settings.relative_threshold ? entropies[t] : kNeverBoundary;
            break;
        }
      }
      corpus.signals.push_back(signal);
    }
  }
  return corpus;
}

// Returns the mean patch length over the corpus when positions with signal > threshold start a
// patch.
double mean_patch_length(const CalibrationCorpus& corpus, double threshold,
                         size_t max_patch_length) {
  uint64_t n_patches = 0;
  size_t current = 0;
  for (size_t i = 0; i < corpus.signals.size(); ++i) {
    const bool start =
        corpus.forced[i] != 0 || current >= max_patch_length || corpus.signals[i] > threshold;
    if (start) {
      ++n_patches;
      current = 1;
    } else {
      ++current;
    }
  }
  return n_patches == 0 ? 0.0 : static_cast<double>(corpus.n_bytes) / n_patches;
}

}  // namespace

Calibration calibrate_threshold(const FrequencyTable& table,
                                const std::vector<ByteSpan>& documents,
                                double target_mean_patch_length, PatcherSettings settings) {
  if (!(target_mean_patch_length >= 1.0) || !std::isfinite(target_mean_patch_length)) {
    throw InvalidInput("target_mean_patch_length must be a finite number >= 1, got " +
                       std::to_string(target_mean_patch_length));
  }
  // The calibrated threshold needs no value yet.
  if (settings.mode == BoundaryMode::relative) {
    settings.relative_threshold = 0.0;
    settings.has_relative_threshold = true;
  } else {
    settings.threshold = 0.0;
  }
  settings.validate();

  const CalibrationCorpus corpus = prepare_calibration(table, documents, settings);
  if (corpus.n_bytes == 0) {
    throw InvalidInput("the calibration corpus is empty");
  }

  // Candidate thresholds, increasing: below every signal value, halfway between neighbouring
  // values, above every value. The mean patch length never decreases along them.
  std::vector<double> values;
  values.reserve(corpus.signals.size());
  for (const double signal : corpus.signals) {
    if (signal != kNeverBoundary) {
      values.push_back(signal);
    }
  }
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  if (values.empty()) {
    // No position depends on the threshold.
    const double threshold = kMaxEntropyBits;
    return {threshold, mean_patch_length(corpus, threshold, settings.max_patch_length)};
  }
  const auto candidate = [&values](size_t i) {
    if (i == 0) return values.front() - 1.0;
    if (i == values.size()) return values.back() + 1.0;
    const double low = values[i - 1];
    const double high = values[i];
    const double middle = low + (high - low) / 2.0;
    return middle > low && middle < high ? middle : low;
  };
  const auto mean_at = [&](size_t i) {
    return mean_patch_length(corpus, candidate(i), settings.max_patch_length);
  };

  // Smallest candidate whose mean reaches the target, then the closer of it and the one below.
  size_t low = 0;
  size_t high = values.size();
  if (mean_at(high) < target_mean_patch_length) {
    low = high;
  }
  while (low < high) {
    const size_t middle = low + (high - low) / 2;
    if (mean_at(middle) >= target_mean_patch_length) {
      high = middle;
    } else {
      low = middle + 1;
    }
  }
  double best_mean = mean_at(low);
  size_t best = low;
  if (low > 0) {
    const double below = mean_at(low - 1);
    if (std::abs(below - target_mean_patch_length) < std::abs(best_mean - target_mean_patch_length)) {
      best = low - 1;
      best_mean = below;
    }
  }
  return {candidate(best), best_mean};
}

}  // namespace elr
