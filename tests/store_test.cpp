// Statement parameters and the reading of results, on results built
// with libpq's own constructors.

#include <catch2/catch.hpp>

#include <cstring>

#include "fixture.hpp"
#include "pg.hpp"
#include "store.hpp"

namespace {

using row_t = std::vector<const char *>;

// a result with the lookup's seven text columns
mtls::pg::result make_result(const std::vector<row_t> &rows,
                             int columns = 7)
{
    mtls::pg::result res(PQmakeEmptyPGresult(nullptr, PGRES_TUPLES_OK));
    REQUIRE(res);

    std::vector<PGresAttDesc> attrs(static_cast<std::size_t>(columns));
    std::vector<std::string> names;

    for (int i = 0; i < columns; i++) {
        names.push_back("c" + std::to_string(i));
    }

    for (int i = 0; i < columns; i++) {
        attrs[i] = PGresAttDesc{};
        attrs[i].name = const_cast<char *>(names[i].c_str());
        attrs[i].typid = 25;  // text
        attrs[i].typlen = -1;
        attrs[i].atttypmod = -1;
    }

    REQUIRE(PQsetResultAttrs(res.get(), columns, attrs.data()) == 1);

    for (std::size_t r = 0; r < rows.size(); r++) {
        for (int c = 0; c < columns; c++) {
            const char *v = rows[r][static_cast<std::size_t>(c)];

            REQUIRE(PQsetvalue(res.get(), static_cast<int>(r), c,
                               const_cast<char *>(v),
                               v ? static_cast<int>(std::strlen(v)) : -1)
                    == 1);
        }
    }

    return res;
}

const row_t version_row = {"v", nullptr, nullptr, nullptr, nullptr,
                           nullptr, "12"};

}  // namespace


TEST_CASE("lookup parameters carry the certificate's canonical keys")
{
    mtls::cert_identity id = mtls::derive_identity(
        fixture::certificate("alpha").get());
    auto params = mtls::store::lookup_params(id);

    REQUIRE(params.size() == 6);
    CHECK(*params[0] == id.fingerprint);
    CHECK(*params[1] == "CN=Test Issuing CA A,O=Example Test");
    CHECK(*params[2] == id.issuer_key_id);
    CHECK(*params[3] == "1001");
    CHECK(*params[4] == "{\"fingerprint\",\"spki\",\"subject\","
                        "\"issuer_serial\",\"san_uri\",\"san_email\","
                        "\"san_dns\"}");
    CHECK(params[5]->find("\"CN=svc-alpha,OU=Services,O=Example Test\"")
          != std::string::npos);
}


TEST_CASE("a certificate with two URI SANs offers no URI key")
{
    mtls::cert_identity id = mtls::derive_identity(
        fixture::certificate("many-sans").get());
    auto params = mtls::store::lookup_params(id);

    CHECK(params[4]->find("san_uri") == std::string::npos);
}


TEST_CASE("a certificate without an authority key id sends NULL for it")
{
    mtls::cert_identity id;
    id.fingerprint = std::string(64, 'a');
    id.issuer = "CN=x";
    id.serial = "1";

    CHECK_FALSE(mtls::store::lookup_params(id)[2]);
}


TEST_CASE("a lookup result is read row by row")
{
    auto res = make_result({
        version_row,
        {"fingerprint", "alice", "617069,6f7073", "true", nullptr,
         "1900000000", nullptr},
        {"subject", "alice", "", "false", "1700000000", nullptr, nullptr},
    });
    std::string error;

    auto facts = mtls::store::read_lookup(res.get(), error);

    REQUIRE(facts);
    CHECK(error.empty());
    CHECK(facts->version == 12);
    CHECK_FALSE(facts->revoked);
    REQUIRE(facts->grants.size() == 2);
    CHECK(facts->grants[0].kind == mtls::key_kind::fingerprint);
    CHECK(facts->grants[0].groups == std::vector<std::string>{"api", "ops"});
    CHECK(facts->grants[0].enabled);
    CHECK(facts->grants[0].valid_from == mtls::open_start);
    CHECK(facts->grants[0].valid_until == 1900000000);
    CHECK(facts->grants[1].groups.empty());
    CHECK_FALSE(facts->grants[1].enabled);
    CHECK(facts->grants[1].valid_from == 1700000000);
}


