// pylon-sessions: the error type every call throws (pylon::Error) and the names of its codes.
#include <string>
#include <utility>

#include "session_backend.hpp"

namespace pylon {

// One exception type with a code; what() is prefixed with a stable id "[pylon.<code>]" so logs
// can be grepped without parsing prose.

const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return "invalid_argument";
    case ErrorCode::kUnsupportedScheme:
      return "unsupported_scheme";
    case ErrorCode::kCorruptDatabase:
      return "corrupt_database";
    case ErrorCode::kSchemaTooNew:
      return "schema_too_new";
    case ErrorCode::kBusy:
      return "busy";
    case ErrorCode::kConnectionLost:
      return "connection_lost";
    case ErrorCode::kStorageFull:
      return "storage_full";
    case ErrorCode::kReadOnly:
      return "read_only";
    case ErrorCode::kIo:
      return "io";
    case ErrorCode::kConfiguration:
      return "configuration";
    case ErrorCode::kInternal:
      return "internal";
  }
  return "unknown";
}

Error::Error(ErrorCode code, const std::string& message, std::string backend_detail)
    : std::runtime_error("[pylon." + std::string(to_string(code)) + "] " + message),
      code_(code),
      backend_detail_(std::move(backend_detail)) {}

}  // namespace pylon
