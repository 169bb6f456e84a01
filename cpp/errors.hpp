// Exception types of the patcher. The bindings map InvalidInput to ValueError and FileError to
// OSError (FileNotFoundError and so on, chosen from the error code).
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>

namespace elr {

// Invalid argument, setting or file content: the caller can fix it.
class InvalidInput : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A file could not be opened, read or written.
class FileError : public std::runtime_error {
 public:
  FileError(const std::string& message, std::error_code code, std::filesystem::path path)
      : std::runtime_error(message), code_(code), path_(std::move(path)) {}

  const std::error_code& code() const noexcept { return code_; }
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::error_code code_;
  std::filesystem::path path_;
};

}  // namespace elr
