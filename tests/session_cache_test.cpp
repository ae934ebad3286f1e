// SessionCache on its own: its cuckoo tables (an insert moves entries to their other buckets, and
// tables grow, so every session must still be found after many inserts and erases), validate()'s
// lookup with its decoys and rotated-away markers, its per-user lists, and the start-up Loader,
// with more sessions than one batch so that its inserting thread runs (under TSan and ASan in
// those builds).
#include "internal/session_cache.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "internal/backend_shared.hpp"
#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::ErrorCode;
using pylon::Session;
using pylon::detail::SessionCache;
using pylon::detail::SessionDigest;

constexpr std::int64_t kNow = 1'000'000;

// A session with a random id, of one of `users` users, carrying bytes that name it.
Session make_session(std::mt19937_64& random, int user) {
  Session session;
  session.id = pylon::session_id_for_token(pylon::generate_token());
  session.user_id = "user-" + std::to_string(user);
  session.created_at = kNow;
  session.last_seen_at = kNow;
  session.absolute_expires_at = kNow + 3600;
  session.expires_at = kNow + 60 + static_cast<std::int64_t>(random() % 3000);
  session.device = "device of " + session.id.substr(0, 8);
  if (user % 3 == 0) session.tenant_id = "tenant-" + std::to_string(user % 7);
  session.data = std::string("\0bytes ", 7) + session.id;
  return session;
}

SessionDigest digest_of(const std::string& id) {
  SessionDigest digest{};
  EXPECT_TRUE(pylon::detail::parse_session_id(id, &digest)) << id;
  return digest;
}

// Puts `count` new sessions of `users` users into the cache; returns them by id.
std::map<std::string, Session> put_sessions(SessionCache* cache, std::mt19937_64& random, int count,
                                            int users) {
  std::map<std::string, Session> by_id;
  for (int i = 0; i < count; ++i) {
    Session session = make_session(random, i % users);
    cache->put(session);
    by_id.emplace(session.id, std::move(session));
  }
  return by_id;
}

// Every session of `expected` is in the cache as it is there, each user's list holds exactly
// that user's sessions, and nothing else is cached.
void expect_cache_holds(const SessionCache& cache, const std::map<std::string, Session>& expected) {
  ASSERT_EQ(cache.size(), expected.size());
  std::map<std::string, std::set<std::string>> by_user;
  for (const auto& [id, session] : expected) {
    by_user[session.user_id].insert(id);
    Session found;
    ASSERT_EQ(cache.find(digest_of(id), kNow, &found), SessionCache::Found::kLive) << id;
    EXPECT_EQ(found, session);
  }
  EXPECT_EQ(cache.users(), by_user.size());
  for (const auto& [user, ids] : by_user) {
    std::set<std::string> listed;
    for (const Session& session : cache.of_user(user)) {
      EXPECT_EQ(session.user_id, user);
      EXPECT_TRUE(listed.insert(session.id).second) << "listed twice: " << session.id;
    }
    EXPECT_EQ(listed, ids) << user;
  }
}