TEST_CASE("a group name with a comma comes back whole")
{
    // hex of "ops,admin"
    auto res = make_result({
        version_row,
        {"fingerprint", "gamma", "6f70732c61646d696e", "true", nullptr,
         nullptr, nullptr},
    });
    std::string error;

    auto facts = mtls::store::read_lookup(res.get(), error);

    REQUIRE(facts);
    CHECK(facts->grants[0].groups == std::vector<std::string>{"ops,admin"});
}


TEST_CASE("a revocation row marks the lookup revoked")
{
    auto res = make_result({
        version_row,
        {"r", nullptr, nullptr, nullptr, nullptr, nullptr, nullptr},
    });
    std::string error;

    auto facts = mtls::store::read_lookup(res.get(), error);

    REQUIRE(facts);
    CHECK(facts->revoked);
}


TEST_CASE("a username with a control byte marks the row unusable")
{
    auto res = make_result({
        version_row,
        {"fingerprint", "svc\r\nX: y", "", "true", nullptr, nullptr,
         nullptr},
    });
    std::string error;

    auto facts = mtls::store::read_lookup(res.get(), error);

    REQUIRE(facts);
    CHECK(facts->grants[0].unusable);
}


TEST_CASE("a result of another shape is an error, not an empty lookup")
{
    std::string error;

    auto wrong_columns = make_result({}, 3);
    CHECK_FALSE(mtls::store::read_lookup(wrong_columns.get(), error));
    CHECK_FALSE(error.empty());

    auto no_version = make_result({});
    CHECK_FALSE(mtls::store::read_lookup(no_version.get(), error));

    auto bad_kind = make_result({version_row,
                                 {"cn", "x", "", "true", nullptr, nullptr,
                                  nullptr}});
    CHECK_FALSE(mtls::store::read_lookup(bad_kind.get(), error));

    auto bad_hex = make_result({version_row,
                                {"spki", "x", "zz", "true", nullptr,
                                 nullptr, nullptr}});
    CHECK_FALSE(mtls::store::read_lookup(bad_hex.get(), error));

    auto bad_bool = make_result({version_row,
                                 {"spki", "x", "", "t", nullptr, nullptr,
                                  nullptr}});
    CHECK_FALSE(mtls::store::read_lookup(bad_bool.get(), error));
}


TEST_CASE("the state row gives the change version and the epoch")
{
    auto res = make_result({{"42", "3f1c"}}, 2);

    auto st = mtls::store::read_version(res.get());

    REQUIRE(st);
    CHECK(st->version == 42);
    CHECK(st->epoch == "3f1c");
}


TEST_CASE("a lookup carries the epoch it was read in")
{
    row_t v = {"v", "3f1c", nullptr, nullptr, nullptr, nullptr, "7"};
    auto res = make_result({v});
    std::string error;

    auto facts = mtls::store::read_lookup(res.get(), error);

    REQUIRE(facts);
    CHECK(facts->epoch == "3f1c");
}


TEST_CASE("an empty group name is kept apart, not an error")
{
    auto res = make_result({
        version_row,
        {"spki", "x", "617069,,6f7073", "true", nullptr, nullptr, nullptr},
    });
    std::string error;

    auto facts = mtls::store::read_lookup(res.get(), error);

    REQUIRE(facts);
    CHECK(facts->grants[0].groups
          == std::vector<std::string>{"api", "", "ops"});
}


TEST_CASE("a change log is read into changes")
{
    auto res = make_result({{"7", "28dc20d92f650a6c"}, {"8", "*"}}, 2);

    auto changes = mtls::store::read_changes(res.get());

    REQUIRE(changes);
    REQUIRE(changes->size() == 2);
    CHECK((*changes)[0].version == 7);
    CHECK((*changes)[1].everything);
}
