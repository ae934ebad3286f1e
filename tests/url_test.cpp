// DATABASE_URL handling: every accepted form (bare path, sqlite:// relative and absolute,
// sqlite::memory:, the empty URL), the synchronous and busy_timeout query parameters as the
// library's own connection sees them, the errors for malformed URLs and unsupported schemes
// (which never show a password), undocumented forms refused before any file is created,
// PostgreSQL URLs that readers split differently refused without a fragment of any password
// they may hold, redact_url and database_url_from_env.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::ErrorCode;
using pylon::test::ConnectionSpy;
using pylon::test::file_exists;
using pylon::test::list_dir;
using pylon::test::make_session;
using pylon::test::ScopedCurrentDir;
using pylon::test::sqlite_url;
using pylon::test::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

// Saves a session through `backend`, opens `path` again and checks the session is there: proves
// the URL named that very file.
void expect_backend_uses_file(pylon::SessionBackend& backend, const std::string& path) {
  const pylon::Session session = make_session("url-user", 1);
  backend.save(session);
  ASSERT_TRUE(file_exists(path)) << path;
  auto again = pylon::open_sqlite_backend(path);
  EXPECT_TRUE(pylon::test::find_loaded(*again, session.id).has_value()) << path;
}

// The synchronous and busy_timeout settings of the connection the library holds on `path`.
struct ConnectionSettings {
  std::int64_t synchronous = -1;
  std::int64_t busy_timeout_ms = -1;
};

ConnectionSettings settings_of_library_connection(const std::string& path) {
  const std::vector<sqlite3*> connections = ConnectionSpy::open_connections_to(path);
  EXPECT_EQ(connections.size(), 1U) << "expected the library to hold one connection to " << path;
  if (connections.empty()) return {};
  return {pylon::test::pragma_int(connections.front(), "synchronous"),
          pylon::test::pragma_int(connections.front(), "busy_timeout")};
}

TEST(OpenBackend, BarePathOpensThatFile) {
  TempDir dir;
  const std::string path = dir.file("bare.db");
  auto backend = pylon::open_backend(path);
  ASSERT_NE(backend, nullptr);
  expect_backend_uses_file(*backend, path);
  EXPECT_THAT(backend->describe(), HasSubstr("bare.db"));
}

TEST(OpenBackend, BareRelativePathIsRelativeToTheWorkingDirectory) {
  TempDir dir;
  ScopedCurrentDir cwd(dir.path());
  auto backend = pylon::open_backend("relative-bare.db");
  expect_backend_uses_file(*backend, dir.file("relative-bare.db"));
}

TEST(OpenBackend, SqliteRelativeUrlIsRelativeToTheWorkingDirectory) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.file("sub").c_str(), 0700), 0);
  ScopedCurrentDir cwd(dir.path());
  auto backend = pylon::open_backend("sqlite://sub/relative.db");
  expect_backend_uses_file(*backend, dir.file("sub/relative.db"));
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"sub"}));
}

TEST(OpenBackend, SqliteAbsoluteUrlOpensTheAbsolutePath) {
  TempDir dir;
  TempDir elsewhere;
  ScopedCurrentDir cwd(elsewhere.path());
  const std::string path = dir.file("absolute.db");
  auto backend = pylon::open_backend(sqlite_url(path));
  expect_backend_uses_file(*backend, path);
  EXPECT_TRUE(list_dir(elsewhere.path()).empty()) << "nothing may be created in the cwd";
}

TEST(OpenBackend, SqliteMemoryIsPrivateAndCreatesNoFile) {
  TempDir dir;
  ScopedCurrentDir cwd(dir.path());
  auto first = pylon::open_backend("sqlite::memory:");
  auto second = pylon::open_backend("sqlite::memory:");
  const pylon::Session session = make_session("memory-user", 2);
  first->save(session);
  const auto loaded = pylon::test::find_loaded(*first, session.id);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(pylon::test::same_session(session, *loaded));
  EXPECT_TRUE(second->load_all().empty()) << "each :memory: database is private";
  EXPECT_TRUE(list_dir(dir.path()).empty()) << "sqlite::memory: must not create a file";
}

