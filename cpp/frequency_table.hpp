// The trained n-gram entropy model: for each stored context (the k bytes or fewer before a
// position), the entropy in bits of the smoothed next-byte distribution. The table is immutable
// once built, so one table can be read from several threads at once.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace elr {

// Longest supported context, in bytes: a context of up to 8 bytes packs into one uint64_t key.
inline constexpr size_t kMaxContextLength = 8;

// Number of distinct byte values, and the entropy in bits of the uniform distribution over them.
inline constexpr size_t kByteValues = 256;
inline constexpr double kMaxEntropyBits = 8.0;

// Memory budget of a finalized table: a fixed part (header, per-order bookkeeping) plus a bound
// per stored context. The hash index uses 12-byte slots at a load factor of at most 0.8, so
// 16 bytes per context always suffice; TableBuilder keeps at most
// (max_table_bytes - kTableFixedBytes) / kTableBytesPerContext contexts.
inline constexpr size_t kTableFixedBytes = 4096;
inline constexpr size_t kTableBytesPerContext = 16;

// Mask that keeps the `order` most recent bytes of a history word.
constexpr uint64_t context_mask(size_t order) {
  return order >= kMaxContextLength ? ~uint64_t{0} : (uint64_t{1} << (8 * order)) - 1;
}

// 64-bit finalizer of MurmurHash3: spreads the few bits that differ between byte contexts over
// the whole word.
inline uint64_t mix_bits(uint64_t key) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdULL;
  key ^= key >> 33;
  key *= 0xc4ceb9fe1a85ec53ULL;
  key ^= key >> 33;
  return key;
}

// A context of one order and the entropy of the next byte after it. `key` packs the context
// bytes with the most recent byte in the low 8 bits: the context "ab" (b just before the
// predicted byte) has key 0x6162.
struct ContextEntropy {
  uint64_t key = 0;
  float entropy_bits = 0.0f;
};

// Static hash index from the keys of one order to their entropies: Robin Hood linear probing in
// 12-byte slots built once, so a lookup of an absent key stops as soon as it reaches a slot whose
// key sits closer to its own home slot than the probed key would.
class ContextIndex {
 public:
  ContextIndex() = default;

  // Builds the index over `contexts`. Throws InvalidInput when two contexts share a key.
  explicit ContextIndex(const std::vector<ContextEntropy>& contexts);

  // Returns the entropy stored for `key`, or a negative value when the key is absent.
  float find(uint64_t key) const {
    if (slots_.empty()) {
      return -1.0f;
    }
    const size_t capacity = slots_.size();
    size_t position = home_slot(key);
    for (size_t distance = 0;; ++distance) {
      const Slot& slot = slots_[position];
      if (slot.entropy_bits < 0.0f) {
        return -1.0f;
      }
      const uint64_t slot_key = slot.key();
      if (slot_key == key) {
        return slot.entropy_bits;
      }
      const size_t slot_home = home_slot(slot_key);
      const size_t slot_distance =
          position >= slot_home ? position - slot_home : position + capacity - slot_home;
      if (slot_distance < distance) {
        return -1.0f;
      }
      position = position + 1 == capacity ? 0 : position + 1;
    }
  }

  // Hints the CPU to load the home slot of `key`; lookups of a block of positions overlap their
  // cache misses this way.
  void prefetch(uint64_t key) const {
#if defined(__GNUC__) || defined(__clang__)
    if (!slots_.empty()) {
      __builtin_prefetch(&slots_[home_slot(key)]);
    }
#else
    (void)key;
#endif
  }

  size_t size() const { return size_; }
  size_t size_bytes() const { return slots_.size() * sizeof(Slot); }

  // Returns every stored context, sorted by key.
  std::vector<ContextEntropy> sorted_entries() const;

 private:
  // A key split in two 32-bit halves keeps the slot at 12 bytes with 4-byte alignment.
  // An empty slot has a negative entropy.
  struct Slot {
    uint32_t key_low = 0;
    uint32_t key_high = 0;
    float entropy_bits = -1.0f;

    uint64_t key() const { return (uint64_t{key_high} << 32) | key_low; }
  };
  static_assert(sizeof(Slot) == 12, "a slot is 12 bytes");

  size_t home_slot(uint64_t key) const;

  std::vector<Slot> slots_;
  size_t size_ = 0;
};

// Everything a table stores; shared read-only between FrequencyTable handles.
struct TableData {
  size_t context_length = 0;
  // Entropy of the order-0 (empty) context: the smoothed byte distribution of the corpus.
  float order0_entropy_bits = static_cast<float>(kMaxEntropyBits);
  // by_order[j] indexes the contexts of j bytes, for 1 <= j <= context_length.
  std::array<ContextIndex, kMaxContextLength + 1> by_order;
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
      const float entropy = data.by_order[order].find(history & context_mask(order));
      if (entropy >= 0.0f) {
        return entropy;
      }
    }
    return data.order0_entropy_bits;
  }

  // Writes to out[t] the entropy in bits that predicts data[t] from data[max(0, t-k):t], for
  // every t < size. `out` must hold `size` floats.
  void entropies(const uint8_t* data, size_t size, float* out) const;

  // Writes to out[t - begin] the entropy of data[t] for begin <= t < end, reading the context
  // from data[begin - k, begin) as entropies() does.
  void entropies_range(const uint8_t* data, size_t begin, size_t end, float* out) const;

  // Returns the contexts of `order` bytes sorted by key (for serialization).
  std::vector<ContextEntropy> sorted_contexts(size_t order) const;

 private:
  std::shared_ptr<const TableData> data_;
};

}  // namespace elr
