// Binary file format of a FrequencyTable, version 1. All integers and floats are little-endian.
//
//   offset  size  field
//   0       8     magic "ELRNGRAM"
//   8       4     u32 format version (1)
//   12      4     u32 header size in bytes (104)
//   16      4     u32 context length k, 1..8
//   20      4     u32 smoothing (1: interpolated Witten-Bell, entropies in bits)
//   24      8     u64 file size in bytes, checksum included
//   32      72    u64 number of contexts of order 0..8 (order 0: 1; orders above k: 0)
//   104           f32 entropy of the order-0 context
//                 for each order j = 1..k, its contexts sorted by key, each j context bytes
//                 (oldest first, as they appear in the text) and the f32 entropy
//   size - 4 4    u32 CRC-32 (the zlib polynomial) of every byte before it
//
// Reading validates every field before any is used and copies out each value byte by byte, so a
// truncated, corrupt or hostile file raises InvalidInput and never reads out of bounds, makes
// an unaligned access, or allocates more than a small multiple of the file size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <vector>

#include "frequency_table.hpp"

namespace elr {

inline constexpr uint32_t kTableFormatVersion = 1;
inline constexpr size_t kTableHeaderBytes = 104;
inline constexpr uint32_t kSmoothingWittenBell = 1;

// Largest table file read by default: far above any table that fits a small device.
inline constexpr uint64_t kDefaultMaxTableFileBytes = uint64_t{1} << 30;

// Returns the CRC-32 of `size` bytes continued from `crc` (0 to start), as zlib.crc32 does.
uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc = 0);

// Returns the file image of `table`.
std::vector<uint8_t> table_to_bytes(const FrequencyTable& table);

// Parses a file image. Throws InvalidInput, naming the field, when the image is not a valid
// version-1 table or is larger than `max_bytes`.
FrequencyTable table_from_bytes(const uint8_t* data, size_t size,
                                uint64_t max_bytes = kDefaultMaxTableFileBytes);

// Writes `table` to `path` through a temporary file in the same directory that is renamed into
// place, so an interrupted save never leaves a partial table at `path`. Throws FileError.
void save_table(const FrequencyTable& table, const std::filesystem::path& path);

// Reads and validates the table at `path`. Throws FileError when it cannot be read and
// InvalidInput when it is invalid or larger than `max_bytes`.
FrequencyTable load_table(const std::filesystem::path& path,
                          uint64_t max_bytes = kDefaultMaxTableFileBytes);

}  // namespace elr
