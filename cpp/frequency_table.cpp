#include "frequency_table.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "errors.hpp"

namespace elr {

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
    if (order <= kMaxNarrowOrder) {
      data->narrow[order] = ContextIndex<NarrowSlot>(contexts);
    } else {
      data->wide[order] = ContextIndex<WideSlot>(contexts);
    }
  }
  data_ = std::move(data);
}

size_t FrequencyTable::n_contexts() const {
  size_t total = 0;
  for (size_t order = 0; order <= data_->context_length; ++order) {
    total += n_contexts_of_order(order);
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
  return order <= kMaxNarrowOrder ? data_->narrow[order].size() : data_->wide[order].size();
}

size_t FrequencyTable::size_bytes() const {
  size_t total = sizeof(TableData);
  for (size_t order = 1; order <= data_->context_length; ++order) {
    total += order <= kMaxNarrowOrder ? data_->narrow[order].size_bytes()
                                      : data_->wide[order].size_bytes();
  }
  return total;
}

void FrequencyTable::entropies(const uint8_t* data, size_t size, float* out) const {
  for_each_entropy(data, size, [out](size_t t, float entropy) { out[t] = entropy; });
}

std::vector<ContextEntropy> FrequencyTable::sorted_contexts(size_t order) const {
  if (order == 0 || order > data_->context_length) {
    return {};
  }
  return order <= kMaxNarrowOrder ? data_->narrow[order].sorted_entries()
                                  : data_->wide[order].sorted_entries();
}

}  // namespace elr
