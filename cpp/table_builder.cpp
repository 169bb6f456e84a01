#include "table_builder.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "errors.hpp"

namespace elr {
namespace {

constexpr uint32_t kMaxCount = std::numeric_limits<uint32_t>::max();

// 64-bit finalizer of MurmurHash3: spreads the few bits that differ between byte contexts over
// the whole word.
uint64_t mix_bits(uint64_t key) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdULL;
  key ^= key >> 33;
  key *= 0xc4ceb9fe1a85ec53ULL;
  key ^= key >> 33;
  return key;
}

// Count-table slots of a new builder (16 KiB).
constexpr size_t kInitialSlots = 1024;

// Bytes between the byte whose pairs are prefetched and the byte being counted.
constexpr size_t kCountLookAhead = 16;

// Pair counts of one context, found by scanning the sorted pairs.
struct ContextStats {
  uint64_t key = 0;
  uint64_t total = 0;      // c(h): sum of the pair counts
  size_t distinct = 0;     // n(h): bytes seen after h
  size_t first_pair = 0;   // pairs[first_pair, first_pair + distinct) belong to h
  size_t order = 0;
  bool kept = false;
  double entropy_bits = 0.0;
};

bool by_order_then_key(const ContextStats& a, size_t order, uint64_t key) {
  return a.order != order ? a.order < order : a.key < key;
}

}  // namespace

size_t builder_max_entries(size_t max_builder_bytes) {
  size_t slots = 1;
  while (slots * 2 <= max_builder_bytes / kBuilderSlotBytes) {
    slots *= 2;
  }
  return slots / 4 * 3;
}

TableBuilder::TableBuilder(size_t context_length, size_t max_table_bytes,
                           size_t max_builder_bytes)
    : context_length_(context_length),
      max_table_bytes_(max_table_bytes),
      max_builder_bytes_(max_builder_bytes),
      max_entries_(builder_max_entries(max_builder_bytes)) {
  if (context_length < 1 || context_length > kMaxContextLength) {
    throw InvalidInput("context_length must be in 1..8, got " + std::to_string(context_length));
  }
  if (max_table_bytes < kMinTableBytes) {
    throw InvalidInput("max_table_bytes must be at least " + std::to_string(kMinTableBytes) +
                       ", got " + std::to_string(max_table_bytes));
  }
  if (max_builder_bytes < kMinBuilderBytes) {
    throw InvalidInput("max_builder_bytes must be at least " + std::to_string(kMinBuilderBytes) +
                       ", got " + std::to_string(max_builder_bytes));
  }
  // Start small and double up to the budget, so that a builder for a small corpus does not
  // allocate max_builder_bytes up front.
  slots_.resize(std::min<size_t>(max_entries_ / 3 * 4, kInitialSlots));
}

void TableBuilder::begin_document() {
  const std::lock_guard<std::mutex> lock(mutex_);
  history_ = 0;
  position_in_document_ = 0;
  ++n_documents_;
}

size_t TableBuilder::slot_of(uint64_t context, size_t order, uint8_t next_byte) const {
  const uint64_t tag = (uint64_t{order} << 8) | next_byte;
  return static_cast<size_t>(mix_bits(context * 0x9e3779b97f4a7c15ULL + tag)) &
         (slots_.size() - 1);
}

void TableBuilder::prefetch_slot(uint64_t context, size_t order, uint8_t next_byte) const {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(slots_.data() + slot_of(context, order, next_byte));
#else
  (void)context;
  (void)order;
  (void)next_byte;
#endif
}

void TableBuilder::count(uint64_t context, size_t order, uint8_t next_byte) {
  const size_t mask = slots_.size() - 1;
  for (size_t position = slot_of(context, order, next_byte);; position = (position + 1) & mask) {
    Entry& entry = slots_[position];
    if (entry.count == 0) {
      entry.context = context;
      entry.order = static_cast<uint8_t>(order);
      entry.next_byte = next_byte;
      entry.count = 1;
      ++n_entries_;
      return;
    }
    if (entry.context == context && entry.order == order && entry.next_byte == next_byte) {
      if (entry.count != kMaxCount) {
        ++entry.count;
      }
      return;
    }
  }
}

void TableBuilder::insert_unique(const Entry& entry) {
  const size_t mask = slots_.size() - 1;
  size_t position = slot_of(entry.context, entry.order, entry.next_byte);
  while (slots_[position].count != 0) {
    position = (position + 1) & mask;
  }
  slots_[position] = entry;
  ++n_entries_;
}