TEST(SessionCache, ErasingHalfOfManySessionsLeavesEveryOtherOneFindable) {
  std::mt19937_64 random(7);  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible
  SessionCache cache;
  std::map<std::string, Session> expected = put_sessions(&cache, random, 20'000, 500);
  std::vector<std::string> ids;
  ids.reserve(expected.size());
  for (const auto& entry : expected) ids.push_back(entry.first);
  std::shuffle(ids.begin(), ids.end(), random);
  for (std::size_t i = 0; i < ids.size() / 2; ++i) {
    ASSERT_TRUE(cache.erase(std::string_view(ids[i])));
    EXPECT_FALSE(cache.erase(std::string_view(ids[i]))) << "erased twice";
    Session gone;
    EXPECT_EQ(cache.find(digest_of(ids[i]), kNow, &gone), SessionCache::Found::kNone);
    expected.erase(ids[i]);
  }
  expect_cache_holds(cache, expected);
}

TEST(SessionCache, PutReplacesASessionAndMovesItToItsNewUser) {
  std::mt19937_64 random(11);  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible
  SessionCache cache;
  std::map<std::string, Session> expected = put_sessions(&cache, random, 50, 5);
  for (auto& [id, session] : expected) {
    session.user_id = session.user_id == "user-0" ? "user-moved" : session.user_id;
    session.data += " updated";
    session.device.reset();
    cache.put(session);
  }
  expect_cache_holds(cache, expected);
  EXPECT_TRUE(cache.of_user("user-0").empty());
}

TEST(SessionCache, EraseExpiredRemovesExactlyTheExpiredOnes) {
  std::mt19937_64 random(13);  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible
  SessionCache cache;
  std::map<std::string, Session> expected = put_sessions(&cache, random, 5'000, 40);
  const std::int64_t at = kNow + 1500;
  std::size_t expired = 0;
  for (auto it = expected.begin(); it != expected.end();) {
    if (it->second.expires_at <= at) {
      ++expired;
      it = expected.erase(it);
    } else {
      ++it;
    }
  }
  ASSERT_GT(expired, 0U);
  EXPECT_EQ(cache.erase_expired(at), expired);
  expect_cache_holds(cache, expected);
}

TEST(SessionCache, FindTokenFindsExactlyTheCachedSessionsAndCopiesThemWhole) {
  std::mt19937_64 random(29);  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible
  SessionCache cache;
  Session nothing_cached;
  EXPECT_EQ(cache.find_token(digest_of(make_session(random, 0).id), kNow, &nothing_cached),
            SessionCache::Found::kNone);
  const std::map<std::string, Session> expected = put_sessions(&cache, random, 20'000, 300);
  std::size_t expired = 0;
  for (const auto& [id, session] : expected) {
    Session found;
    const std::int64_t at = kNow + 1500;
    const SessionCache::Found result = cache.find_token(digest_of(id), at, &found);
    ASSERT_EQ(result,
              session.expires_at > at ? SessionCache::Found::kLive : SessionCache::Found::kExpired)
        << id;
    EXPECT_EQ(found, session);
    if (result == SessionCache::Found::kExpired) ++expired;
  }
  EXPECT_GT(expired, 0U);
  for (int i = 0; i < 20'000; ++i) {
    const Session unknown = make_session(random, 0);
    Session decoy;
    ASSERT_EQ(cache.find_token(digest_of(unknown.id), kNow, &decoy), SessionCache::Found::kNone);
    // The decoy is a cached session (a miss copies one, as a hit does), never the unknown id.
    ASSERT_EQ(expected.count(decoy.id), 1U) << decoy.id;
  }
}

TEST(SessionCache, ARotatedAwayMarkerIsReportedByFindTokenAndIsNoSession) {
  std::mt19937_64 random(31);  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible
  SessionCache cache;
  const std::map<std::string, Session> expected = put_sessions(&cache, random, 2'000, 50);
  std::vector<std::string> rotated;
  for (int i = 0; i < 1'000; ++i) {
    rotated.push_back(make_session(random, 0).id);
    cache.remember_rotated(digest_of(rotated.back()));
  }
  cache.remember_rotated(digest_of(rotated.front()));  // twice: one marker
  for (const std::string& id : rotated) {
    Session out;
    EXPECT_EQ(cache.find_token(digest_of(id), kNow, &out), SessionCache::Found::kRotatedAway);
    EXPECT_EQ(cache.find(digest_of(id), kNow, &out), SessionCache::Found::kNone);
    EXPECT_FALSE(cache.erase(std::string_view(id)));
  }
  EXPECT_EQ(cache.erase_expired(std::numeric_limits<std::int64_t>::max()), expected.size());
  expect_cache_holds(cache, {});
  for (const std::string& id : rotated) {
    ASSERT_TRUE(cache.forget_rotated(digest_of(id))) << "the marker outlived erase_expired";
    EXPECT_FALSE(cache.forget_rotated(digest_of(id)));
    Session out;
    EXPECT_EQ(cache.find_token(digest_of(id), kNow, &out), SessionCache::Found::kNone);
  }
}

TEST(SessionCache, TheLoaderFillsTheCacheAsPutWouldWithARepeatedIdLastWins) {
  std::mt19937_64 random(17);  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible
  SessionCache cache;
  std::map<std::string, Session> expected;
  {
    SessionCache::Loader loader(cache);
    Session repeated = make_session(random, 1);
    loader.add(repeated);
    for (int i = 0; i < 9'000; ++i) {  // several batches: the inserting thread runs
      Session session = make_session(random, i % 2'000);
      loader.add(session);
      expected.emplace(session.id, std::move(session));
    }
    repeated.data = "the later row";
    loader.add(repeated);
    expected[repeated.id] = repeated;
    loader.finish();
  }
  expect_cache_holds(cache, expected);
}

TEST(SessionCache, ALoaderGivenAMalformedIdThrowsFromTheInsertingThread) {
  std::mt19937_64 random(19);  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible
  SessionCache cache;
  SessionCache::Loader loader(cache);
  Session bad = make_session(random, 1);
  bad.id = "not a session id";
  loader.add(bad);
  const auto load_the_rest = [&] {
    for (int i = 0; i < 5'000; ++i) loader.add(make_session(random, i));
    loader.finish();
  };
  EXPECT_PYLON_ERROR(load_the_rest(), ErrorCode::kInternal);
}

TEST(SessionCache, ALoaderAbandonedMidwayStopsItsThreadAndLeaksNothing) {
  std::mt19937_64 random(23);  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible
  SessionCache cache;
  {
    SessionCache::Loader loader(cache);
    for (int i = 0; i < 3'500; ++i) loader.add(make_session(random, i % 10));
  }  // no finish(): what a failed start-up does
  EXPECT_LE(cache.size(), 3'500U);
  cache.put(make_session(random, 1));  // the locks were released
  EXPECT_GE(cache.size(), 1U);
}

}  // namespace
