// Static hash index from the context keys of one order to their entropies.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"

namespace elr {

// A context of one order and the entropy of the next byte after it. `key` packs the context
// bytes with the most recent byte in the low 8 bits: the context "ab" (b just before the
// predicted byte) has key 0x6162.
struct ContextEntropy {
  uint64_t key = 0;
  float entropy_bits = 0.0f;
};

// Slot for contexts of up to 4 bytes. An empty slot has a negative entropy.
struct NarrowSlot {
  uint32_t key_bits = 0;
  float entropy_bits = -1.0f;

  uint64_t key() const { return key_bits; }
  void set_key(uint64_t key) { key_bits = static_cast<uint32_t>(key); }
};
static_assert(sizeof(NarrowSlot) == 8, "a narrow slot is 8 bytes");

// Slot for contexts of 5 to 8 bytes: the key in two 32-bit halves keeps it at 12 bytes with
// 4-byte alignment.
struct WideSlot {
  uint32_t key_low = 0;
  uint32_t key_high = 0;
  float entropy_bits = -1.0f;

  uint64_t key() const { return (uint64_t{key_high} << 32) | key_low; }
  void set_key(uint64_t key) {
    key_low = static_cast<uint32_t>(key);
    key_high = static_cast<uint32_t>(key >> 32);
  }
};
static_assert(sizeof(WideSlot) == 12, "a wide slot is 12 bytes");

// Robin Hood linear probing at a load factor below 0.5, built once: a lookup of an absent key
// stops as soon as it reaches a slot whose key sits closer to its own home slot than the probed
// key would. Keeping the load at 0.5 keeps most lookups at their first slot: entropies of
// enwiki_shortened ran at 113 MB/s against 65 MB/s at a load of 0.8 (one AMD EPYC core).
template <typename Slot>
class ContextIndex {
 public:
  ContextIndex() = default;

  // Builds the index over `contexts`. Throws InvalidInput when two contexts share a key or when
  // a key lands more than kMaxProbeDistance slots from its home slot.
  explicit ContextIndex(const std::vector<ContextEntropy>& contexts) {
    if (contexts.empty()) {
      return;
    }
    capacity_ = 2 * contexts.size() + 1;
    slots_.resize(capacity_ + 1);
    for (const ContextEntropy& context : contexts) {
      insert(context);
    }
    // A copy of the first slot after the last lets find_from() read a slot and its successor
    // without wrapping around.
    slots_[capacity_] = slots_[0];
    size_ = contexts.size();
  }

  // Returns the entropy stored for `key`, or a negative value when the key is absent.
  float find(uint64_t key) const {
    return slots_.empty() ? -1.0f : find_from(key, home_slot(key));
  }

  // find() with the home slot of `key` already computed. The index must not be empty.
  float find_from(uint64_t key, size_t home) const {
    // Most keys sit in their home slot or the next one, so both are compared without a branch
    // on the data. An empty slot has key 0 and a negative entropy, so a match on it means the
    // key is absent, as it would if the probe stopped there.
    const Slot& first = slots_[home];
    const Slot& second = slots_[home + 1];
    if (first.key() == key) {
      return first.entropy_bits;
    }
    if (second.key() == key && first.entropy_bits >= 0.0f) {
      return second.entropy_bits;
    }
    return probe(key, home);
  }

  // Returns the slot where the probe for `key` starts. The index must not be empty.
  size_t home_slot(uint64_t key) const {
    // Fibonacci hashing, then multiply-shift onto [0, capacity) without a division.
    const uint64_t hash32 = (key * 0x9e3779b97f4a7c15ULL) >> 32;
    return static_cast<size_t>((hash32 * capacity_) >> 32);
  }

  // Hints the CPU to load the slot at `position`; lookups of a block of positions overlap
  // their cache misses this way.
  void prefetch_slot(size_t position) const {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(slots_.data() + position);
#else
    (void)position;
#endif
  }

  size_t size() const { return size_; }
  size_t size_bytes() const { return slots_.size() * sizeof(Slot); }

  // Returns every stored context, sorted by key.
  std::vector<ContextEntropy> sorted_entries() const {
    std::vector<ContextEntropy> entries;
    entries.reserve(size_);
    for (size_t position = 0; position < capacity_; ++position) {
      const Slot& slot = slots_[position];
      if (slot.entropy_bits >= 0.0f) {
        entries.push_back({slot.key(), slot.entropy_bits});
      }
    }
    std::sort(entries.begin(), entries.end(),
              [](const ContextEntropy& a, const ContextEntropy& b) { return a.key < b.key; });
    return entries;
  }

 private:
  // Longest probe accepted while building. Tables trained on enwiki_shortened and the Chinese
  // and emoji corpora (up to 2.9 million contexts) needed at most 49 slots, and the limit
  // keeps a crafted file of colliding keys from making the build take quadratic time.
  static constexpr size_t kMaxProbeDistance = 1024;

  // Robin Hood probe from `home`: stops at the key, at an empty slot, or at a resident closer
  // to its own home than the key would be.
  float probe(uint64_t key, size_t home) const {
    size_t position = home;
    for (size_t distance = 0;; ++distance) {
      const Slot& slot = slots_[position];
      if (slot.entropy_bits < 0.0f) {
        return -1.0f;
      }
      const uint64_t slot_key = slot.key();
      if (slot_key == key) {
        return slot.entropy_bits;
      }
      if (distance_from_home(slot_key, position) < distance) {
        return -1.0f;
      }
      position = position + 1 == capacity_ ? 0 : position + 1;
    }
  }

  size_t distance_from_home(uint64_t key, size_t position) const {
    const size_t home = home_slot(key);
    return position >= home ? position - home : position + capacity_ - home;
  }

  void insert(const ContextEntropy& context) {
    Slot incoming;
    incoming.set_key(context.key);
    incoming.entropy_bits = context.entropy_bits;

    // A resident that sits closer to its home slot than the incoming key gives up its slot and
    // moves on.
    size_t position = home_slot(context.key);
    size_t distance = 0;
    while (true) {
      Slot& slot = slots_[position];
      if (slot.entropy_bits < 0.0f) {
        slot = incoming;
        return;
      }
      if (slot.key() == incoming.key()) {
        throw InvalidInput("frequency table has a repeated context key " +
                           std::to_string(context.key));
      }
      const size_t slot_distance = distance_from_home(slot.key(), position);
      if (slot_distance < distance) {
        std::swap(slot, incoming);
        distance = slot_distance;
      }
      position = position + 1 == capacity_ ? 0 : position + 1;
      ++distance;
      if (distance > kMaxProbeDistance) {
        throw InvalidInput("frequency table has too many context keys that hash to nearby "
                           "slots (a probe of more than " +
                           std::to_string(kMaxProbeDistance) +
                           " slots): the table is corrupt or crafted");
      }
    }
  }

  std::vector<Slot> slots_;  // capacity_ slots and the copy of slot 0
  size_t capacity_ = 0;
  size_t size_ = 0;
};

}  // namespace elr