void TableBuilder::grow() {
  std::vector<Entry> old_slots(slots_.size() * 2);
  old_slots.swap(slots_);
  n_entries_ = 0;
  for (const Entry& entry : old_slots) {
    if (entry.count != 0) {
      insert_unique(entry);
    }
  }
}

void TableBuilder::prune() {
  // Find the smallest floor f >= 1 that leaves at most half the entry limit above it.
  const size_t target = max_entries_ / 2;
  std::vector<uint32_t> counts;
  counts.reserve(n_entries_);
  for (const Entry& entry : slots_) {
    if (entry.count != 0) {
      counts.push_back(entry.count);
    }
  }
  uint32_t floor = 1;
  if (counts.size() > target) {
    std::nth_element(counts.begin(), counts.begin() + static_cast<std::ptrdiff_t>(target),
                     counts.end(), std::greater<uint32_t>());
    floor = std::max<uint32_t>(1, counts[target]);
  }
  counts = {};

  // Keep the pairs above the floor and re-insert them, since open addressing cannot delete
  // in place.
  std::vector<Entry> survivors;
  for (const Entry& entry : slots_) {
    if (entry.count > floor) {
      survivors.push_back(entry);
    }
  }
  std::fill(slots_.begin(), slots_.end(), Entry{});
  n_entries_ = 0;
  for (const Entry& entry : survivors) {
    insert_unique(entry);
  }
  ++n_prunes_;
}

void TableBuilder::add(const uint8_t* data, size_t size) {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (n_documents_ == 0) {
    n_documents_ = 1;
  }
  const size_t k = context_length_;

  // The pairs of byte i + kCountLookAhead are hashed and their slots prefetched while byte i
  // is counted, so that the counts find their slots in cache. The prefetch is only a hint: a
  // prune or growth in between moves the slots, and the count rehashes anyway.
  uint64_t ahead_history = history_;
  for (size_t i = 0; i < std::min(size, kCountLookAhead); ++i) {
    ahead_history = (ahead_history << 8) | data[i];
  }

  for (size_t i = 0; i < size; ++i) {
    if (i + kCountLookAhead < size) {
      const uint8_t ahead_byte = data[i + kCountLookAhead];
      for (size_t order = 0; order <= k; ++order) {
        prefetch_slot(ahead_history & context_mask(order), order, ahead_byte);
      }
      ahead_history = (ahead_history << 8) | ahead_byte;
    }

    // Room for the k + 1 pairs of this byte: prune at the budget, grow below it.
    if (n_entries_ + k + 1 > max_entries_) {
      prune();
    } else if (n_entries_ + k + 1 > slots_.size() / 4 * 3) {
      grow();
    }
    const uint8_t byte = data[i];
    const size_t max_order = static_cast<size_t>(std::min<uint64_t>(position_in_document_, k));
    for (size_t order = 0; order <= max_order; ++order) {
      count(history_ & context_mask(order), order, byte);
    }
    history_ = (history_ << 8) | byte;
    ++position_in_document_;
  }
  n_bytes_ += size;
}

