// The access decision from what the database said.

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "decision.hpp"

namespace {

using mtls::key_kind;
using mtls::reason;

constexpr std::int64_t now = 1800000000;

mtls::grant row(key_kind kind, std::string user,
                std::vector<std::string> groups = {"api"})
{
    mtls::grant g;

    g.kind = kind;
    g.username = std::move(user);
    g.groups = std::move(groups);
    g.enabled = true;
    return g;
}


mtls::decision decide(const mtls::lookup &facts,
                      std::vector<key_kind> order = {key_kind::fingerprint},
                      std::vector<std::string> required = {})
{
    return mtls::decide(facts, order, required, now);
}

}  // namespace


TEST_CASE("a matching enabled row allows with its username and groups")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "alice",
                               {"api", "ops"}));

    mtls::decision d = decide(facts);

    CHECK(d.why == reason::ok);
    CHECK(d.username == "alice");
    CHECK(d.groups == std::vector<std::string>{"api", "ops"});
    REQUIRE(d.kind);
    CHECK(*d.kind == key_kind::fingerprint);
}


TEST_CASE("no matching row is unknown")
{
    mtls::decision d = decide(mtls::lookup{});

    CHECK(d.why == reason::unknown);
    CHECK(d.username.empty());
    CHECK_FALSE(d.kind);
}


TEST_CASE("a revoked certificate is denied whatever its rows say")
{
    mtls::lookup facts;
    facts.revoked = true;
    facts.grants.push_back(row(key_kind::fingerprint, "alice"));

    mtls::decision d = decide(facts);

    CHECK(d.why == reason::revoked);
    CHECK(d.username.empty());
}


TEST_CASE("a disabled row is disabled")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "carol"));
    facts.grants.back().enabled = false;

    CHECK(decide(facts).why == reason::disabled);
}


TEST_CASE("a grant past its window is expired")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "dave"));
    facts.grants.back().valid_until = now;

    CHECK(decide(facts).why == reason::expired);
}


TEST_CASE("a grant not yet valid is expired too")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "dave"));
    facts.grants.back().valid_from = now + 1;

    CHECK(decide(facts).why == reason::expired);
}


TEST_CASE("a grant inside its window allows")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "dave"));
    facts.grants.back().valid_from = now;
    facts.grants.back().valid_until = now + 1;

    CHECK(decide(facts).why == reason::ok);
}


TEST_CASE("the first kind in the location's order with a row decides")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::subject, "by-subject"));
    facts.grants.push_back(row(key_kind::san_uri, "by-uri"));

    mtls::decision d = decide(facts, {key_kind::san_uri, key_kind::subject});
    CHECK(d.username == "by-uri");
    CHECK(*d.kind == key_kind::san_uri);

    d = decide(facts, {key_kind::subject, key_kind::san_uri});
    CHECK(d.username == "by-subject");
}


TEST_CASE("a deciding kind that denies is not overruled by a later kind")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "alice"));
    facts.grants.back().enabled = false;
    facts.grants.push_back(row(key_kind::subject, "alice"));

    mtls::decision d = decide(facts, {key_kind::fingerprint,
                                      key_kind::subject});

    CHECK(d.why == reason::disabled);
}


TEST_CASE("kinds the location does not list are never used")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::subject, "alice"));

    CHECK(decide(facts, {key_kind::fingerprint}).why == reason::unknown);
}


TEST_CASE("rows of one kind naming two users decide unknown, never a guess")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::san_dns, "alpha-dns"));
    facts.grants.push_back(row(key_kind::san_dns, "other"));
    facts.grants.push_back(row(key_kind::fingerprint, "alice"));

    mtls::decision d = decide(facts, {key_kind::san_dns,
                                      key_kind::fingerprint});

    CHECK(d.why == reason::unknown);
    CHECK(d.username.empty());
    CHECK_FALSE(d.detail.empty());
}


TEST_CASE("several rows of one kind for the same user merge their groups")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::san_dns, "alice", {"api"}));
    facts.grants.push_back(row(key_kind::san_dns, "alice", {"ops", "api"}));

    mtls::decision d = decide(facts, {key_kind::san_dns});

    CHECK(d.why == reason::ok);
    CHECK(d.groups == std::vector<std::string>{"api", "ops"});
}


TEST_CASE("an inactive row of the same user adds no groups")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::san_dns, "alice", {"api"}));
    facts.grants.push_back(row(key_kind::san_dns, "alice", {"admin"}));
    facts.grants.back().enabled = false;

    mtls::decision d = decide(facts, {key_kind::san_dns}, {"admin"});

    CHECK(d.why == reason::group);
}


