#include "table_format.hpp"

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>

#include "errors.hpp"

namespace elr {
namespace {

constexpr char kMagic[8] = {'E', 'L', 'R', 'N', 'G', 'R', 'A', 'M'};
constexpr size_t kChecksumBytes = 4;
constexpr size_t kEntropyBytes = 4;
constexpr size_t kOrderCountsOffset = 32;

// Byte-wise CRC-32 table for the reflected polynomial 0xEDB88320 (zlib, PNG, gzip).
constexpr std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xedb88320u : crc >> 1;
    }
    table[i] = crc;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrcTable = make_crc_table();

uint32_t read_u32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

uint64_t read_u64(const uint8_t* p) { return uint64_t{read_u32(p)} | (uint64_t{read_u32(p + 4)} << 32); }

float read_f32(const uint8_t* p) {
  const uint32_t bits = read_u32(p);
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

void write_u32(std::vector<uint8_t>& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) {
    out.push_back(static_cast<uint8_t>(value >> (8 * i)));
  }
}

void write_u64(std::vector<uint8_t>& out, uint64_t value) {
  write_u32(out, static_cast<uint32_t>(value));
  write_u32(out, static_cast<uint32_t>(value >> 32));
}

void write_f32(std::vector<uint8_t>& out, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  write_u32(out, bits);
}

[[noreturn]] void reject(const std::string& problem) {
  throw InvalidInput("invalid frequency table: " + problem);
}

struct FileCloser {
  void operator()(std::FILE* file) const noexcept { std::fclose(file); }
};
using FileHandle = std::unique_ptr<std::FILE, FileCloser>;

[[noreturn]] void raise_file_error(const std::string& action, const std::filesystem::path& path,
                                   int error_number) {
  const std::error_code code(error_number, std::generic_category());
  throw FileError("cannot " + action + " frequency table file '" + path.string() +
                      "': " + code.message(),
                  code, path);
}

}  // namespace

uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc) {
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) {
    crc = kCrcTable[(crc ^ data[i]) & 0xffu] ^ (crc >> 8);
  }
  return ~crc;
}

std::vector<uint8_t> table_to_bytes(const FrequencyTable& table) {
  const size_t k = table.context_length();
  size_t file_bytes = kTableHeaderBytes + kEntropyBytes + kChecksumBytes;
  for (size_t order = 1; order <= k; ++order) {
    file_bytes += table.n_contexts_of_order(order) * (order + kEntropyBytes);
  }

  std::vector<uint8_t> out;
  out.reserve(file_bytes);
  for (const char byte : kMagic) {
    out.push_back(static_cast<uint8_t>(byte));
  }
  write_u32(out, kTableFormatVersion);
  write_u32(out, static_cast<uint32_t>(kTableHeaderBytes));
  write_u32(out, static_cast<uint32_t>(k));
  write_u32(out, kSmoothingWittenBell);
  write_u64(out, file_bytes);
  for (size_t order = 0; order <= kMaxContextLength; ++order) {
    write_u64(out, table.n_contexts_of_order(order));
  }

  write_f32(out, table.order0_entropy_bits());
  for (size_t order = 1; order <= k; ++order) {
    for (const ContextEntropy& context : table.sorted_contexts(order)) {
      // Context bytes in text order: the oldest byte sits in the highest byte of the key.
      for (size_t i = order; i-- > 0;) {
        out.push_back(static_cast<uint8_t>(context.key >> (8 * i)));
      }
      write_f32(out, context.entropy_bits);
    }
  }

  write_u32(out, crc32(out.data(), out.size()));
  return out;
}

