// Trains a FrequencyTable from byte streams in bounded memory.
//
// Counting: for every byte of a document and every order j from 0 up to min(position, k), the
// pair (the j bytes before it, the byte) is counted. A document starts with an empty history, so
// its first bytes only have the shorter contexts that exist.
//
// Bounded memory: counts live in one hash table that doubles as it fills, up to
// max_builder_bytes (briefly 1.5 times that while the last doubling copies). Before a byte is
// counted, if the table could pass its entry limit, the rarest pairs are pruned: every pair
// whose count is at most f, for the smallest f >= 1 that leaves at most half the limit. A pair
// (context, byte) is never counted more often than (suffix of the context, byte), so pruning
// keeps every context's shorter suffixes. Finalizing needs about 1.5 times the memory of the
// pairs held. Counts saturate at 2^32 - 1.
//
// Smoothing: interpolated Witten-Bell with backoff to the context one byte shorter, down to the
// uniform distribution below order 0:
//   P(w | h) = (c(h, w) + n(h) * P(w | h')) / (c(h) + n(h))
// where c(h, w) counts w after h, c(h) is the total after h, n(h) the number of distinct bytes
// seen after h, and h' is h without its oldest byte. For an unseen context this equals
// P(w | h'), so the entropy of a context's longest stored suffix is the exact entropy.
//
// Finalizing ranks the contexts by total count (ties: shorter first, then smaller key) and keeps
// the longest prefix of that ranking whose costs (table_bytes_per_context) fit in
// max_table_bytes - kTableFixedBytes, then stores the entropy in bits of each kept context's
// distribution.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "frequency_table.hpp"

namespace elr {

// Defaults: an 8 MiB table fits a Raspberry Pi-class board next to the model; 64 MiB of counts
// keeps every pair of a few tens of MB of text before pruning starts.
inline constexpr size_t kDefaultMaxTableBytes = size_t{8} << 20;
inline constexpr size_t kDefaultMaxBuilderBytes = size_t{64} << 20;

// Smallest budgets accepted: one context for the table, a count table whose pruning can always
// make room for the pairs of the next byte.
inline constexpr size_t kMinTableBytes = kTableFixedBytes + kNarrowContextBytes;
inline constexpr size_t kMinBuilderBytes = 1024;

// One count-table slot.
inline constexpr size_t kBuilderSlotBytes = 16;

// Returns the most pairs the count table of `max_builder_bytes` holds: three quarters of its
// slots, whose number is the largest power of two that fits the budget.
size_t builder_max_entries(size_t max_builder_bytes);

class TableBuilder {
 public:
  // Starts an empty builder for contexts of up to `context_length` bytes. Throws InvalidInput
  // when context_length is outside 1..8 or a budget is below kMinTableBytes / kMinBuilderBytes.
  TableBuilder(size_t context_length, size_t max_table_bytes, size_t max_builder_bytes);

  // Starts a new document: the next byte added has no context.
  void begin_document();

  // Counts `size` bytes that continue the current document. Thread safe.
  void add(const uint8_t* data, size_t size);

  // Returns a table built from the counts so far; the builder stays usable. Thread safe.
  FrequencyTable finalize() const;

  size_t context_length() const { return context_length_; }
  size_t max_table_bytes() const { return max_table_bytes_; }
  size_t max_builder_bytes() const { return max_builder_bytes_; }

  // Bytes counted, documents started, distinct (context, byte) pairs held, prunes done.
  uint64_t n_bytes() const;
  uint64_t n_documents() const;
  size_t n_pairs() const;
  uint64_t n_prunes() const;

 private:
  // A (context, next byte) pair and its count; an empty slot has count 0.
  struct Entry {
    uint64_t context = 0;
    uint32_t count = 0;
    uint8_t order = 0;
    uint8_t next_byte = 0;
    uint16_t unused = 0;
  };
  static_assert(sizeof(Entry) == kBuilderSlotBytes, "a count slot is 16 bytes");

  size_t slot_of(uint64_t context, size_t order, uint8_t next_byte) const;
  void prefetch_slot(uint64_t context, size_t order, uint8_t next_byte) const;
  void count(uint64_t context, size_t order, uint8_t next_byte);
  void prune();
  void grow();
  void insert_unique(const Entry& entry);

  const size_t context_length_;
  const size_t max_table_bytes_;
  const size_t max_builder_bytes_;
  const size_t max_entries_;

  mutable std::mutex mutex_;
  std::vector<Entry> slots_;  // power-of-two size, linear probing
  size_t n_entries_ = 0;
  uint64_t history_ = 0;             // previous bytes of the current document, most recent low
  uint64_t position_in_document_ = 0;
  uint64_t n_bytes_ = 0;
  uint64_t n_documents_ = 0;
  uint64_t n_prunes_ = 0;
};

}  // namespace elr