TEST(OpenBackend, EmptyUrlMeansSessionsDbInTheWorkingDirectory) {
  TempDir dir;
  ScopedCurrentDir cwd(dir.path());
  auto backend = pylon::open_backend("");
  expect_backend_uses_file(*backend, dir.file("sessions.db"));
}

TEST(OpenBackend, SynchronousDefaultsToFull) {
  ConnectionSpy::install();
  TempDir dir;
  const std::string path = dir.file("default.db");
  auto backend = pylon::open_backend(sqlite_url(path));
  EXPECT_EQ(settings_of_library_connection(path).synchronous, 2) << "2 is FULL";
}

TEST(OpenBackend, SynchronousFullQueryParameter) {
  ConnectionSpy::install();
  TempDir dir;
  const std::string path = dir.file("full.db");
  auto backend = pylon::open_backend(sqlite_url(path, "synchronous=full"));
  EXPECT_EQ(settings_of_library_connection(path).synchronous, 2) << "2 is FULL";
  expect_backend_uses_file(*backend, path);
}

TEST(OpenBackend, SynchronousNormalQueryParameter) {
  ConnectionSpy::install();
  TempDir dir;
  const std::string path = dir.file("normal.db");
  auto backend = pylon::open_backend(sqlite_url(path, "synchronous=normal"));
  EXPECT_EQ(settings_of_library_connection(path).synchronous, 1) << "1 is NORMAL";
  expect_backend_uses_file(*backend, path);
}

TEST(OpenBackend, BusyTimeoutQueryParameter) {
  ConnectionSpy::install();
  TempDir dir;
  const std::string path = dir.file("busy.db");
  auto backend = pylon::open_backend(sqlite_url(path, "busy_timeout=1234"));
  EXPECT_EQ(settings_of_library_connection(path).busy_timeout_ms, 1234);
}

TEST(OpenBackend, BusyTimeoutDefaultsToFiveSeconds) {
  ConnectionSpy::install();
  TempDir dir;
  const std::string path = dir.file("busy-default.db");
  auto backend = pylon::open_backend(sqlite_url(path));
  EXPECT_EQ(settings_of_library_connection(path).busy_timeout_ms, 5000);
}

TEST(OpenBackend, BothQueryParametersTogether) {
  ConnectionSpy::install();
  TempDir dir;
  const std::string path = dir.file("both.db");
  auto backend = pylon::open_backend(sqlite_url(path, "synchronous=normal&busy_timeout=50"));
  const ConnectionSettings settings = settings_of_library_connection(path);
  EXPECT_EQ(settings.synchronous, 1);
  EXPECT_EQ(settings.busy_timeout_ms, 50);
}

TEST(OpenBackend, RelativeUrlTakesQueryParameters) {
  ConnectionSpy::install();
  TempDir dir;
  ScopedCurrentDir cwd(dir.path());
  auto backend = pylon::open_backend("sqlite://rel.db?synchronous=normal");
  EXPECT_EQ(settings_of_library_connection(dir.file("rel.db")).synchronous, 1);
  backend.reset();  // closing the last connection removes -wal and -shm
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"rel.db"}))
      << "the query string is not part of the file name";
}

TEST(OpenBackend, UnknownQueryParameterIsInvalidArgumentAndCreatesNothing) {
  TempDir dir;
  ScopedCurrentDir cwd(dir.path());
  EXPECT_PYLON_ERROR_WITH(pylon::open_backend("sqlite://x.db?cache_size=10"),
                          ErrorCode::kInvalidArgument, "cache_size");
  EXPECT_PYLON_ERROR(pylon::open_backend(sqlite_url(dir.file("y.db"), "journal_mode=delete")),
                     ErrorCode::kInvalidArgument);
  EXPECT_TRUE(list_dir(dir.path()).empty()) << "a refused URL must not create a file";
}

