// pylon_demo: a web application whose users stay logged in across restarts.
//
//   pylon_demo [--host 127.0.0.1] [--port 8080] [--db URL] [--cert FILE --key FILE]
//
// A login form (any name, the password "pylon"), a page showing the current session, a "your
// devices" page listing the user's sessions with a sign-out button on each and "sign out
// everywhere else", a token rotation button, and logout. Sessions live in a pylon::SessionStore
// on the SQLite default (sessions.db in the working directory, or --db / DATABASE_URL), so a
// restarted server knows every session it issued.
//
// How it uses the library, and why:
//   - Login creates a session (SessionStore::create) with a token the server made at that
//     moment, and revokes any session the browser presented before: a token planted in the
//     browser before login (session fixation) never becomes a logged-in session. There is no
//     anonymous pre-login session to rotate, so the login's token is new by construction; the
//     "rotate my token" button shows SessionStore::rotate, the call for privilege changes.
//   - The cookie is HttpOnly, SameSite=Lax, Path=/, Secure when served over TLS (--cert/--key).
//   - Every form that changes state carries a CSRF token: after login, a random value kept in
//     the session's data (CreateOptions::data) and compared in constant time on each POST;
//     before login, the login form's double-submit cookie. A POST without it is refused (403).
//   - "Sign out that device" revokes by session id (SessionStore::revoke_id) after checking the
//     id belongs to the same user; the other browser is logged out on its next request, since
//     validate() finds nothing.
#include <httplib.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "session_backend.hpp"

namespace {

constexpr const char* kPassword = "pylon";
constexpr const char* kSessionCookie = "pylon_session";
constexpr const char* kLoginCsrfCookie = "pylon_login_csrf";
constexpr std::size_t kMaxNameBytes = 64;

// 32 random bytes as hex, for CSRF tokens.
std::string random_hex() {
  std::array<unsigned char, 32> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    throw std::runtime_error("RAND_bytes failed");
  }
  constexpr std::string_view kHex = "0123456789abcdef";
  std::string out;
  for (const unsigned char b : bytes) {
    out += kHex[b >> 4U];
    out += kHex[b & 0xfU];
  }
  return out;
}

