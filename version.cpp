// pylon::version(): the version this library was built as, from session_backend.hpp.
#include "session_backend.hpp"

namespace pylon {

const char* version() noexcept { return PYLON_SESSIONS_VERSION_STRING; }

}  // namespace pylon