TEST(OpenBackend, BadQueryParameterValuesAreInvalidArgument) {
  TempDir dir;
  ScopedCurrentDir cwd(dir.path());
  EXPECT_PYLON_ERROR(pylon::open_backend("sqlite://x.db?synchronous=off"),
                     ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(pylon::open_backend("sqlite://x.db?synchronous="),
                     ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(pylon::open_backend("sqlite://x.db?busy_timeout=abc"),
                     ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(pylon::open_backend("sqlite://x.db?busy_timeout=-5"),
                     ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(pylon::open_backend("sqlite://x.db?busy_timeout=10ms"),
                     ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(pylon::open_backend("sqlite://x.db?busy_timeout=99999999999999999999999"),
                     ErrorCode::kInvalidArgument);
  EXPECT_TRUE(list_dir(dir.path()).empty()) << "a refused URL must not create a file";
}

TEST(OpenBackend, UnknownSchemeListsSupportedSchemesWithoutThePassword) {
  const auto error =
      pylon::test::capture_pylon_error([] { pylon::open_backend("mysql://u:secret@h/db"); });
  ASSERT_TRUE(error.has_value()) << "mysql:// must be refused";
  EXPECT_EQ(error->code(), ErrorCode::kUnsupportedScheme) << error->what();
  EXPECT_THAT(error->what(), HasSubstr("sqlite://"));
  EXPECT_THAT(error->what(), HasSubstr("postgres://"));
  EXPECT_THAT(error->what(), Not(HasSubstr("secret")));
  EXPECT_THAT(error->backend_detail(), Not(HasSubstr("secret")));
}

TEST(OpenBackend, OtherUnknownSchemesAreUnsupported) {
  TempDir dir;
  ScopedCurrentDir cwd(dir.path());
  EXPECT_PYLON_ERROR(pylon::open_backend("redis://localhost:6379/0"),
                     ErrorCode::kUnsupportedScheme);
  EXPECT_PYLON_ERROR(pylon::open_backend("http://example.com/sessions"),
                     ErrorCode::kUnsupportedScheme);
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(OpenBackend, UnreachablePostgresNamesTheServerButNeverThePassword) {
  // Port 1 on loopback: nothing listens there, so libpq's connection is refused at once.
  for (const std::string url :
       {"postgres://user:hunter2@127.0.0.1:1/sessions_db",
        "postgresql://user:hunter2@127.0.0.1:1/sessions_db?sslmode=disable"}) {
    const auto error = pylon::test::capture_pylon_error([&] { pylon::open_backend(url); });
    ASSERT_TRUE(error.has_value()) << url << " has no server behind it";
    EXPECT_EQ(error->code(), ErrorCode::kConnectionLost) << error->what();
    EXPECT_THAT(error->what(), Not(HasSubstr("hunter2")));
    EXPECT_THAT(error->backend_detail(), Not(HasSubstr("hunter2")));
    EXPECT_THAT(error->what(), HasSubstr("127.0.0.1"));
    EXPECT_THAT(error->what(), HasSubstr("sessions_db"));
  }
}

// ------------------------------------------------------------------------------------------------
// Only the documented forms
// ------------------------------------------------------------------------------------------------

TEST(OpenBackend, UndocumentedFormsAreRefusedWithTheListOfFormsAndCreateNothing) {
  TempDir dir;
  ScopedCurrentDir cwd(dir.path());
  const std::string root_file = "/pylon-url-test-" + std::to_string(::getpid()) + ".db";
  const std::vector<std::string> refused = {
      "file:sessions.db",
      "file:data.db?mode=rwc",
      "FILE:///tmp/x.db",
      "sqlite:" + root_file,  // one slash: not sqlite:///
      "sqlite:relative.db",
      "sqlite:",
      "SQLITE:relative.db",
      "c:relative.db",
      "sessions.db:backup",
      "postgres:app",
      "postgresql:/app",
      "redis://localhost:6379/0",
      ":memory:",
      "sqlite://:memory:",
  };
  for (const std::string& url : refused) {
    const auto error = pylon::test::capture_pylon_error([&] { pylon::open_backend(url); });
    ASSERT_TRUE(error.has_value()) << url << " must be refused";
    EXPECT_TRUE(error->code() == ErrorCode::kInvalidArgument ||
                error->code() == ErrorCode::kUnsupportedScheme)
        << error->what();
    if (url.find("memory") == std::string::npos) {
      EXPECT_THAT(error->what(), HasSubstr("sqlite:///absolute/path.db")) << url;
      EXPECT_THAT(error->what(), HasSubstr("a bare file path")) << url;
    } else {
      EXPECT_THAT(error->what(), HasSubstr("sqlite::memory:")) << url;
    }
  }
  EXPECT_TRUE(list_dir(dir.path()).empty()) << "a refused URL must not create a file";
  EXPECT_FALSE(file_exists(root_file));
  EXPECT_FALSE(file_exists("/sessions.db"));
}

TEST(OpenBackend, UnknownSchemesSayHowToNameAFileWithAColon) {
  EXPECT_PYLON_ERROR_WITH(pylon::open_backend("file:data.db"), ErrorCode::kUnsupportedScheme,
                          "sqlite://./name:");
}

// A path whose first part holds a ':' is given as ./name:... or sqlite://./name:..., and is
// then that file, literally: never an SQLite URI (Debian's SQLite reads "file:..." as one).
TEST(OpenBackend, APathWithAColonIsTakenLiterallyWhenWrittenAsDocumented) {
  for (const std::string& url :
       {std::string("./file:data.db"), std::string("sqlite://./file:data.db"),
        std::string("sqlite://file:data.db")}) {
    TempDir dir;
    ScopedCurrentDir cwd(dir.path());
    {
      auto backend = pylon::open_backend(url);
      expect_backend_uses_file(*backend, dir.file("file:data.db"));
    }
    EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"file:data.db"})) << url;
  }
}

TEST(OpenBackend, ABarePathIsTakenLiterally) {
  TempDir dir;
  ScopedCurrentDir cwd(dir.path());
  {
    auto backend = pylon::open_backend("odd?name=1&x#y.db");
    expect_backend_uses_file(*backend, dir.file("odd?name=1&x#y.db"));
  }
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"odd?name=1&x#y.db"}));
}

