// Proves the public header and the pylon::sessions target are enough to log in and restart.
#include <cstdio>

#include "session_backend.hpp"

int main() {
  const char* url = "sqlite://consumer_sessions.db";
  std::string token;
  {
    auto store = pylon::SessionStore::open(url);
    token = store.create("consumer-user").token;
  }
  auto restarted = pylon::SessionStore::open(url);
  const bool ok = restarted.validate(token).has_value() && restarted.revoke(token);
  std::puts(ok ? "consumer: session survived a restart" : "consumer: FAILED");
  return ok ? 0 : 1;
}
