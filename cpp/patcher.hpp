// Boundary rules that split a byte string into patches from the table's entropies.
//
// Byte 0 always starts a patch. For t >= 1, byte t starts a patch when any of these holds:
//   - data[t-1] is one of the boundary bytes (a newline, a document separator, ...);
//   - the current patch already has max_patch_length bytes;
//   - the entropy rule of the mode holds, with e[t] the entropy in bits that predicts data[t]:
//       global:   e[t] > threshold
//       relative: e[t] - e[t-1] > relative_threshold
//       both:     e[t] > threshold AND e[t] - e[t-1] > relative_threshold, so that a long
//                 stretch of hard bytes starts one patch where it begins, not one per byte.
// Every rule reads only bytes before t, so the decision for byte t is known before byte t
// arrives, and the incremental patcher applies the same rule while generating.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "frequency_table.hpp"

namespace elr {

enum class BoundaryMode { global, relative, both };

// Returns the mode named "global", "relative" or "both"; throws InvalidInput otherwise.
BoundaryMode boundary_mode_from_name(const std::string& name);
const char* boundary_mode_name(BoundaryMode mode);

// Largest max_patch_length: patch lengths are returned as int32.
inline constexpr size_t kMaxPatchLengthLimit = 2147483647;

struct PatcherSettings {
  double threshold = 3.0;                 // bits; used by the global and both modes
  double relative_threshold = 0.0;        // bits; used by the relative and both modes
  bool has_relative_threshold = false;    // false: relative_threshold was not given
  BoundaryMode mode = BoundaryMode::global;
  size_t max_patch_length = 16;
  std::array<bool, kByteValues> boundary_after{};  // boundary_after[b]: a patch starts after b

  // Throws InvalidInput when a threshold the mode needs is missing or not finite, or
  // max_patch_length is outside 1..kMaxPatchLengthLimit.
  void validate() const;

  // The boundary bytes in increasing order.
  std::vector<uint8_t> boundary_bytes() const;

  // Returns whether byte t >= 1 starts a patch, given its entropy, the previous byte's entropy,
  // the previous byte and the length of the patch that byte t would extend.
  bool starts_patch(float entropy, float previous_entropy, uint8_t previous_byte,
                    size_t current_patch_length) const {
    if (boundary_after[previous_byte] || current_patch_length >= max_patch_length) {
      return true;
    }
    const double rise = static_cast<double>(entropy) - static_cast<double>(previous_entropy);
    switch (mode) {
      case BoundaryMode::global:
        return entropy > threshold;
      case BoundaryMode::relative:
        return rise > relative_threshold;
      case BoundaryMode::both:
        return entropy > threshold && rise > relative_threshold;
    }
    return false;
  }
};

// Applies PatcherSettings to byte strings. Immutable, so one patcher serves several threads.
class Patcher {
 public:
  // Throws InvalidInput when the settings are invalid.
  Patcher(FrequencyTable table, PatcherSettings settings);

  const FrequencyTable& table() const { return table_; }
  const PatcherSettings& settings() const { return settings_; }

  // Writes mask[t] = whether data[t] starts a patch, for every t < size.
  void patch_start_mask(const uint8_t* data, size_t size, bool* mask) const;

  // Returns the patch lengths, which sum to size (empty for empty data).
  std::vector<int32_t> patch_lengths(const uint8_t* data, size_t size) const;

 private:
  // Calls on_block(begin, starts, n) for consecutive blocks of positions in order, where
  // starts[i] is 1 when data[begin + i] starts a patch and 0 otherwise.
  template <typename OnBlock>
  void scan(const uint8_t* data, size_t size, OnBlock&& on_block) const;

  FrequencyTable table_;
  PatcherSettings settings_;
};

// Patches a stream one byte at a time. Over any byte string it makes the same decisions as
// Patcher::patch_start_mask. Not thread safe: give each stream its own instance.
class IncrementalPatcher {
 public:
  explicit IncrementalPatcher(Patcher patcher);

  // Returns whether the next byte pushed will start a patch, before that byte is known.
  bool next_starts_patch() const { return next_starts_patch_; }

  // Returns the entropy in bits that predicts the next byte.
  float next_entropy() const { return next_entropy_; }

  // Appends one byte to the stream.
  void push(uint8_t byte);

  // Appends `size` bytes and writes to mask[i] whether data[i] started a patch.
  void push_bytes(const uint8_t* data, size_t size, bool* mask);

  // Starts a new stream: the next byte starts a patch and has no context.
  void reset();

  const Patcher& patcher() const { return patcher_; }
  uint64_t position() const { return position_; }
  size_t current_patch_length() const { return current_patch_length_; }

 private:
  void update_next();

  Patcher patcher_;
  uint64_t history_ = 0;
  uint64_t position_ = 0;
  size_t current_patch_length_ = 0;
  float previous_entropy_ = 0.0f;
  uint8_t previous_byte_ = 0;
  float next_entropy_ = 0.0f;
  bool next_starts_patch_ = true;
};

// Result of calibrate_threshold.
struct Calibration {
  double threshold = 0.0;           // the calibrated threshold, bits
  double mean_patch_length = 0.0;   // mean patch length on the corpus at that threshold
};

// A read-only byte range.
struct ByteSpan {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

// Returns the threshold that makes the mean patch length over `documents` (each patched on its
// own) closest to target_mean_patch_length. The mean never decreases as the threshold rises.
// In global mode it calibrates settings.threshold, in relative mode settings.relative_threshold,
// and in both mode settings.threshold with settings.relative_threshold held fixed. The result
// lies halfway between two neighbouring values of the calibrated signal, so it does not sit on
// a value that occurs. Throws InvalidInput when the target is below 1 or the settings are
// invalid. Memory: 9 bytes per corpus byte, plus 4 per byte of the largest document.
Calibration calibrate_threshold(const FrequencyTable& table,
                                const std::vector<ByteSpan>& documents,
                                double target_mean_patch_length, PatcherSettings settings);

}  // namespace elr
