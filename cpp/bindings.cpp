// Python bindings of the patcher: the module elr_runtime._patcher, re-exported by
// elr_runtime.patcher. Byte inputs are borrowed without a copy (bytes, bytearray, memoryview,
// 1-D C-contiguous uint8 arrays); anything else raises TypeError or ValueError instead of being
// converted. Long calls release the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "errors.hpp"
#include "frequency_table.hpp"
#include "patcher.hpp"
#include "table_builder.hpp"
#include "table_format.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace elr {
namespace {

using ByteArray = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
template <typename T>
using NumpyVector = nb::ndarray<nb::numpy, T, nb::ndim<1>>;

constexpr const char* kBytesLikeHint =
    "bytes, bytearray, memoryview or a 1-D C-contiguous numpy.uint8 array";

// A buffer view held only to describe why an object was rejected.
class BufferInfo {
 public:
  explicit BufferInfo(PyObject* object) {
    valid_ = PyObject_GetBuffer(object, &view_, PyBUF_RECORDS_RO) == 0;
    if (!valid_) {
      PyErr_Clear();
    }
  }
  ~BufferInfo() {
    if (valid_) {
      PyBuffer_Release(&view_);
    }
  }
  BufferInfo(const BufferInfo&) = delete;
  BufferInfo& operator=(const BufferInfo&) = delete;

  bool valid() const { return valid_; }
  const Py_buffer& view() const { return view_; }