TEST(OpenBackend, AnSqliteUrlWhosePathReadsAsUserAndPasswordIsRefused) {
  TempDir dir;
  ScopedCurrentDir cwd(dir.path());
  const auto error = pylon::test::capture_pylon_error(
      [] { pylon::open_backend("sqlite://app:Hunter22secret@db/sessions.db"); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(error->what(), Not(HasSubstr("Hunt")));
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

// ------------------------------------------------------------------------------------------------
// PostgreSQL URLs that readers split differently
// ------------------------------------------------------------------------------------------------

// Whether `text` holds four bytes in a row of `secret` (all of it, if it is shorter).
bool holds_fragment_of(const std::string& text, const std::string& secret) {
  const std::size_t width = std::min<std::size_t>(secret.size(), 4);
  for (std::size_t start = 0; width > 0 && start + width <= secret.size(); ++start) {
    if (text.find(secret.substr(start, width)) != std::string::npos) return true;
  }
  return false;
}

struct AmbiguousUrl {
  std::string url;
  std::vector<std::string> passwords;  // what some reading takes for the password
  std::string advice;                  // what the message must tell to do
};

// The three shapes an outside review found leaking (a '"' with a bad %-escape; an unencoded
// '@'; an unencoded '/'), and others built the same way. Port 1: were one to reach libpq, it
// would fail at once.
std::vector<AmbiguousUrl> ambiguous_urls() {
  return {
      {"postgresql://app:Tr0ub4dor\"&3%horse@127.0.0.1:1/app", {"Tr0ub4dor\"&3%horse"}, "%25"},
      {"postgresql://app:hunter2@work!@127.0.0.1:1/app", {"hunter2@work!", "hunter2"}, "%40"},
      {"postgresql://app:Zm9vYmFy/YmF6cXV4@127.0.0.1:1/app", {"Zm9vYmFy/YmF6cXV4"}, "%2F"},
      {"postgres://app:Zm9vYmFy/YmF6cXV4==@127.0.0.1:1/app", {"Zm9vYmFy/YmF6cXV4=="}, "%2F"},
      {"POSTGRES://app:c0rrect\"horse%zz@db.internal/app", {"c0rrect\"horse%zz"}, "%25"},
      {"postgres://app:pa%ss%\"w0rd@db/app", {"pa%ss%\"w0rd"}, "%25"},
      {"postgres://app:s3cr3t@Qz8@Lm4@db:5432/app", {"s3cr3t@Qz8@Lm4", "s3cr3t"}, "%40"},
      {"postgres://app:qwerty?uiop@db/app", {"qwerty?uiop"}, "%3F"},
      {"postgres://app:qwerty#uiop@db/app", {"qwerty#uiop"}, "%23"},
      {"postgres://app:Kx9/Lm2@db:5432", {"Kx9/Lm2"}, "%2F"},
      {"postgres://u1:Pa55Xk7q@db/app?application_name=a@b",
       {"Pa55Xk7q", "Pa55Xk7q@db/app?application_name=a"},
       "%40"},
      {"postgres://app:Pa55 Xk7q@db/app", {"Pa55 Xk7q"}, "%20"},
      {"postgres://app:Pa55%00Xk7q@db/app", {"Pa55%00Xk7q"}, "%00"},
      {"postgres://db/app?password=Sw0rdf1sh&sslmode", {"Sw0rdf1sh"}, "'='"},
      {"postgres://db/app?password=Sw0rd=f1sh", {"Sw0rd=f1sh"}, "%3D"},
  };
}

TEST(PostgresUrl, AmbiguousUrlsAreRefusedWithAdviceAndNoFragmentOfAnyPassword) {
  for (const AmbiguousUrl& one : ambiguous_urls()) {
    for (const bool direct : {false, true}) {
      const auto error = pylon::test::capture_pylon_error([&] {
        if (direct) {
          pylon::open_postgres_backend(one.url);
        } else {
          pylon::open_backend(one.url);
        }
      });
      ASSERT_TRUE(error.has_value()) << one.url;
      EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument) << error->what();
      EXPECT_THAT(error->what(), HasSubstr(one.advice)) << one.url;
      EXPECT_THAT(error->what(), HasSubstr("not shown")) << one.url;
      for (const std::string& password : one.passwords) {
        EXPECT_FALSE(holds_fragment_of(error->what(), password)) << error->what();
        EXPECT_FALSE(holds_fragment_of(error->backend_detail(), password))
            << error->backend_detail();
        EXPECT_FALSE(holds_fragment_of(pylon::redact_url(one.url), password))
            << pylon::redact_url(one.url);
      }
    }
  }
}

// What is left once the reserved characters are percent-encoded reads alike everywhere: it
// reaches libpq (and nothing listens on port 1), and still no fragment of it is shown.
TEST(PostgresUrl, PercentEncodedPasswordsAreAcceptedAndStayHidden) {
  const std::vector<std::pair<std::string, std::string>> urls = {
      {"postgresql://app:Tr0ub4dor%22%263%25horse@127.0.0.1:1/app", "Tr0ub4dor\"&3%horse"},
      {"postgresql://app:hunter2%40work!@127.0.0.1:1/app", "hunter2@work!"},
      {"postgresql://app:Zm9vYmFy%2FYmF6cXV4@127.0.0.1:1/app", "Zm9vYmFy/YmF6cXV4"},
      {"postgresql://127.0.0.1:1/app?user=app&password=Sw0rd%3Df1sh%26x", "Sw0rd=f1sh&x"},
  };
  for (const auto& one : urls) {
    const std::string& url = one.first;
    const std::string& password = one.second;
    const auto error = pylon::test::capture_pylon_error([&] { pylon::open_backend(url); });
    ASSERT_TRUE(error.has_value()) << url;
    EXPECT_EQ(error->code(), ErrorCode::kConnectionLost) << error->what();
    EXPECT_FALSE(holds_fragment_of(error->what(), password)) << error->what();
    EXPECT_FALSE(holds_fragment_of(error->backend_detail(), password));
    EXPECT_FALSE(holds_fragment_of(pylon::redact_url(url), password));
  }
}

// libpq's own parse errors quote the text they choke on; none of it is repeated.
TEST(PostgresUrl, KeywordValueStringsLibpqCannotParseShowNothingOfThePassword) {
  const std::vector<std::pair<std::string, std::string>> strings = {
      {"host=127.0.0.1 port=1 password='Tr0ub\"4dor&3", "Tr0ub\"4dor&3"},
      {"host=127.0.0.1 port=1 password=Tr0ub4dor\"x bogus\"Tr0ub4dor", "Tr0ub4dor\"x"},
      {"host=127.0.0.1 password = Kx9Lm2Qw \"Kx9Lm2Qw\"=1", "Kx9Lm2Qw"},
  };
  for (const auto& one : strings) {
    const std::string& text = one.first;
    const std::string& password = one.second;
    const auto error =
        pylon::test::capture_pylon_error([&] { pylon::open_postgres_backend(text); });
    ASSERT_TRUE(error.has_value()) << text;
    EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument) << error->what();
    EXPECT_FALSE(holds_fragment_of(error->what(), password)) << error->what();
    EXPECT_FALSE(holds_fragment_of(error->backend_detail(), password));
  }
}

TEST(PostgresUrl, OtherSchemesAreNotPostgresUrls) {
  EXPECT_PYLON_ERROR(pylon::open_postgres_backend("sqlite:///tmp/x.db"),
                     ErrorCode::kUnsupportedScheme);
  EXPECT_PYLON_ERROR(pylon::open_postgres_backend("mysql://u:p@h/db"),
                     ErrorCode::kUnsupportedScheme);
}

// ------------------------------------------------------------------------------------------------
// redact_url
// ------------------------------------------------------------------------------------------------

TEST(RedactUrl, HidesThePassword) {
  EXPECT_EQ(pylon::redact_url("postgres://app:secret@db/sessions"),
            "postgres://app:***@db/sessions");
  EXPECT_EQ(pylon::redact_url("postgresql://u:p4ss@h:5432/db?sslmode=require"),
            "postgresql://u:***@h:5432/db?sslmode=require");
  EXPECT_EQ(pylon::redact_url("mysql://u:secret@h/db"), "mysql://u:***@h/db");
}

TEST(RedactUrl, HidesAPercentEncodedPassword) {
  const std::string redacted = pylon::redact_url("postgres://app:p%40ss%3Aword@db/sessions");
  EXPECT_EQ(redacted, "postgres://app:***@db/sessions");
}

TEST(RedactUrl, HidesAPasswordGivenAsAQueryParameter) {
  // libpq accepts password=... in the query string of a URI.
  const std::string redacted = pylon::redact_url("postgres://db/sessions?user=app&password=secret");
  EXPECT_THAT(redacted, Not(HasSubstr("secret")));
  EXPECT_THAT(redacted, HasSubstr("postgres://db/sessions"));
}

// Found by fuzz/url_fuzz: libpq ends the user info at the first '@' before a '/', so '?' and '#'
// may be part of a password (or a user name) there.
TEST(RedactUrl, HidesAPasswordHoldingAQuestionMarkOrAHash) {
  EXPECT_EQ(pylon::redact_url("postgres://app:pa?ss@db/sessions"),
            "postgres://app:***@db/sessions");
  EXPECT_EQ(pylon::redact_url("postgres://app:pa#word@db/sessions"),
            "postgres://app:***@db/sessions");
  EXPECT_THAT(pylon::redact_url("postgres://a?pp:s3cr3t-pw@db/sessions"),
              Not(HasSubstr("s3cr3t-pw")));
  EXPECT_THAT(pylon::redact_url("postgres://db/s?password=ab#cd"), Not(HasSubstr("cd")));
}

// Found by fuzz/url_fuzz: a "password=" inside a value already hidden once made the rest of the
// URL, later passwords included, appear in clear.
TEST(RedactUrl, HidesEveryPasswordParameterEvenNestedOnes) {
  const std::string redacted =
      pylon::redact_url("postgres://db/sessions?password=a?password=b&password=hunter22");
  EXPECT_THAT(redacted, Not(HasSubstr("hunter22")));
  EXPECT_THAT(redacted, HasSubstr("postgres://db/sessions?password=***"));
}

TEST(RedactUrl, HidesAKeywordValuePasswordUpToWhitespaceOrItsClosingQuote) {
  EXPECT_EQ(pylon::redact_url("host=db user=app password=&secret1 port=5432"),
            "host=db user=app password=*** port=5432");
  EXPECT_EQ(pylon::redact_url("host=db password='it\\'s a secret' user=app"),
            "host=db password=*** user=app");
}

// Found by fuzz/url_fuzz: a keyword/value "password=" after whitespace in a string that also holds
// a "://" ended at the first '&', as a query parameter would, and showed the rest of its value.
TEST(RedactUrl, HidesAKeywordValuePasswordEvenWhereTheStringLooksLikeAUri) {
  EXPECT_EQ(pylon::redact_url("x://db user=app password=&secret1 port=5432"),
            "x://db user=app password=*** port=5432");
  EXPECT_EQ(pylon::redact_url("postgres://db/s?sslmode=require password=a&hunter22 user=x"),
            "postgres://db/s?sslmode=require password=*** user=x");
}

// Found by fuzz/url_fuzz: in a string without "://", a "?password=" value ended at the first
// whitespace byte, hiding a later "&password=" along with it and showing that one's value.
TEST(RedactUrl, HidesEveryQueryPasswordEvenWithoutAScheme) {
  const std::string redacted = pylon::redact_url("db?password=ab\fcd&password=\fhunter22");
  EXPECT_THAT(redacted, Not(HasSubstr("hunter22")));
  EXPECT_THAT(redacted, Not(HasSubstr("cd")));
}

// Found by fuzz/url_fuzz: a keyword/value "password=" whose name lay inside a query password
// already hidden (up to its '&') had the rest of its own value, read up to whitespace, shown.
TEST(RedactUrl, HidesAPasswordThatStartsInsideAnotherOnesValue) {
  const std::string redacted =
      pylon::redact_url("sqlite:///tmp/s.db?password=ab user=app password=&hunter22 port=1");
  EXPECT_THAT(redacted, Not(HasSubstr("hunter22")));
  EXPECT_THAT(redacted, HasSubstr(" port=1"));
}

// Found by fuzz/url_fuzz: a quoted value that closes inside a later word ("'a b password='")
// hid up to its quote and showed the rest of that word, which a reader splitting at whitespace
// takes for another password.
TEST(RedactUrl, HidesAQuotedValueUpToItsQuoteAndTheWordItEndsIn) {
  EXPECT_EQ(pylon::redact_url("password='a b password='hunter22' port=1"), "password=*** port=1");
  EXPECT_EQ(pylon::redact_url("host=db password='it is' user=app"),
            "host=db password=*** user=app");
}

// Found by fuzz/url_fuzz: a keyword/value "password=" inside the user info of a "postgres://"
// text was hidden with the user info, up to its '@', and the rest of its value was shown.
TEST(RedactUrl, HidesAKeywordPasswordThatRunsPastTheUserInfo) {
  const std::string redacted =
      pylon::redact_url("postgres://app:pw1 password=db?x@h/gres://app:hunter22@db more");
  EXPECT_THAT(redacted, Not(HasSubstr("hunter22")));
  EXPECT_THAT(redacted, Not(HasSubstr("pw1")));
  EXPECT_EQ(redacted, "postgres://app:*** more");
}

// Every reading: the last '@' of all (an unencoded '/' before it), libpq's keyword/value parse
// (white space around '=', a value escaped past a space, a name right after a closing quote).
TEST(RedactUrl, HidesWhatAnyReadingTakesForThePassword) {
  EXPECT_EQ(pylon::redact_url("postgresql://app:Zm9vYmFy/YmF6cXV4@127.0.0.1:5432/app"),
            "postgresql://app:***@127.0.0.1:5432/app");
  EXPECT_EQ(pylon::redact_url("postgresql://app:hunter2@work!@127.0.0.1:5432/app"),
            "postgresql://app:***@127.0.0.1:5432/app");
  EXPECT_EQ(pylon::redact_url("host=db password = hunter22 user=x"),
            "host=db password = *** user=x");
  EXPECT_EQ(pylon::redact_url("host=db password=ab\\ hunter22 user=x"),
            "host=db password=*** user=x");
  EXPECT_EQ(pylon::redact_url("host='db'password=hunter22 user=x"), "host='db'password=*** user=x");
}

TEST(RedactUrl, LeavesUrlsWithoutPasswordAlone) {
  EXPECT_EQ(pylon::redact_url("postgres://app@db/sessions"), "postgres://app@db/sessions");
  EXPECT_EQ(pylon::redact_url("postgres://db/sessions"), "postgres://db/sessions");
  EXPECT_EQ(pylon::redact_url("sqlite:///var/lib/app/sessions.db"),
            "sqlite:///var/lib/app/sessions.db");
  EXPECT_EQ(pylon::redact_url("sqlite://sessions.db?synchronous=normal"),
            "sqlite://sessions.db?synchronous=normal");
  EXPECT_EQ(pylon::redact_url("sessions.db"), "sessions.db");
  EXPECT_EQ(pylon::redact_url("sqlite::memory:"), "sqlite::memory:");
  EXPECT_EQ(pylon::redact_url(""), "");
}

// Found by fuzz/url_fuzz: the SQLite URL parser named an unknown parameter whose name lay inside
// a quoted keyword/value password, which the redacted URL hides.
TEST(RedactUrl, AnUnknownParameterInsideAPasswordIsNotNamed) {
  const auto error = pylon::test::capture_pylon_error(
      [] { (void)pylon::open_backend("sqlite://s.db password='ab?hunter22=x'"); });
  ASSERT_TRUE(error.has_value());
  EXPECT_THAT(error->what(), Not(HasSubstr("hunter22")));
  EXPECT_THAT(error->what(), HasSubstr("SQLite URL parameter"));
}

// Restores DATABASE_URL as it was when the test started.
class DatabaseUrlEnv : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* value = ::getenv("DATABASE_URL")) saved_ = value;
  }
  void TearDown() override {
    if (saved_) {
      ::setenv("DATABASE_URL", saved_->c_str(), 1);
    } else {
      ::unsetenv("DATABASE_URL");
    }
  }

 private:
  std::optional<std::string> saved_;
};