bool same_secret(std::string_view a, std::string_view b) {
  return a.size() == b.size() && !a.empty() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string utc(std::int64_t unix_seconds) {
  const auto t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::array<char, 32> text{};
  if (std::strftime(text.data(), text.size(), "%Y-%m-%d %H:%M:%S UTC", &tm) == 0) return "?";
  return text.data();
}

// "Firefox on Linux" from a User-Agent header: enough to tell devices apart on the page.
std::string device_from_user_agent(std::string_view ua) {
  const auto has = [&ua](std::string_view word) { return ua.find(word) != std::string_view::npos; };
  std::string browser = "A browser";
  if (has("Firefox/")) {
    browser = "Firefox";
  } else if (has("Edg/")) {
    browser = "Edge";
  } else if (has("HeadlessChrome/")) {
    browser = "Headless Chrome";
  } else if (has("Chrome/")) {
    browser = "Chrome";
  } else if (has("Safari/")) {
    browser = "Safari";
  } else if (has("curl/")) {
    browser = "curl";
  }
  std::string system;
  if (has("Android")) {
    system = "Android";
  } else if (has("iPhone") || has("iPad")) {
    system = "iOS";
  } else if (has("Windows")) {
    system = "Windows";
  } else if (has("Mac OS X")) {
    system = "macOS";
  } else if (has("Linux")) {
    system = "Linux";
  }
  return system.empty() ? browser : browser + " on " + system;
}

// The value of cookie `name` in the request, or "".
std::string cookie(const httplib::Request& req, std::string_view name) {
  const std::string header = req.get_header_value("Cookie");
  std::size_t at = 0;
  while (at < header.size()) {
    std::size_t end = header.find(';', at);
    if (end == std::string::npos) end = header.size();
    std::string_view pair(header.data() + at, end - at);  // NOLINT(*-pointer-arithmetic)
    while (!pair.empty() && pair.front() == ' ') pair.remove_prefix(1);
    const std::size_t equals = pair.find('=');
    if (equals != std::string_view::npos && pair.substr(0, equals) == name) {
      return std::string(pair.substr(equals + 1));
    }
    at = end + 1;
  }
  return {};
}

struct App {
  pylon::SessionStore store;
  bool tls = false;

  [[nodiscard]] std::string cookie_attributes() const {
    return std::string("; Path=/; HttpOnly; SameSite=Lax") + (tls ? "; Secure" : "");
  }
  void set_session_cookie(httplib::Response& res, const std::string& token) const {
    res.set_header("Set-Cookie", std::string(kSessionCookie) + "=" + token + cookie_attributes() +
                                     "; Max-Age=86400");
  }
  void clear_session_cookie(httplib::Response& res) const {
    res.set_header("Set-Cookie",
                   std::string(kSessionCookie) + "=" + cookie_attributes() + "; Max-Age=0");
  }
};

// The session of the request's cookie, if it is live (validate() slides its idle expiry).
std::optional<pylon::Session> current(App& app, const httplib::Request& req, std::string* token) {
  std::string value = cookie(req, kSessionCookie);
  if (value.empty()) return std::nullopt;
  std::optional<pylon::Session> session = app.store.validate(value);
  if (session && token != nullptr) *token = std::move(value);
  return session;
}

// The CSRF token of a session: its data is "csrf=<hex>".
std::string csrf_of(const pylon::Session& s) {
  constexpr std::string_view kKey = "csrf=";
  return s.data.rfind(kKey, 0) == 0 ? s.data.substr(kKey.size()) : std::string();
}

bool csrf_ok(const httplib::Request& req, const pylon::Session& s) {
  return same_secret(req.get_param_value("csrf"), csrf_of(s));
}

constexpr const char* kStyle =
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "color:#1b1f24}h1{font-size:1.5rem}table{border-collapse:collapse;width:100%}"
    "td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;font-size:.9rem}"
    "code{background:#f3f3f3;padding:0 .2rem}.note{color:#555}.this{font-weight:bold}"
    "button{padding:.3rem .8rem}input{padding:.3rem}form.inline{display:inline}"
    "nav a{margin-right:1rem}.box{border:1px solid #ccc;border-radius:6px;padding:1rem}";

std::string page(std::string_view title, std::string_view body) {
  return std::string("<!doctype html><html lang=en><head><meta charset=utf-8><title>") +
         html_escape(title) + " · pylon-sessions demo</title><style>" + kStyle +
         "</style></head><body>" + std::string(body) +
         "<p class=note>pylon-sessions demo: sessions in " +
         "a SessionStore; restart the server and you stay logged in.</p></body></html>";
}

std::string nav(const pylon::Session& s) {
  return "<nav><a href='/'>Your session</a><a href='/devices'>Your devices</a>"
         "<form class=inline method=post action='/logout'><input type=hidden name=csrf "
         "value='" +
         csrf_of(s) + "'><button id=logout>Log out</button></form></nav>";
}

void show_login(App& app, const httplib::Request& req, httplib::Response& res,
                std::string_view message) {
  std::string csrf = cookie(req, kLoginCsrfCookie);
  if (csrf.size() != 64) {
    csrf = random_hex();
    res.set_header("Set-Cookie", std::string(kLoginCsrfCookie) + "=" + csrf +
                                     app.cookie_attributes() + "; Max-Age=3600");
  }
  std::string body = "<h1>Log in</h1>";
  if (!message.empty()) body += "<p id=message class=note>" + html_escape(message) + "</p>";
  body += "<form class=box method=post action='/login'><input type=hidden name=csrf value='" +
          csrf +
          "'><p><label>Name <input name=user id=user required maxlength=64 "
          "autocomplete=username></label></p><p><label>Password <input name=password id=password "
          "type=password required autocomplete=current-password></label></p><p><button "
          "id=login>Log in</button></p><p class=note>Any name works; the password is <code>" +
          std::string(kPassword) + "</code>.</p></form>";
  res.set_content(page("Log in", body), "text/html; charset=utf-8");
}

void show_account(const pylon::Session& s, httplib::Response& res, std::string_view message) {
  std::string body = nav(s) + "<h1>Hello, <span id=user>" + html_escape(s.user_id) + "</span></h1>";
  if (!message.empty()) body += "<p id=message class=note>" + html_escape(message) + "</p>";
  body += "<div class=box><table>";
  const auto row = [&body](std::string_view key, const std::string& value) {
    body += "<tr><th>" + std::string(key) + "</th><td>" + html_escape(value) + "</td></tr>";
  };
  row("Session id", s.id.substr(0, 16) + "…");
  row("Device", s.device.value_or("-"));
  row("IP address", s.ip.value_or("-"));
  row("Created", utc(s.created_at));
  row("Last seen", utc(s.last_seen_at));
  row("Expires", utc(s.expires_at) + " (idle timeout 1 h, at most 24 h)");
  body += "</table></div><form method=post action='/rotate'><input type=hidden name=csrf value='" +
          csrf_of(s) +
          "'><p><button id=rotate>Rotate my token</button> <span class=note>a new cookie for "
          "this same session; the old token stops working</span></p></form>";
  res.set_content(page("Your session", body), "text/html; charset=utf-8");
}

void show_devices(App& app, const pylon::Session& s, httplib::Response& res) {
  std::string body = nav(s) +
                     "<h1>Your devices</h1><table id=devices><tr><th>Device</th>"
                     "<th>IP address</th><th>Created</th><th>Last seen</th><th></th></tr>";
  std::size_t others = 0;
  for (const pylon::Session& other : app.store.list_user(s.user_id)) {
    const bool self = other.id == s.id;
    others += self ? 0 : 1;
    body += std::string("<tr class=") + (self ? "this" : "other") + " data-id='" + other.id +
            "'><td>" + html_escape(other.device.value_or("-")) + (self ? " (this device)" : "") +
            "</td><td>" + html_escape(other.ip.value_or("-")) + "</td><td>" +
            utc(other.created_at) + "</td><td>" + utc(other.last_seen_at) + "</td><td>";
    if (!self) {
      body +=
          "<form class=inline method=post action='/devices/revoke'><input type=hidden "
          "name=csrf value='" +
          csrf_of(s) + "'><input type=hidden name=id value='" + other.id +
          "'><button class=revoke>Sign out</button></form>";
    }
    body += "</td></tr>";
  }
  body += "</table>";
  if (others > 0) {
    body +=
        "<form method=post action='/devices/revoke-others'><input type=hidden name=csrf "
        "value='" +
        csrf_of(s) + "'><p><button id=revoke-others>Sign out everywhere else</button></p></form>";
  }
  res.set_content(page("Your devices", body), "text/html; charset=utf-8");
}

void forbidden(httplib::Response& res) {
  res.status = 403;
  res.set_content(page("Refused",
                       "<h1>Refused</h1><p>This form was not sent by this site's page "
                       "(missing or wrong CSRF token). <a href='/'>Back</a></p>"),
                  "text/html; charset=utf-8");
}

void session_routes(httplib::Server& server, App& app);

void routes(httplib::Server& server, App& app) {
  server.set_post_routing_handler([](const httplib::Request&, httplib::Response& res) {
    res.set_header("Cache-Control", "no-store");
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_header("Referrer-Policy", "same-origin");
    res.set_header("Content-Security-Policy",
                   "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                   "frame-ancestors 'none'");
  });

  server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });

  server.Get("/", [&app](const httplib::Request& req, httplib::Response& res) {
    if (const std::optional<pylon::Session> s = current(app, req, nullptr)) {
      show_account(*s, res, req.get_param_value("m"));
      return;
    }
    const bool had_cookie = !cookie(req, kSessionCookie).empty();
    if (had_cookie) app.clear_session_cookie(res);
    show_login(app, req, res, had_cookie ? "You were signed out. Log in again." : "");
  });

  server.Post("/login", [&app](const httplib::Request& req, httplib::Response& res) {
    if (!same_secret(req.get_param_value("csrf"), cookie(req, kLoginCsrfCookie))) {
      forbidden(res);
      return;
    }
    const std::string user = req.get_param_value("user");
    if (user.empty() || user.size() > kMaxNameBytes ||
        req.get_param_value("password") != kPassword) {
      res.status = 401;
      show_login(app, req, res, "Wrong name or password (the password is pylon).");
      return;
    }
    // A session the browser held before login is ended, never promoted (session fixation).
    if (const std::string old = cookie(req, kSessionCookie); !old.empty()) app.store.revoke(old);
    pylon::CreateOptions options;
    options.device = device_from_user_agent(req.get_header_value("User-Agent"));
    options.ip = req.remote_addr;
    options.data = "csrf=" + random_hex();
    const pylon::NewSession created = app.store.create(user, options);
    app.set_session_cookie(res, created.token);
    res.set_redirect("/", 303);
  });

  session_routes(server, app);
}

