// Logs in, "restarts" (a second store on the same file) and validates: proof that the public
// header and the library are enough, whichever way the application was built.
#include <cstdio>
#include <cstring>
#include <pylon/session_backend.hpp>
#include <string>

int main() {
  const std::string url = "sqlite://consumer_sessions.db";
  std::string token;
  {
    auto store = pylon::SessionStore::open(url);
    token = store.create("consumer-user").token;
  }
  auto restarted = pylon::SessionStore::open(url);
  const bool ok = restarted.validate(token).has_value() && restarted.revoke(token) &&
                  std::strcmp(pylon::version(), PYLON_SESSIONS_VERSION_STRING) == 0;
  std::printf("consumer: pylon-sessions %s: %s\n", pylon::version(),
              ok ? "a session survived a restart" : "FAILED");
  return ok ? 0 : 1;
}