TEST_F(DatabaseUrlEnv, ReadsTheVariable) {
  ASSERT_EQ(::setenv("DATABASE_URL", "sqlite:///srv/app/sessions.db", 1), 0);
  EXPECT_EQ(pylon::database_url_from_env(), "sqlite:///srv/app/sessions.db");
}

TEST_F(DatabaseUrlEnv, IsEmptyWhenUnset) {
  ASSERT_EQ(::unsetenv("DATABASE_URL"), 0);
  EXPECT_EQ(pylon::database_url_from_env(), "");
}

}  // namespace

namespace {

// The deadline has a range, refused past either end before any connection is tried (the URL
// names a port nothing listens on: a connection attempt would fail differently).
TEST(PostgresOptionsValidation, TheDeadlineIsRangeChecked) {
  const std::string url = "postgres://app:Pa55w0rd-x@127.0.0.1:1/app";
  for (const std::chrono::milliseconds deadline :
       {std::chrono::milliseconds(0), std::chrono::milliseconds(-5),
        std::chrono::milliseconds(3600001), std::chrono::milliseconds::max()}) {
    pylon::PostgresOptions options;
    options.deadline = deadline;
    const auto error =
        pylon::test::capture_pylon_error([&] { pylon::open_postgres_backend(url, options); });
    ASSERT_TRUE(error.has_value()) << deadline.count();
    EXPECT_EQ(error->code(), pylon::ErrorCode::kInvalidArgument) << error->what();
    EXPECT_THAT(error->what(), ::testing::HasSubstr("PostgresOptions::deadline"));
    EXPECT_THAT(error->what(), ::testing::Not(::testing::HasSubstr("Pa55w0rd")));
  }
}

}  // namespace