// The routes of a logged-in user: every POST needs a live session and its CSRF token.
void session_routes(httplib::Server& server, App& app) {
  const auto guarded = [&app](auto action) {
    return [&app, action](const httplib::Request& req, httplib::Response& res) {
      std::string token;
      const std::optional<pylon::Session> s = current(app, req, &token);
      if (!s) {
        app.clear_session_cookie(res);
        res.set_redirect("/", 303);
        return;
      }
      if (!csrf_ok(req, *s)) {
        forbidden(res);
        return;
      }
      action(req, res, *s, token);
    };
  };

  server.Post("/logout", guarded([&app](const httplib::Request&, httplib::Response& res,
                                        const pylon::Session&, const std::string& token) {
                app.store.revoke(token);
                app.clear_session_cookie(res);
                res.set_redirect("/", 303);
              }));

  server.Post("/rotate", guarded([&app](const httplib::Request&, httplib::Response& res,
                                        const pylon::Session&, const std::string& token) {
                if (const std::optional<pylon::NewSession> rotated = app.store.rotate(token)) {
                  app.set_session_cookie(res, rotated->token);
                }
                res.set_redirect("/?m=Your%20token%20was%20rotated.", 303);
              }));

  server.Get("/devices", [&app](const httplib::Request& req, httplib::Response& res) {
    if (const std::optional<pylon::Session> s = current(app, req, nullptr)) {
      show_devices(app, *s, res);
    } else {
      res.set_redirect("/", 303);
    }
  });

  server.Post("/devices/revoke", guarded([&app](const httplib::Request& req, httplib::Response& res,
                                                const pylon::Session& s, const std::string&) {
                const std::string id = req.get_param_value("id");
                const std::optional<pylon::Session> target = app.store.find(id);
                if (target && target->user_id == s.user_id && target->id != s.id) {
                  app.store.revoke_id(id);
                }
                res.set_redirect("/devices", 303);
              }));

  server.Post("/devices/revoke-others",
              guarded([&app](const httplib::Request&, httplib::Response& res, const pylon::Session&,
                             const std::string& token) {
                app.store.revoke_others(token);
                res.set_redirect("/devices", 303);
              }));
}