 private:
  Py_buffer view_{};
  bool valid_ = false;
};

// Returns `object` as a borrowed byte array, or raises a TypeError (wrong type or element type)
// or ValueError (wrong layout) that names what was received.
ByteArray require_bytes(nb::handle object, const char* argument) {
  ByteArray array;
  if (nb::try_cast(object, array, false)) {
    return array;
  }
  const std::string name(argument);
  if (PyUnicode_Check(object.ptr())) {
    throw nb::type_error((name + " must be " + kBytesLikeHint +
                          ", got str: encode the text first, for example text.encode('utf-8')")
                             .c_str());
  }
  const BufferInfo info(object.ptr());
  if (!info.valid()) {
    const std::string type_name = nb::type_name(object.type()).c_str();
    throw nb::type_error((name + " must be " + kBytesLikeHint + ", got " + type_name).c_str());
  }
  const Py_buffer& view = info.view();
  const std::string format = view.format != nullptr ? view.format : "B";
  if (view.itemsize != 1 || (format != "B" && format != "=B" && format != "<B" && format != "|B")) {
    throw nb::type_error((name + " must hold uint8 values (" + kBytesLikeHint +
                          "), got a buffer of format '" + format + "' and item size " +
                          std::to_string(view.itemsize) +
                          ": convert it, for example numpy.ascontiguousarray(x, dtype=numpy.uint8)")
                             .c_str());
  }
  throw nb::value_error((name + " must be a 1-D C-contiguous buffer, got " +
                         std::to_string(view.ndim) + " dimension(s)" +
                         (view.ndim == 1 && view.strides != nullptr
                              ? " with stride " + std::to_string(view.strides[0])
                              : std::string()) +
                         ": pass a contiguous copy, for example numpy.ascontiguousarray(x)")
                            .c_str());
}

// Hands `values` to a new numpy array that owns them, without a copy.
template <typename T>
NumpyVector<T> numpy_from_vector(std::vector<T>&& values) {
  auto owned = std::make_unique<std::vector<T>>(std::move(values));
  if (owned->empty()) {
    owned->reserve(1);  // a non-null data pointer even for an empty array
  }
  T* data = owned->data();
  const size_t size = owned->size();
  nb::capsule owner(owned.get(), [](void* pointer) noexcept {
    std::unique_ptr<std::vector<T>> release(static_cast<std::vector<T>*>(pointer));
  });
  owned.release();  // the capsule owns the vector from here on
  return NumpyVector<T>(data, {size}, owner);
}

// A numpy bool array of `size` elements filled by `fill(bool*)` with the GIL released.
template <typename Fill>
NumpyVector<bool> numpy_bool_array(size_t size, Fill&& fill) {
  auto owned = std::make_unique<bool[]>(size == 0 ? 1 : size);
  {
    nb::gil_scoped_release release;
    fill(owned.get());
  }
  bool* data = owned.get();
  nb::capsule owner(owned.get(), [](void* pointer) noexcept {
    std::unique_ptr<bool[]> release(static_cast<bool*>(pointer));
  });
  owned.release();  // the capsule owns the buffer from here on
  return NumpyVector<bool>(data, {size}, owner);
}

NumpyVector<float> entropies_of(const FrequencyTable& table, nb::handle data_object) {
  const ByteArray data = require_bytes(data_object, "data");
  std::vector<float> entropies(data.shape(0));
  {
    nb::gil_scoped_release release;
    table.entropies(data.data(), data.shape(0), entropies.data());
  }
  return numpy_from_vector(std::move(entropies));
}

std::array<bool, kByteValues> boundary_set_from(nb::handle object) {
  std::array<bool, kByteValues> boundary_after{};
  ByteArray array;
  if (nb::try_cast(object, array, false)) {
    for (size_t i = 0; i < array.shape(0); ++i) {
      boundary_after[array(i)] = true;
    }
    return boundary_after;
  }
  std::vector<int64_t> values;
  if (PyUnicode_Check(object.ptr()) || !nb::try_cast(object, values, false)) {
    throw nb::type_error(("boundary_bytes must be bytes or a sequence of ints in 0..255, got " +
                          std::string(nb::type_name(object.type()).c_str()))
                             .c_str());
  }
  for (const int64_t value : values) {
    if (value < 0 || value > 255) {
      throw InvalidInput("boundary_bytes values must be in 0..255, got " + std::to_string(value));
    }
    boundary_after[static_cast<size_t>(value)] = true;
  }
  return boundary_after;
}

PatcherSettings make_settings(double threshold, std::optional<double> relative_threshold,
                              const std::string& mode, int64_t max_patch_length,
                              nb::handle boundary_bytes) {
  PatcherSettings settings;
  settings.threshold = threshold;
  settings.has_relative_threshold = relative_threshold.has_value();
  settings.relative_threshold = relative_threshold.value_or(0.0);
  settings.mode = boundary_mode_from_name(mode);
  if (max_patch_length < 1 || static_cast<uint64_t>(max_patch_length) > kMaxPatchLengthLimit) {
    throw InvalidInput("max_patch_length must be in 1.." + std::to_string(kMaxPatchLengthLimit) +
                       ", got " + std::to_string(max_patch_length));
  }
  settings.max_patch_length = static_cast<size_t>(max_patch_length);
  settings.boundary_after = boundary_set_from(boundary_bytes);
  settings.validate();
  return settings;
}

nb::dict settings_dict(const PatcherSettings& settings) {
  nb::dict out;
  out["threshold"] = settings.threshold;
  if (settings.has_relative_threshold) {
    out["relative_threshold"] = settings.relative_threshold;
  } else {
    out["relative_threshold"] = nb::none();
  }
  out["mode"] = boundary_mode_name(settings.mode);
  out["max_patch_length"] = settings.max_patch_length;
  nb::list boundary;
  for (const uint8_t byte : settings.boundary_bytes()) {
    boundary.append(byte);
  }
  out["boundary_bytes"] = boundary;
  return out;
}

constexpr const char* kSettingKeys[] = {"threshold", "relative_threshold", "mode",
                                        "max_patch_length", "boundary_bytes"};

PatcherSettings settings_from_dict(const nb::dict& values) {
  for (const auto& item : values) {
    const std::string key = nb::cast<std::string>(nb::str(item.first));
    bool known = false;
    for (const char* name : kSettingKeys) {
      known = known || key == name;
    }
    if (!known) {
      throw InvalidInput("unknown patcher setting '" + key +
                         "' (expected threshold, relative_threshold, mode, max_patch_length, "
                         "boundary_bytes)");
    }
  }
  for (const char* name : kSettingKeys) {
    if (!values.contains(name)) {
      throw InvalidInput(std::string("patcher settings are missing '") + name +
                         "': store the whole dict returned by Patcher.settings()");
    }
  }
  const nb::handle relative = values["relative_threshold"];
  return make_settings(nb::cast<double>(values["threshold"]),
                       relative.is_none() ? std::nullopt
                                          : std::optional<double>(nb::cast<double>(relative)),
                       nb::cast<std::string>(values["mode"]),
                       nb::cast<int64_t>(values["max_patch_length"]), values["boundary_bytes"]);
}

std::string table_repr(const FrequencyTable& table) {
  return "FrequencyTable(context_length=" + std::to_string(table.context_length()) +
         ", n_contexts=" + std::to_string(table.n_contexts()) +
         ", size_bytes=" + std::to_string(table.size_bytes()) + ")";
}

FrequencyTable table_from_buffer(nb::handle data_object, uint64_t max_bytes) {
  const ByteArray data = require_bytes(data_object, "data");
  nb::gil_scoped_release release;
  return table_from_bytes(data.data(), data.shape(0), max_bytes);
}

nb::bytes table_image(const FrequencyTable& table) {
  std::vector<uint8_t> image;
  {
    nb::gil_scoped_release release;
    image = table_to_bytes(table);
  }
  return nb::bytes(reinterpret_cast<const char*>(image.data()), image.size());
}

void translate_file_error(const std::exception_ptr& error, void*) {
  try {
    std::rethrow_exception(error);
  } catch (const FileError& file_error) {
    // errno plus the file name lets Python pick FileNotFoundError, PermissionError, ...
    const nb::object filename = nb::cast(file_error.path().string());
    errno = file_error.code().value();
    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, filename.ptr());
  }
}

}  // namespace
}  // namespace elr