TEST_CASE("a required group the identity lacks is group")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "alice", {"api"}));

    mtls::decision d = decide(facts, {key_kind::fingerprint}, {"api-b"});

    CHECK(d.why == reason::group);
    CHECK(d.username.empty());
    CHECK(d.groups.empty());
}


TEST_CASE("any one of the required groups is enough")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "alice", {"ops"}));

    CHECK(decide(facts, {key_kind::fingerprint}, {"api", "ops"}).why
          == reason::ok);
}


TEST_CASE("group names compare exactly, not by prefix or case")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "alice", {"api-b"}));

    CHECK(decide(facts, {key_kind::fingerprint}, {"api"}).why
          == reason::group);
    CHECK(decide(facts, {key_kind::fingerprint}, {"API-B"}).why
          == reason::group);
}


TEST_CASE("a row with an unusable username denies as unknown")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "svc\r\nX-Evil: 1"));
    facts.grants.back().unusable = true;

    mtls::decision d = decide(facts);

    CHECK(d.why == reason::unknown);
    CHECK(d.username.empty());
}


TEST_CASE("usernames with control bytes or no bytes are unusable")
{
    CHECK(mtls::usable_username("alice"));
    CHECK(mtls::usable_username("svc-\xc3\xa7"));
    CHECK_FALSE(mtls::usable_username(""));
    CHECK_FALSE(mtls::usable_username("a\nb"));
    CHECK_FALSE(mtls::usable_username("a\x7f"));
    CHECK_FALSE(mtls::usable_username(std::string(257, 'a')));
}


TEST_CASE("group names follow the schema's rule")
{
    CHECK(mtls::schema_group_name("ops"));
    CHECK(mtls::schema_group_name("team a"));
    CHECK(mtls::schema_group_name(std::string(128, 'g')));
    CHECK(mtls::schema_group_name([] {
        std::string s;
        for (int i = 0; i < 128; i++) {
            s += "\xc3\xa9";
        }
        return s;
    }()));
    CHECK_FALSE(mtls::schema_group_name(""));
    CHECK_FALSE(mtls::schema_group_name(std::string(129, 'g')));
    CHECK_FALSE(mtls::schema_group_name(" ops"));
    CHECK_FALSE(mtls::schema_group_name("ops "));

    for (const char *bad : {"a,b", "a\"b", "a\\b", "a%b", "a\tb", "a\x7f"}) {
        INFO(bad);
        CHECK_FALSE(mtls::schema_group_name(bad));
    }

    CHECK_FALSE(mtls::schema_group_name(std::string("a\0b", 3)));
}


TEST_CASE("key kinds and reasons have their schema names")
{
    CHECK(mtls::name_of(key_kind::issuer_serial) == "issuer_serial");
    CHECK(mtls::key_kind_named("san_uri") == key_kind::san_uri);
    CHECK_FALSE(mtls::key_kind_named("SAN_URI"));
    CHECK_FALSE(mtls::key_kind_named("cn"));
    CHECK(mtls::name_of(reason::db_unavailable) == "db_unavailable");
}


TEST_CASE("a lookup survives encoding for the cache unchanged")
{
    mtls::lookup facts;
    facts.version = 42;
    facts.grants.push_back(row(key_kind::subject, "alice", {"a", "b,c"}));
    facts.grants.back().valid_from = -5;
    facts.grants.push_back(row(key_kind::san_dns, "bob", {}));
    facts.grants.back().enabled = false;
    facts.grants.back().unusable = true;

    std::optional<mtls::lookup> back = mtls::decode(mtls::encode(facts));

    REQUIRE(back);
    CHECK(back->version == 42);
    CHECK_FALSE(back->revoked);
    REQUIRE(back->grants.size() == 2);
    CHECK(back->grants[0].username == "alice");
    CHECK(back->grants[0].groups == std::vector<std::string>{"a", "b,c"});
    CHECK(back->grants[0].valid_from == -5);
    CHECK(back->grants[0].valid_until == mtls::open_end);
    CHECK(back->grants[1].kind == key_kind::san_dns);
    CHECK_FALSE(back->grants[1].enabled);
    CHECK(back->grants[1].unusable);
}


TEST_CASE("damaged cache bytes decode to nothing, never a crash")
{
    mtls::lookup facts;
    facts.grants.push_back(row(key_kind::fingerprint, "alice"));
    std::string bytes = mtls::encode(facts);

    for (std::size_t n = 0; n < bytes.size(); n++) {
        CHECK_FALSE(mtls::decode(bytes.substr(0, n)));
    }

    CHECK_FALSE(mtls::decode(bytes + "x"));
    CHECK_FALSE(mtls::decode(std::string(64, '\xff')));
}