void error_handler(httplib::Server& server) {
  server.set_exception_handler([](const httplib::Request&, httplib::Response& res,
                                  std::exception_ptr error) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(std::move(error));
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    std::cerr << "pylon_demo: " << what << '\n';
    res.status = 500;
    res.set_content(page("Error", "<h1>Something went wrong</h1><p>" + html_escape(what) + "</p>"),
                    "text/html; charset=utf-8");
  });
}

struct Options {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::optional<std::string> db;
  std::string cert;
  std::string key;
};

[[noreturn]] void usage(int status) {
  (status == 0 ? std::cout : std::cerr)
      << "Usage: pylon_demo [--host ADDRESS] [--port N] [--db URL] [--cert FILE --key FILE]\n"
         "  --host   address to listen on (default 127.0.0.1)\n"
         "  --port   port (default 8080; 0 picks a free one)\n"
         "  --db     DATABASE_URL of the sessions (default: $DATABASE_URL, else sessions.db)\n"
         "  --cert, --key  serve HTTPS with this certificate and key (cookies get Secure)\n";
  std::exit(status);  // NOLINT(concurrency-mt-unsafe): before any thread starts
}

Options parse(int argc, char** argv) {
  Options options;
  const std::vector<std::string> args(argv + 1, argv + argc);  // NOLINT(*-pointer-arithmetic)
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-h" || arg == "--help") usage(0);
    if (i + 1 >= args.size()) usage(2);
    const std::string& value = args[++i];
    if (arg == "--host") {
      options.host = value;
    } else if (arg == "--port") {
      options.port = std::atoi(value.c_str());  // NOLINT(cert-err34-c): 0 on garbage is refused
      if (options.port < 0 || options.port > 65535 || (options.port == 0 && value != "0")) usage(2);
    } else if (arg == "--db") {
      options.db = value;
    } else if (arg == "--cert") {
      options.cert = value;
    } else if (arg == "--key") {
      options.key = value;
    } else {
      usage(2);
    }
  }
  if (options.cert.empty() != options.key.empty()) usage(2);
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  // SIGINT and SIGTERM are taken by a thread of their own, which stops the server; every other
  // thread (httplib's pool) inherits the blocked mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGUSR1);  // sent by main() to end the stopper thread
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  try {
    const std::string url = options.db ? *options.db : pylon::database_url_from_env();
    pylon::StoreOptions store_options;
    store_options.max_sessions_per_user = 20;
    store_options.reaper_interval = std::chrono::minutes(10);
    App app{pylon::SessionStore::open(url, store_options), !options.cert.empty()};

    std::unique_ptr<httplib::Server> server;
    if (app.tls) {
      server = std::make_unique<httplib::SSLServer>(options.cert.c_str(), options.key.c_str());
    } else {
      server = std::make_unique<httplib::Server>();
    }
    if (!server->is_valid()) {
      std::cerr << "pylon_demo: cannot use the certificate or key\n";
      return 1;
    }
    routes(*server, app);
    error_handler(*server);
    int port = options.port;
    if (port == 0) {
      port = server->bind_to_any_port(options.host);
    } else if (!server->bind_to_port(options.host, port)) {
      port = -1;
    }
    if (port < 0) {
      std::cerr << "pylon_demo: cannot listen on " << options.host << ":" << options.port << '\n';
      return 1;
    }
    std::thread stopper([&server, &stop_signals] {
      int signal = 0;
      sigwait(&stop_signals, &signal);
      server->stop();
    });
    const std::string shown_host = options.host == "0.0.0.0" ? "127.0.0.1" : options.host;
    std::cout << "pylon-sessions demo: sessions in "
              << pylon::redact_url(url.empty() ? "sessions.db" : url) << " (" << app.store.size()
              << " stored)\n"
              << "Open " << (app.tls ? "https" : "http") << "://" << shown_host << ":" << port
              << "/  (any name, password: " << kPassword << "); Ctrl-C stops it.\n"
              << std::flush;
    server->listen_after_bind();
    // listen_after_bind() returned: a signal stopped it, or it failed; make sure the stopper ends.
    pthread_kill(stopper.native_handle(), SIGUSR1);
    stopper.join();
    std::cout << "pylon_demo: stopped\n";
  } catch (const std::exception& e) {
    std::cerr << "pylon_demo: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