NB_MODULE(_patcher, m) {
  using namespace elr;
  m.doc() = "C++ entropy patcher: n-gram frequency tables and patch boundary rules.";
  nb::register_exception_translator(translate_file_error);

  m.attr("MAX_CONTEXT_LENGTH") = kMaxContextLength;
  m.attr("DEFAULT_MAX_TABLE_BYTES") = kDefaultMaxTableBytes;
  m.attr("DEFAULT_MAX_BUILDER_BYTES") = kDefaultMaxBuilderBytes;
  m.attr("DEFAULT_MAX_TABLE_FILE_BYTES") = kDefaultMaxTableFileBytes;
  m.attr("MIN_TABLE_BYTES") = kMinTableBytes;
  m.attr("MIN_BUILDER_BYTES") = kMinBuilderBytes;
  m.attr("TABLE_FIXED_BYTES") = kTableFixedBytes;
  m.attr("MAX_NARROW_ORDER") = kMaxNarrowOrder;
  m.attr("NARROW_CONTEXT_BYTES") = kNarrowContextBytes;
  m.attr("WIDE_CONTEXT_BYTES") = kWideContextBytes;
  m.attr("BUILDER_SLOT_BYTES") = kBuilderSlotBytes;
  m.attr("TABLE_FORMAT_VERSION") = kTableFormatVersion;
  m.attr("MAX_PATCH_LENGTH_LIMIT") = kMaxPatchLengthLimit;

  nb::class_<FrequencyTable>(
      m, "FrequencyTable",
      "Immutable n-gram entropy model: for each stored context, the entropy in bits of the "
      "Witten-Bell smoothed next-byte distribution. Safe to share between threads.")
      .def_prop_ro("context_length", &FrequencyTable::context_length,
                   "Longest context k in bytes.")
      .def_prop_ro("n_contexts", &FrequencyTable::n_contexts,
                   "Stored contexts, counting the order-0 (empty) context.")
      .def_prop_ro(
          "n_contexts_by_order",
          [](const FrequencyTable& table) {
            std::vector<size_t> counts;
            for (size_t order = 0; order <= table.context_length(); ++order) {
              counts.push_back(table.n_contexts_of_order(order));
            }
            return counts;
          },
          "Stored contexts of 0, 1, ..., k bytes.")
      .def_prop_ro("size_bytes", &FrequencyTable::size_bytes, "Memory held by the table.")
      .def("entropies", &entropies_of, "data"_a,
           nb::sig("def entropies(self, data: bytes | bytearray | memoryview | "
                   "numpy.typing.NDArray[numpy.uint8]) -> numpy.typing.NDArray[numpy.float32]"),
           "Return float32 entropies in bits, shape (len(data),): element t predicts data[t] "
           "from data[max(0, t-k):t], as at the start of a document.")
      .def("save", &save_table, "path"_a, nb::call_guard<nb::gil_scoped_release>(),
           "Write the table to path (written to path + '.partial', then renamed). Raises "
           "OSError.")
      .def_static("load", &load_table, "path"_a, "max_bytes"_a = kDefaultMaxTableFileBytes,
                  nb::call_guard<nb::gil_scoped_release>(),
                  "Read and validate a table file. Raises OSError when it cannot be read and "
                  "ValueError when it is invalid or larger than max_bytes.")
      .def("to_bytes", &table_image, "Return the file image of the table.")
      .def_static("from_bytes", &table_from_buffer, "data"_a,
                  "max_bytes"_a = kDefaultMaxTableFileBytes,
                  nb::sig("def from_bytes(data: bytes | bytearray | memoryview | "
                          "numpy.typing.NDArray[numpy.uint8], max_bytes: int = 1073741824) -> "
                          "FrequencyTable"),
                  "Parse and validate a file image. Raises ValueError when it is invalid.")
      .def("__getstate__", &table_image)
      .def("__setstate__",
           [](FrequencyTable* self, nb::bytes image) {
             const auto* data = static_cast<const uint8_t*>(image.data());
             new (self) FrequencyTable(table_from_bytes(data, image.size()));
           })
      .def("__repr__", &table_repr);

  nb::class_<TableBuilder>(
      m, "TableBuilder",
      "Counts next bytes after contexts of 0..k bytes in a hash table of max_builder_bytes, "
      "pruning the rarest pairs when it fills, and finalizes a FrequencyTable of at most "
      "max_table_bytes.")
      .def(nb::init<size_t, size_t, size_t>(), "context_length"_a = 4,
           "max_table_bytes"_a = kDefaultMaxTableBytes,
           "max_builder_bytes"_a = kDefaultMaxBuilderBytes)
      .def("begin_document", &TableBuilder::begin_document,
           "Start a new document: the next byte added has no context.")
      .def(
          "add",
          [](TableBuilder& builder, nb::handle data_object) {
            const ByteArray data = require_bytes(data_object, "data");
            nb::gil_scoped_release release;
            builder.add(data.data(), data.shape(0));
          },
          "data"_a,
          nb::sig("def add(self, data: bytes | bytearray | memoryview | "
                  "numpy.typing.NDArray[numpy.uint8]) -> None"),
          "Count data as the continuation of the current document (chunks of a large file).")
      .def(
          "add_document",
          [](TableBuilder& builder, nb::handle data_object) {
            const ByteArray data = require_bytes(data_object, "data");
            nb::gil_scoped_release release;
            builder.begin_document();
            builder.add(data.data(), data.shape(0));
          },
          "data"_a,
          nb::sig("def add_document(self, data: bytes | bytearray | memoryview | "
                  "numpy.typing.NDArray[numpy.uint8]) -> None"),
          "Count data as one whole document.")
      .def(
          "finalize",
          [](const TableBuilder& builder) {
            nb::gil_scoped_release release;
            return builder.finalize();
          },
          "Return a FrequencyTable of the counts so far; the builder stays usable.")
      .def_prop_ro("context_length", &TableBuilder::context_length)
      .def_prop_ro("max_table_bytes", &TableBuilder::max_table_bytes)
      .def_prop_ro("max_builder_bytes", &TableBuilder::max_builder_bytes)
      .def_prop_ro("n_bytes", &TableBuilder::n_bytes, "Bytes counted so far.")
      .def_prop_ro("n_documents", &TableBuilder::n_documents, "Documents started so far.")
      .def_prop_ro("n_pairs", &TableBuilder::n_pairs,
                   "Distinct (context, next byte) pairs held now.")
      .def_prop_ro("n_prunes", &TableBuilder::n_prunes,
                   "Times the rarest pairs were pruned to stay within max_builder_bytes.");

  nb::class_<Patcher>(
      m, "Patcher",
      "Splits byte strings into patches: byte 0 starts a patch, and byte t >= 1 starts one "
      "when data[t-1] is a boundary byte, the current patch has max_patch_length bytes, or the "
      "mode's entropy rule holds (global: e[t] > threshold; relative: e[t] - e[t-1] > "
      "relative_threshold; both: the two together, AND). Entropies are in bits. Immutable and "
      "safe to share between threads.")
      .def(
          "__init__",
          [](Patcher* self, const FrequencyTable& table, double threshold,
             std::optional<double> relative_threshold, const std::string& mode,
             int64_t max_patch_length, nb::handle boundary_bytes) {
            new (self) Patcher(table, make_settings(threshold, relative_threshold, mode,
                                                    max_patch_length, boundary_bytes));
          },
          "table"_a, "threshold"_a = 3.0, "relative_threshold"_a = nb::none(),
          "mode"_a = "global", "max_patch_length"_a = 16, "boundary_bytes"_a = nb::bytes(""),
          nb::sig("def __init__(self, table: FrequencyTable, threshold: float = 3.0, "
                  "relative_threshold: float | None = None, mode: str = 'global', "
                  "max_patch_length: int = 16, boundary_bytes: bytes | "
                  "collections.abc.Sequence[int] = b'') -> None"))
      .def_static(
          "from_settings",
          [](const FrequencyTable& table, const nb::dict& settings) {
            return Patcher(table, settings_from_dict(settings));
          },
          "table"_a, "settings"_a,
          "Build a patcher from the dict returned by settings(). Raises ValueError on a "
          "missing or unknown key.")
      .def(
          "settings", [](const Patcher& patcher) { return settings_dict(patcher.settings()); },
          "Return the settings as a JSON-ready dict (boundary_bytes as a list of ints).")
      .def_prop_ro("table", &Patcher::table)
      .def_prop_ro("threshold", [](const Patcher& p) { return p.settings().threshold; })
      .def_prop_ro("relative_threshold",
                   [](const Patcher& p) -> std::optional<double> {
                     if (!p.settings().has_relative_threshold) return std::nullopt;
                     return p.settings().relative_threshold;
                   })
      .def_prop_ro("mode",
                   [](const Patcher& p) { return std::string(boundary_mode_name(p.settings().mode)); })
      .def_prop_ro("max_patch_length",
                   [](const Patcher& p) { return p.settings().max_patch_length; })
      .def_prop_ro("boundary_bytes",
                   [](const Patcher& p) {
                     const std::vector<uint8_t> bytes = p.settings().boundary_bytes();
                     return nb::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
                   })
      .def(
          "entropies",
          [](const Patcher& patcher, nb::handle data) { return entropies_of(patcher.table(), data); },
          "data"_a,
          nb::sig("def entropies(self, data: bytes | bytearray | memoryview | "
                  "numpy.typing.NDArray[numpy.uint8]) -> numpy.typing.NDArray[numpy.float32]"),
          "Return float32 entropies in bits, as FrequencyTable.entropies.")
      .def(
          "patch_lengths",
          [](const Patcher& patcher, nb::handle data_object) {
            const ByteArray data = require_bytes(data_object, "data");
            std::vector<int32_t> lengths;
            {
              nb::gil_scoped_release release;
              lengths = patcher.patch_lengths(data.data(), data.shape(0));
            }
            return numpy_from_vector(std::move(lengths));
          },
          "data"_a,
          nb::sig("def patch_lengths(self, data: bytes | bytearray | memoryview | "
                  "numpy.typing.NDArray[numpy.uint8]) -> numpy.typing.NDArray[numpy.int32]"),
          "Return int32 patch lengths that sum to len(data); empty for empty data.")
      .def(
          "patch_start_mask",
          [](const Patcher& patcher, nb::handle data_object) {
            const ByteArray data = require_bytes(data_object, "data");
            const size_t size = data.shape(0);
            return numpy_bool_array(size, [&](bool* mask) {
              patcher.patch_start_mask(data.data(), size, mask);
            });
          },
          "data"_a,
          nb::sig("def patch_start_mask(self, data: bytes | bytearray | memoryview | "
                  "numpy.typing.NDArray[numpy.uint8]) -> numpy.typing.NDArray[numpy.bool_]"),
          "Return a bool array, shape (len(data),): element t is whether data[t] starts a "
          "patch. It depends only on data[:t], so patch_start_mask(doc + b'\\x00')[-1] tells "
          "whether the byte after doc starts a patch.")
      .def(
          "incremental", [](const Patcher& patcher) { return IncrementalPatcher(patcher); },
          "Return an IncrementalPatcher with these settings, at the start of a stream.")
      .def("__getstate__",
           [](const Patcher& patcher) {
             return nb::make_tuple(table_image(patcher.table()), settings_dict(patcher.settings()));
           })
      .def("__setstate__",
           [](Patcher* self, const nb::tuple& state) {
             const nb::bytes image = nb::cast<nb::bytes>(state[0]);
             const auto* data = static_cast<const uint8_t*>(image.data());
             new (self) Patcher(table_from_bytes(data, image.size()),
                                settings_from_dict(nb::cast<nb::dict>(state[1])));
           })
      .def("__repr__", [](const Patcher& patcher) {
        const PatcherSettings& s = patcher.settings();
        return "Patcher(threshold=" + std::to_string(s.threshold) + ", relative_threshold=" +
               (s.has_relative_threshold ? std::to_string(s.relative_threshold) : "None") +
               ", mode='" + boundary_mode_name(s.mode) +
               "', max_patch_length=" + std::to_string(s.max_patch_length) +
               ", boundary_bytes=" + std::to_string(s.boundary_bytes().size()) + " values)";
      });

  nb::class_<IncrementalPatcher>(
      m, "IncrementalPatcher",
      "Patches a stream one byte at a time with the same decisions as "
      "Patcher.patch_start_mask. Not thread safe: use one per stream.")
      .def("next_starts_patch", &IncrementalPatcher::next_starts_patch,
           "Return whether the next byte pushed will start a patch.")
      .def(
          "push",
          [](IncrementalPatcher& incremental, int64_t byte) {
            if (byte < 0 || byte > 255) {
              throw InvalidInput("byte must be in 0..255, got " + std::to_string(byte));
            }
            incremental.push(static_cast<uint8_t>(byte));
          },
          "byte"_a, "Append one byte (an int in 0..255) to the stream.")
      .def(
          "push_bytes",
          [](IncrementalPatcher& incremental, nb::handle data_object) {
            const ByteArray data = require_bytes(data_object, "data");
            const size_t size = data.shape(0);
            return numpy_bool_array(size, [&](bool* mask) {
              incremental.push_bytes(data.data(), size, mask);
            });
          },
          "data"_a,
          nb::sig("def push_bytes(self, data: bytes | bytearray | memoryview | "
                  "numpy.typing.NDArray[numpy.uint8]) -> numpy.typing.NDArray[numpy.bool_]"),
          "Append bytes; return for each whether it started a patch.")
      .def("reset", &IncrementalPatcher::reset,
           "Start a new stream: the next byte starts a patch and has no context.")
      .def_prop_ro("next_entropy", &IncrementalPatcher::next_entropy,
                   "Entropy in bits that predicts the next byte.")
      .def_prop_ro("position", &IncrementalPatcher::position, "Bytes pushed since the reset.")
      .def_prop_ro("current_patch_length", &IncrementalPatcher::current_patch_length,
                   "Bytes in the patch that the last pushed byte belongs to.")
      .def_prop_ro("patcher", &IncrementalPatcher::patcher);

  m.def(
      "_calibrate_threshold",
      [](const FrequencyTable& table, const std::vector<nb::handle>& documents, double target,
         const std::string& mode, int64_t max_patch_length, nb::handle boundary_bytes,
         std::optional<double> relative_threshold) {
        // The calibrated threshold gets a placeholder so that the settings validate.
        const bool relative_mode = boundary_mode_from_name(mode) == BoundaryMode::relative;
        const PatcherSettings settings =
            make_settings(0.0, relative_mode ? std::optional<double>(0.0) : relative_threshold,
                          mode, max_patch_length, boundary_bytes);

        std::vector<ByteArray> arrays;
        std::vector<ByteSpan> spans;
        arrays.reserve(documents.size());
        for (const nb::handle document : documents) {
          arrays.push_back(require_bytes(document, "corpus document"));
          spans.push_back({arrays.back().data(), arrays.back().shape(0)});
        }
        Calibration result;
        {
          nb::gil_scoped_release release;
          result = calibrate_threshold(table, spans, target, settings);
        }
        return nb::make_tuple(result.threshold, result.mean_patch_length);
      },
      "table"_a, "documents"_a, "target_mean_patch_length"_a, "mode"_a, "max_patch_length"_a,
      "boundary_bytes"_a, "relative_threshold"_a.none(),
      "Return (threshold, mean_patch_length); use elr_runtime.patcher.calibrate_threshold.");
}
