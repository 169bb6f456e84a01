#include "patcher.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "errors.hpp"

namespace elr {
namespace {

// Positions whose start flags are handed on at a time.
constexpr size_t kFlagBlock = 256;

// Patcher::scan for one mode. The rule is PatcherSettings::starts_patch written with
// non-short-circuit operators and arithmetic, so that the compiler avoids a mispredicted branch
// per byte. It runs inside the lookup loop, which measured faster than a separate pass over
// blocks of entropies.
template <BoundaryMode kMode, typename OnBlock>
void scan_mode(const FrequencyTable& table, const PatcherSettings& settings,
               const uint8_t* data, size_t size, OnBlock& on_block) {
  const double threshold = settings.threshold;
  const double relative_threshold = settings.relative_threshold;
  const size_t max_patch_length = settings.max_patch_length;
  const bool* const boundary_after = settings.boundary_after.data();
  float previous_entropy = 0.0f;
  size_t length = 0;
  unsigned char starts[kFlagBlock];

  table.for_each_entropy(data, size, [&](size_t t, float entropy) {
    unsigned start = 1;
    if (t > 0) {
      const double rise = static_cast<double>(entropy) - static_cast<double>(previous_entropy);
      unsigned rule = 0;
      if constexpr (kMode == BoundaryMode::global) {
        rule = entropy > threshold;
      } else if constexpr (kMode == BoundaryMode::relative) {
        rule = rise > relative_threshold;
      } else {
        rule = static_cast<unsigned>(entropy > threshold) & (rise > relative_threshold);
      }
      start = static_cast<unsigned>(boundary_after[data[t - 1]]) |
              static_cast<unsigned>(length >= max_patch_length) | rule;
    }
    // length = start ? 1 : length + 1, without a branch on the data.
    length = (length & (size_t{0} - static_cast<size_t>(start ^ 1u))) + 1;
    previous_entropy = entropy;

    const size_t i = t & (kFlagBlock - 1);
    starts[i] = static_cast<unsigned char>(start);
    if (i == kFlagBlock - 1) {
      on_block(t - i, static_cast<const unsigned char*>(starts), kFlagBlock);
    }
  });
  const size_t tail = size & (kFlagBlock - 1);
  if (tail > 0) {
    on_block(size - tail, static_cast<const unsigned char*>(starts), tail);
  }
}

// Patch lengths from the start flags of consecutive blocks of positions.
class LengthCollector {
 public:
  // Reserves room for the patches of `size` bytes at a mean length of 4 or more, so that the
  // usual case never copies the lengths while growing.
  explicit LengthCollector(size_t size) { lengths_.reserve(size / 4 + 1); }

  // Appends the lengths of the patches that end before the starts in flags[0, n), where
  // flags[i] belongs to position block_begin + i.
  void add_block(size_t block_begin, const unsigned char* flags, size_t n) {
    // Gather the start offsets without a branch per byte, then emit one length per start.
    uint32_t offsets[kFlagBlock];
    size_t n_starts = 0;
    for (size_t i = 0; i < n; ++i) {
      offsets[n_starts] = static_cast<uint32_t>(i);
      n_starts += flags[i];
    }
    for (size_t j = 0; j < n_starts; ++j) {
      const size_t t = block_begin + offsets[j];
      if (t > 0) {
        lengths_.push_back(static_cast<int32_t>(t - previous_start_));
      }
      previous_start_ = t;
    }
  }

  // Returns the lengths, closing the last patch at `size`.
  std::vector<int32_t> finish(size_t size) {
    if (size > 0) {
      lengths_.push_back(static_cast<int32_t>(size - previous_start_));
    }
    return std::move(lengths_);
  }

 private:
  std::vector<int32_t> lengths_;
  size_t previous_start_ = 0;
};

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

template <typename OnBlock>
void Patcher::scan(const uint8_t* data, size_t size, OnBlock&& on_block) const {
  switch (settings_.mode) {
    case BoundaryMode::global:
      scan_mode<BoundaryMode::global>(table_, settings_, data, size, on_block);
      break;
    case BoundaryMode::relative:
      scan_mode<BoundaryMode::relative>(table_, settings_, data, size, on_block);
      break;
    case BoundaryMode::both:
      scan_mode<BoundaryMode::both>(table_, settings_, data, size, on_block);
      break;
  }
}

void Patcher::patch_start_mask(const uint8_t* data, size_t size, bool* mask) const {
  scan(data, size, [mask](size_t begin, const unsigned char* starts, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      mask[begin + i] = starts[i] != 0;
    }
  });
}

std::vector<int32_t> Patcher::patch_lengths(const uint8_t* data, size_t size) const {
  LengthCollector collector(size);
  scan(data, size, [&collector](size_t begin, const unsigned char* starts, size_t n) {
    collector.add_block(begin, starts, n);
  });
  return collector.finish(size);
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

}  // namespace elr
