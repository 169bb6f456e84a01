#include "patcher.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "errors.hpp"

namespace elr {
namespace {

// Positions whose entropies are computed at a time while patching: small enough to stay in L1.
constexpr size_t kScanBlock = 256;

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

BoundaryMode boundary_mode_from_name(const std::string& name) {
  if (name == "global") return BoundaryMode::global;
  if (name == "relative") return BoundaryMode::relative;
  if (name == "both") return BoundaryMode::both;
  throw InvalidInput("mode must be 'global', 'relative' or 'both', got '" + name + "'");
}

const char* boundary_mode_name(BoundaryMode mode) {
  switch (mode) {
    case BoundaryMode::global:
      return "global";
    case BoundaryMode::relative:
      return "relative";
    case BoundaryMode::both:
      return "both";
  }
  return "global";
}

void PatcherSettings::validate() const {
  if (mode != BoundaryMode::relative && !std::isfinite(threshold)) {
    throw InvalidInput("threshold must be a finite number of bits, got " +
                       std::to_string(threshold));
  }
  if (mode != BoundaryMode::global) {
    if (!has_relative_threshold) {
      throw InvalidInput(std::string("mode '") + boundary_mode_name(mode) +
                         "' needs relative_threshold (bits of entropy rise)");
    }
    if (!std::isfinite(relative_threshold)) {
      throw InvalidInput("relative_threshold must be a finite number of bits, got " +
                         std::to_string(relative_threshold));
    }
  }
  if (max_patch_length < 1 || max_patch_length > kMaxPatchLengthLimit) {
    throw InvalidInput("max_patch_length must be in 1.." + std::to_string(kMaxPatchLengthLimit) +
                       ", got " + std::to_string(max_patch_length));
  }
}

std::vector<uint8_t> PatcherSettings::boundary_bytes() const {
  std::vector<uint8_t> bytes;
  for (size_t b = 0; b < kByteValues; ++b) {
    if (boundary_after[b]) {
      bytes.push_back(static_cast<uint8_t>(b));
    }
  }
  return bytes;
}

Patcher::Patcher(FrequencyTable table, PatcherSettings settings)
    : table_(std::move(table)), settings_(settings) {
  settings_.validate();
}

template <typename OnByte>
void Patcher::scan(const uint8_t* data, size_t size, OnByte&& on_byte) const {
  float block[kScanBlock];
  float previous_entropy = 0.0f;
  size_t current_patch_length = 0;

  for (size_t begin = 0; begin < size; begin += kScanBlock) {
    const size_t end = std::min(size, begin + kScanBlock);
    table_.entropies_range(data, begin, end, block);
    for (size_t t = begin; t < end; ++t) {
      const float entropy = block[t - begin];
      const bool start =
          t == 0 || settings_.starts_patch(entropy, previous_entropy, data[t - 1],
                                           current_patch_length);
      current_patch_length = start ? 1 : current_patch_length + 1;
      previous_entropy = entropy;
      on_byte(t, start);
    }
  }
}

void Patcher::patch_start_mask(const uint8_t* data, size_t size, bool* mask) const {
  scan(data, size, [mask](size_t t, bool start) { mask[t] = start; });
}

std::vector<int32_t> Patcher::patch_lengths(const uint8_t* data, size_t size) const {
  std::vector<int32_t> lengths;
  size_t patch_start = 0;
  scan(data, size, [&lengths, &patch_start](size_t t, bool start) {
    if (start && t > 0) {
      lengths.push_back(static_cast<int32_t>(t - patch_start));
      patch_start = t;
    }
  });
  if (size > 0) {
    lengths.push_back(static_cast<int32_t>(size - patch_start));
  }
  return lengths;
}

IncrementalPatcher::IncrementalPatcher(Patcher patcher) : patcher_(std::move(patcher)) {
  reset();
}

void IncrementalPatcher::reset() {
  history_ = 0;
  position_ = 0;
  current_patch_length_ = 0;
  previous_entropy_ = 0.0f;
  previous_byte_ = 0;
  next_entropy_ = patcher_.table().entropy_after(0, 0);
  next_starts_patch_ = true;
}

void IncrementalPatcher::update_next() {
  const size_t available =
      static_cast<size_t>(std::min<uint64_t>(position_, kMaxContextLength));
  next_entropy_ = patcher_.table().entropy_after(history_, available);
  next_starts_patch_ = patcher_.settings().starts_patch(next_entropy_, previous_entropy_,
                                                       previous_byte_, current_patch_length_);
}

void IncrementalPatcher::push(uint8_t byte) {
  current_patch_length_ = next_starts_patch_ ? 1 : current_patch_length_ + 1;
  previous_entropy_ = next_entropy_;
  previous_byte_ = byte;
  history_ = (history_ << 8) | byte;
  ++position_;
  update_next();
}

void IncrementalPatcher::push_bytes(const uint8_t* data, size_t size, bool* mask) {
  for (size_t i = 0; i < size; ++i) {
    mask[i] = next_starts_patch_;
    push(data[i]);
  }
}

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
