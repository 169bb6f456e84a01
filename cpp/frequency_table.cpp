#include "frequency_table.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "errors.hpp"

namespace elr {
namespace {

// Positions per block in entropies(): enough to overlap the cache misses of the slot loads.
constexpr size_t kPrefetchBlock = 32;

}  // namespace

size_t ContextIndex::home_slot(uint64_t key) const {
  // Multiply-shift maps the high 32 hash bits onto [0, capacity) without a division.
  const uint64_t hash32 = mix_bits(key) >> 32;
  return static_cast<size_t>((hash32 * slots_.size()) >> 32);
}

ContextIndex::ContextIndex(const std::vector<ContextEntropy>& contexts) {
  if (contexts.empty()) {
    return;
  }

  // Load factor at most 0.8, and at least one empty slot; see kTableBytesPerContext.
  const size_t n = contexts.size();
  slots_.resize(n + n / 4 + 1);
  const size_t capacity = slots_.size();

  for (const ContextEntropy& context : contexts) {
    Slot incoming;
    incoming.key_low = static_cast<uint32_t>(context.key);
    incoming.key_high = static_cast<uint32_t>(context.key >> 32);
    incoming.entropy_bits = context.entropy_bits;

    // Robin Hood insertion: a resident that sits closer to its home slot than the incoming key
    // gives up its slot and moves on.
    size_t position = home_slot(context.key);
    size_t distance = 0;
    while (true) {
      Slot& slot = slots_[position];
      if (slot.entropy_bits < 0.0f) {
        slot = incoming;
        break;
      }
      if (slot.key() == incoming.key()) {
        throw InvalidInput("frequency table has a repeated context key " +
                           std::to_string(context.key));
      }
      const size_t slot_home = home_slot(slot.key());
      const size_t slot_distance =
          position >= slot_home ? position - slot_home : position + capacity - slot_home;
      if (slot_distance < distance) {
        std::swap(slot, incoming);
        distance = slot_distance;
      }
      position = position + 1 == capacity ? 0 : position + 1;
      ++distance;
    }
  }
  size_ = n;
}

std::vector<ContextEntropy> ContextIndex::sorted_entries() const {
  std::vector<ContextEntropy> entries;
  entries.reserve(size_);
  for (const Slot& slot : slots_) {
    if (slot.entropy_bits >= 0.0f) {
      entries.push_back({slot.key(), slot.entropy_bits});
    }
  }
  std::sort(entries.begin(), entries.end(),
            [](const ContextEntropy& a, const ContextEntropy& b) { return a.key < b.key; });
  return entries;
}

FrequencyTable::FrequencyTable(size_t context_length, float order0_entropy_bits,
                               const std::vector<std::vector<ContextEntropy>>& contexts_by_order) {
  if (context_length < 1 || context_length > kMaxContextLength) {
    throw InvalidInput("context_length must be in 1..8, got " + std::to_string(context_length));
  }
  if (contexts_by_order.size() != context_length) {
    throw InvalidInput("expected contexts for orders 1.." + std::to_string(context_length) +
                       ", got " + std::to_string(contexts_by_order.size()) + " orders");
  }

  const auto check_entropy = [](float entropy_bits, const std::string& where) {
    if (!(entropy_bits >= 0.0f && entropy_bits <= static_cast<float>(kMaxEntropyBits))) {
      throw InvalidInput(where + " has entropy " + std::to_string(entropy_bits) +
                         " bits, outside [0, 8]");
    }
  };
  check_entropy(order0_entropy_bits, "the order-0 context");

  auto data = std::make_shared<TableData>();
  data->context_length = context_length;
  data->order0_entropy_bits = order0_entropy_bits;
  for (size_t order = 1; order <= context_length; ++order) {
    const std::vector<ContextEntropy>& contexts = contexts_by_order[order - 1];
    for (const ContextEntropy& context : contexts) {
      if ((context.key & ~context_mask(order)) != 0) {
        throw InvalidInput("context key " + std::to_string(context.key) + " has more than " +
                           std::to_string(order) + " bytes");
      }
      check_entropy(context.entropy_bits, "context key " + std::to_string(context.key) +
                                              " of order " + std::to_string(order));
    }
    data->by_order[order] = ContextIndex(contexts);
  }
  data_ = std::move(data);
}

size_t FrequencyTable::n_contexts() const {
  size_t total = 1;
  for (size_t order = 1; order <= data_->context_length; ++order) {
    total += data_->by_order[order].size();
  }
  return total;
}

size_t FrequencyTable::n_contexts_of_order(size_t order) const {
  if (order == 0) {
    return 1;
  }
  if (order > data_->context_length) {
    return 0;
  }
  return data_->by_order[order].size();
}

size_t FrequencyTable::size_bytes() const {
  size_t total = sizeof(TableData);
  for (size_t order = 1; order <= data_->context_length; ++order) {
    total += data_->by_order[order].size_bytes();
  }
  return total;
}

void FrequencyTable::entropies(const uint8_t* data, size_t size, float* out) const {
  entropies_range(data, 0, size, out);
}

void FrequencyTable::entropies_range(const uint8_t* data, size_t begin, size_t end,
                                     float* out) const {
  const TableData& table = *data_;
  const size_t k = table.context_length;
  uint64_t history = 0;
  for (size_t t = begin > kMaxContextLength ? begin - kMaxContextLength : 0; t < begin; ++t) {
    history = (history << 8) | data[t];
  }

  for (size_t block_start = begin; block_start < end; block_start += kPrefetchBlock) {
    const size_t block_end = std::min(end, block_start + kPrefetchBlock);

    // Start loading the longest-context slot of every position in the block, so that the
    // lookups below find them in cache instead of waiting for each miss in turn.
    uint64_t ahead = history;
    for (size_t t = block_start; t < block_end; ++t) {
      const size_t order = std::min(t, k);
      table.by_order[order].prefetch(ahead & context_mask(order));
      ahead = (ahead << 8) | data[t];
    }

    for (size_t t = block_start; t < block_end; ++t) {
      out[t - begin] = entropy_after(history, t);
      history = (history << 8) | data[t];
    }
  }
}

std::vector<ContextEntropy> FrequencyTable::sorted_contexts(size_t order) const {
  if (order == 0 || order > data_->context_length) {
    return {};
  }
  return data_->by_order[order].sorted_entries();
}

}  // namespace elr