FrequencyTable TableBuilder::finalize() const {
  const std::lock_guard<std::mutex> lock(mutex_);

  // Pairs sorted by (order, context, next byte), so each context's pairs form one run.
  std::vector<Entry> pairs;
  pairs.reserve(n_entries_);
  for (const Entry& entry : slots_) {
    if (entry.count != 0) {
      pairs.push_back(entry);
    }
  }
  std::sort(pairs.begin(), pairs.end(), [](const Entry& a, const Entry& b) {
    if (a.order != b.order) return a.order < b.order;
    if (a.context != b.context) return a.context < b.context;
    return a.next_byte < b.next_byte;
  });

  std::vector<ContextStats> contexts;
  for (size_t i = 0; i < pairs.size(); ++i) {
    if (i == 0 || pairs[i].order != pairs[i - 1].order ||
        pairs[i].context != pairs[i - 1].context) {
      ContextStats stats;
      stats.key = pairs[i].context;
      stats.order = pairs[i].order;
      stats.first_pair = i;
      contexts.push_back(stats);
    }
    ContextStats& stats = contexts.back();
    stats.total += pairs[i].count;
    ++stats.distinct;
  }

  // Keep the contexts with the largest totals while their costs fit the budget. A suffix's
  // total is at least its extension's, and ties rank the shorter context first, so a prefix of
  // the ranking keeps every kept context's suffixes.
  std::vector<size_t> ranking(contexts.size());
  for (size_t i = 0; i < ranking.size(); ++i) {
    ranking[i] = i;
  }
  std::sort(ranking.begin(), ranking.end(), [&contexts](size_t a, size_t b) {
    const ContextStats& x = contexts[a];
    const ContextStats& y = contexts[b];
    if (x.total != y.total) return x.total > y.total;
    if (x.order != y.order) return x.order < y.order;
    return x.key < y.key;
  });
  const size_t budget = max_table_bytes_ - kTableFixedBytes;
  size_t used = 0;
  for (const size_t index : ranking) {
    const size_t cost = table_bytes_per_context(contexts[index].order);
    if (used + cost > budget) {
      break;
    }
    used += cost;
    contexts[index].kept = true;
  }

  // Witten-Bell probabilities of each kept context's seen bytes, from shorter to longer
  // contexts so that a context's suffix is done before it. Every step is in double, in the same
  // order as the Python reference in the tests, so both give bit-identical entropies.
  std::vector<double> probabilities(pairs.size(), 0.0);
  for (ContextStats& stats : contexts) {
    if (!stats.kept) {
      continue;
    }

    const ContextStats* parent = nullptr;
    if (stats.order > 0) {
      const uint64_t parent_key = stats.key & context_mask(stats.order - 1);
      const auto found = std::lower_bound(
          contexts.begin(), contexts.end(), std::make_pair(stats.order - 1, parent_key),
          [](const ContextStats& a, const std::pair<size_t, uint64_t>& b) {
            return by_order_then_key(a, b.first, b.second);
          });
      if (found == contexts.end() || found->order != stats.order - 1 ||
          found->key != parent_key || !found->kept) {
        throw std::logic_error("frequency table builder lost the suffix of a kept context");
      }
      parent = &*found;
    }

    const double n = static_cast<double>(stats.distinct);
    const double denominator = static_cast<double>(stats.total + stats.distinct);
    const double lambda = n / denominator;
    double seen_entropy = 0.0;
    double seen_parent_mass = 0.0;
    double seen_parent_plogp = 0.0;
    for (size_t i = stats.first_pair; i < stats.first_pair + stats.distinct; ++i) {
      double q = 1.0 / static_cast<double>(kByteValues);
      if (parent != nullptr) {
        const auto first = pairs.begin() + static_cast<std::ptrdiff_t>(parent->first_pair);
        const auto last = first + static_cast<std::ptrdiff_t>(parent->distinct);
        const uint8_t byte = pairs[i].next_byte;
        const auto match = std::lower_bound(
            first, last, byte, [](const Entry& e, uint8_t b) { return e.next_byte < b; });
        if (match == last || match->next_byte != byte) {
          throw std::logic_error("frequency table builder lost a pair of a kept suffix");
        }
        q = probabilities[static_cast<size_t>(match - pairs.begin())];
      }
      const double p = (static_cast<double>(pairs[i].count) + n * q) / denominator;
      probabilities[i] = p;
      seen_entropy -= p * std::log2(p);
      seen_parent_mass += q;
      seen_parent_plogp += q * std::log2(q);
    }

    // The unseen bytes share lambda times the parent's mass. Their entropy share follows from
    // the parent's entropy minus its seen terms, so no context loops over all 256 bytes.
    const double parent_entropy = parent != nullptr ? parent->entropy_bits : kMaxEntropyBits;
    const double unseen_parent_mass = 1.0 - seen_parent_mass;
    double entropy = seen_entropy - lambda * std::log2(lambda) * unseen_parent_mass +
                     lambda * (parent_entropy + seen_parent_plogp);
    stats.entropy_bits = std::min(std::max(entropy, 0.0), kMaxEntropyBits);
  }

  // Kept contexts are already sorted by (order, key).
  float order0_entropy_bits = static_cast<float>(kMaxEntropyBits);
  std::vector<std::vector<ContextEntropy>> contexts_by_order(context_length_);
  for (const ContextStats& stats : contexts) {
    if (!stats.kept) {
      continue;
    }
    const float entropy_bits = static_cast<float>(stats.entropy_bits);
    if (stats.order == 0) {
      order0_entropy_bits = entropy_bits;
    } else {
      contexts_by_order[stats.order - 1].push_back({stats.key, entropy_bits});
    }
  }
  return FrequencyTable(context_length_, order0_entropy_bits, contexts_by_order);
}

uint64_t TableBuilder::n_bytes() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return n_bytes_;
}

uint64_t TableBuilder::n_documents() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return n_documents_;
}

size_t TableBuilder::n_pairs() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return n_entries_;
}

uint64_t TableBuilder::n_prunes() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return n_prunes_;
}

}  // namespace elr