FrequencyTable table_from_bytes(const uint8_t* data, size_t size, uint64_t max_bytes) {
  // Fixed-size fields first, so that every later read is inside the image.
  if (size > max_bytes) {
    reject("it has " + std::to_string(size) + " bytes, above the limit of " +
           std::to_string(max_bytes) + " bytes");
  }
  const size_t min_size = kTableHeaderBytes + kEntropyBytes + kChecksumBytes;
  if (size < min_size) {
    reject("truncated: " + std::to_string(size) + " bytes, a table has at least " +
           std::to_string(min_size));
  }
  if (std::memcmp(data, kMagic, sizeof(kMagic)) != 0) {
    reject("the magic bytes are not \"ELRNGRAM\", so this is not a frequency table file");
  }
  const uint32_t version = read_u32(data + 8);
  if (version != kTableFormatVersion) {
    reject("format version " + std::to_string(version) + " is not supported (this build reads " +
           "version " + std::to_string(kTableFormatVersion) + ")");
  }
  const uint32_t header_bytes = read_u32(data + 12);
  if (header_bytes != kTableHeaderBytes) {
    reject("header size " + std::to_string(header_bytes) + " is not " +
           std::to_string(kTableHeaderBytes));
  }
  const uint64_t file_bytes = read_u64(data + 24);
  if (file_bytes != size) {
    reject("the header gives a size of " + std::to_string(file_bytes) + " bytes but the data has " +
           std::to_string(size) + " (truncated or trailing bytes)");
  }
  const uint32_t stored_crc = read_u32(data + size - kChecksumBytes);
  const uint32_t actual_crc = crc32(data, size - kChecksumBytes);
  if (stored_crc != actual_crc) {
    reject("checksum mismatch (stored " + std::to_string(stored_crc) + ", computed " +
           std::to_string(actual_crc) + "): the file is corrupt");
  }

  // Header fields that size the payload.
  const uint32_t k = read_u32(data + 16);
  if (k < 1 || k > kMaxContextLength) {
    reject("context length " + std::to_string(k) + " is outside 1..8");
  }
  const uint32_t smoothing = read_u32(data + 20);
  if (smoothing != kSmoothingWittenBell) {
    reject("smoothing id " + std::to_string(smoothing) + " is unknown (expected 1, Witten-Bell)");
  }
  std::array<uint64_t, kMaxContextLength + 1> n_contexts{};
  uint64_t payload_bytes = kEntropyBytes;
  for (size_t order = 0; order <= kMaxContextLength; ++order) {
    n_contexts[order] = read_u64(data + kOrderCountsOffset + 8 * order);
    if (order == 0 && n_contexts[order] != 1) {
      reject("it lists " + std::to_string(n_contexts[order]) + " order-0 contexts instead of 1");
    }
    if (order > k && n_contexts[order] != 0) {
      reject("it lists contexts of order " + std::to_string(order) + " above its context length " +
             std::to_string(k));
    }
    // Bounding each count by the size first keeps the sum below 2^64.
    if (order >= 1 && order <= k) {
      if (n_contexts[order] > size) {
        reject("it lists " + std::to_string(n_contexts[order]) + " contexts of order " +
               std::to_string(order) + ", more than its size allows");
      }
      payload_bytes += n_contexts[order] * (order + kEntropyBytes);
    }
  }
  if (kTableHeaderBytes + payload_bytes + kChecksumBytes != size) {
    reject("its context counts need " +
           std::to_string(kTableHeaderBytes + payload_bytes + kChecksumBytes) +
           " bytes but the file has " + std::to_string(size));
  }

  // Payload: every record is inside the image now.
  const uint8_t* cursor = data + kTableHeaderBytes;
  const float order0_entropy_bits = read_f32(cursor);
  cursor += kEntropyBytes;
  std::vector<std::vector<ContextEntropy>> contexts_by_order(k);
  for (size_t order = 1; order <= k; ++order) {
    std::vector<ContextEntropy>& contexts = contexts_by_order[order - 1];
    contexts.reserve(static_cast<size_t>(n_contexts[order]));
    for (uint64_t i = 0; i < n_contexts[order]; ++i) {
      ContextEntropy context;
      for (size_t b = 0; b < order; ++b) {
        context.key = (context.key << 8) | cursor[b];
      }
      context.entropy_bits = read_f32(cursor + order);
      cursor += order + kEntropyBytes;
      if (!contexts.empty() && context.key <= contexts.back().key) {
        reject("the contexts of order " + std::to_string(order) +
               " are not sorted by key without repeats");
      }
      contexts.push_back(context);
    }
  }
  try {
    return FrequencyTable(k, order0_entropy_bits, contexts_by_order);
  } catch (const InvalidInput& error) {
    reject(error.what());
  }
}

void save_table(const FrequencyTable& table, const std::filesystem::path& path) {
  const std::vector<uint8_t> image = table_to_bytes(table);
  std::filesystem::path partial = path;
  partial += ".partial";

  {
    FileHandle file(std::fopen(partial.string().c_str(), "wb"));
    if (!file) {
      raise_file_error("create", partial, errno);
    }
    if (std::fwrite(image.data(), 1, image.size(), file.get()) != image.size() ||
        std::fflush(file.get()) != 0) {
      const int error_number = errno;
      file.reset();
      std::error_code ignored;
      std::filesystem::remove(partial, ignored);
      raise_file_error("write", partial, error_number);
    }
  }

  std::error_code code;
  std::filesystem::rename(partial, path, code);
  if (code) {
    std::error_code ignored;
    std::filesystem::remove(partial, ignored);
    raise_file_error("rename into place", path, code.value());
  }
}

FrequencyTable load_table(const std::filesystem::path& path, uint64_t max_bytes) {
  std::error_code code;
  const uintmax_t file_size = std::filesystem::file_size(path, code);
  if (code) {
    raise_file_error("read", path, code.value());
  }
  if (file_size > max_bytes) {
    reject("'" + path.string() + "' has " + std::to_string(file_size) +
           " bytes, above the limit of " + std::to_string(max_bytes) + " bytes");
  }

  std::vector<uint8_t> image(static_cast<size_t>(file_size));
  FileHandle file(std::fopen(path.string().c_str(), "rb"));
  if (!file) {
    raise_file_error("open", path, errno);
  }
  const size_t n_read = std::fread(image.data(), 1, image.size(), file.get());
  if (n_read != image.size()) {
    const int error_number = std::ferror(file.get()) != 0 ? errno : 0;
    if (error_number != 0) {
      raise_file_error("read", path, error_number);
    }
    reject("'" + path.string() + "' shrank while it was read");
  }
  return table_from_bytes(image.data(), image.size(), max_bytes);
}

}  // namespace elr
