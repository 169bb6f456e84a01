// The trained n-gram entropy model: for each stored context (the k bytes or fewer before a
// position), the entropy in bits of the smoothed next-byte distribution. The table is immutable
// once built, so one table can be read from several threads at once.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "context_index.hpp"

namespace elr {

// Longest supported context, in bytes: a context of up to 8 bytes packs into one uint64_t key.
inline constexpr size_t kMaxContextLength = 8;

// Number of distinct byte values, and the entropy in bits of the uniform distribution over them.
inline constexpr size_t kByteValues = 256;
inline constexpr double kMaxEntropyBits = 8.0;

// Contexts of up to kMaxNarrowOrder bytes use 8-byte hash slots, longer ones 12-byte slots.
inline constexpr size_t kMaxNarrowOrder = 4;

// Memory budget of a finalized table: a fixed part (bookkeeping, and two spare slots per
// order) plus a cost per stored context. The hash index has twice as many slots as contexts,
// so a context costs 16 bytes up to order 4 and 24 bytes above.
// TableBuilder keeps contexts while their costs fit in max_table_bytes - kTableFixedBytes.
inline constexpr size_t kTableFixedBytes = 4096;
inline constexpr size_t kNarrowContextBytes = 16;
inline constexpr size_t kWideContextBytes = 24;

// Returns the budget cost in bytes of one stored context of `order` bytes.
constexpr size_t table_bytes_per_context(size_t order) {
  return order <= kMaxNarrowOrder ? kNarrowContextBytes : kWideContextBytes;
}

// Mask that keeps the `order` most recent bytes of a history word.
constexpr uint64_t context_mask(size_t order) {
  return order >= kMaxContextLength ? ~uint64_t{0} : (uint64_t{1} << (8 * order)) - 1;
}

// Everything a table stores; shared read-only between FrequencyTable handles.
struct TableData {
  size_t context_length = 0;
  // Entropy of the order-0 (empty) context: the smoothed byte distribution of the corpus.
  float order0_entropy_bits = static_cast<float>(kMaxEntropyBits);
  // narrow[j] (j <= 4) or wide[j] (j > 4) indexes the contexts of j bytes, for
  // 1 <= j <= context_length; the other entries stay empty.
  std::array<ContextIndex<NarrowSlot>, kMaxNarrowOrder + 1> narrow;
  std::array<ContextIndex<WideSlot>, kMaxContextLength + 1> wide;

  // Returns the entropy stored for the context `key` of `order` bytes, or a negative value
  // when it is absent.
  float find(size_t order, uint64_t key) const {
    return order <= kMaxNarrowOrder ? narrow[order].find(key) : wide[order].find(key);
  }
};

// A handle to an immutable frequency table. Copies share the same data.
class FrequencyTable {
 public:
  // Builds a table. `contexts_by_order[j - 1]` lists the contexts of j bytes for
  // j = 1..context_length. Throws InvalidInput when context_length is outside 1..8, when
  // contexts_by_order has another length, or when an entropy is outside [0, 8] bits, a key has
  // more than j bytes, or a key repeats.
  FrequencyTable(size_t context_length, float order0_entropy_bits,
                 const std::vector<std::vector<ContextEntropy>>& contexts_by_order);

  size_t context_length() const { return data_->context_length; }

  // Number of stored contexts, counting the order-0 context.
  size_t n_contexts() const;

  // Stored contexts of `order` bytes (order 0 has exactly one).
  size_t n_contexts_of_order(size_t order) const;

  // Memory held by the table, in bytes.
  size_t size_bytes() const;

  float order0_entropy_bits() const { return data_->order0_entropy_bits; }

  // Returns the entropy in bits that predicts the byte after `history`. `history` packs the
  // previous bytes, most recent in the low byte; `available` is how many of them exist (the
  // position in the document). The longest stored suffix of the last min(available, k) bytes
  // decides: interpolated smoothing makes an unseen context predict exactly like its longest
  // seen suffix.
  float entropy_after(uint64_t history, size_t available) const {
    const TableData& data = *data_;
    size_t order = available < data.context_length ? available : data.context_length;
    for (; order > 0; --order) {
      const float entropy = data.find(order, history & context_mask(order));
      if (entropy >= 0.0f) {
        return entropy;
      }
    }
    return data.order0_entropy_bits;
  }

  // Writes to out[t] the entropy in bits that predicts data[t] from data[max(0, t-k):t], for
  // every t < size. `out` must hold `size` floats.
  void entropies(const uint8_t* data, size_t size, float* out) const;

  // Calls on_entropy(t, entropy) for t = 0..size-1 in order, with the entropy that
  // entropies() writes to out[t].
  template <typename OnEntropy>
  void for_each_entropy(const uint8_t* data, size_t size, OnEntropy&& on_entropy) const {
    const TableData& table = *data_;
    const size_t k = table.context_length;

    // The first k positions of a document have shorter contexts; so has every position when
    // the table stores no context of k bytes.
    const size_t warm_up_end = n_contexts_of_order(k) == 0 ? size : std::min(size, k);
    uint64_t history = 0;
    for (size_t t = 0; t < warm_up_end; ++t) {
      on_entropy(t, entropy_after(history, t));
      history = (history << 8) | data[t];
    }
    if (warm_up_end == size) {
      return;
    }
    if (k <= kMaxNarrowOrder) {
      for_each_full_context(table.narrow[k], data, warm_up_end, size, history, on_entropy);
    } else {
      for_each_full_context(table.wide[k], data, warm_up_end, size, history, on_entropy);
    }
  }

  // Returns the contexts of `order` bytes sorted by key (for serialization).
  std::vector<ContextEntropy> sorted_contexts(size_t order) const;

 private:
  // Positions hashed ahead of the lookup: enough to overlap the cache misses of their slot
  // loads (64 measured faster than 16, 32 or 128 on an 8 MB table). A power of two.
  static constexpr size_t kLookAhead = 64;

  // for_each_entropy() over positions first..end-1, which all have k bytes of context.
  // `history` contains the bytes before `first`.
  template <typename Slot, typename OnEntropy>
  void for_each_full_context(const ContextIndex<Slot>& longest, const uint8_t* data,
                             size_t first, size_t end, uint64_t history,
                             OnEntropy& on_entropy) const {
    // Position t + kLookAhead is hashed and its slot prefetched while position t is looked
    // up, so the lookups find their slots in cache instead of waiting for each miss in turn.
    // Only where the k-byte context is absent does the lookup back off to shorter ones.
    const size_t k = data_->context_length;
    const uint64_t mask = context_mask(k);
    uint64_t histories[kLookAhead];
    size_t homes[kLookAhead];
    size_t ahead = first;
    uint64_t ahead_history = history;
    const auto hash_ahead = [&]() {
      const size_t ring = ahead & (kLookAhead - 1);
      histories[ring] = ahead_history;
      homes[ring] = longest.home_slot(ahead_history & mask);
      longest.prefetch_slot(homes[ring]);
      ahead_history = (ahead_history << 8) | data[ahead];
      ++ahead;
    };

    while (ahead < end && ahead < first + kLookAhead) {
      hash_ahead();
    }
    for (size_t t = first; t < end; ++t) {
      const size_t ring = t & (kLookAhead - 1);
      const uint64_t context = histories[ring];
      float entropy = longest.find_from(context & mask, homes[ring]);
      if (entropy < 0.0f) {
        entropy = entropy_after(context, k - 1);
      }
      if (ahead < end) {
        hash_ahead();
      }
      on_entropy(t, entropy);
    }
  }

  std::shared_ptr<const TableData> data_;
};

}  // namespace elr
