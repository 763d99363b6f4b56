// Change notifications and key tokens.

#include <catch2/catch.hpp>

#include "cert_identity.hpp"
#include "change.hpp"
#include "fixture.hpp"

TEST_CASE("a key token agrees with the schema's md5 of kind:value")
{
    // SELECT mtls_identity.key_token('fingerprint', 'd830...cb27')
    CHECK(mtls::token_of("fingerprint",
                         "d830a803f1e6376faab9967de049ffdeb16497e930726fd8"
                         "d8e05f7b41b3cb27")
          == 0x28dc20d92f650a6cULL);
}


TEST_CASE("a certificate's tokens cover each key, the serial included")
{
    mtls::cert_identity id = mtls::derive_identity(
        fixture::certificate("alpha").get());
    std::vector<mtls::key_token> tokens = mtls::tokens_of(id);

    CHECK(tokens.size() == 7);
    CHECK(std::count(tokens.begin(), tokens.end(),
                     mtls::token_of("serial", "1001")) == 1);
    CHECK(std::count(tokens.begin(), tokens.end(),
                     mtls::token_of("san_dns", "alpha.svc.example.test"))
          == 1);
}


TEST_CASE("a notification names its version and tokens")
{
    auto c = mtls::parse_change("17 28dc20d92f650a6c fa236b033072ee5c");

    REQUIRE(c);
    CHECK(c->version == 17);
    CHECK_FALSE(c->everything);
    CHECK(c->tokens == std::vector<mtls::key_token>{0x28dc20d92f650a6cULL,
                                                    0xfa236b033072ee5cULL});
}


TEST_CASE("a notification of * names everything")
{
    auto c = mtls::parse_change("5 *");

    REQUIRE(c);
    CHECK(c->everything);
}


TEST_CASE("a malformed notification is refused")
{
    for (const char *bad : {"", "17", "x 28dc20d92f650a6c", "17 ",
                            "17 28dc20d92f650a6", "-1 *",
                            "17 28dc20d92f650a6cz", "17 zzdc20d92f650a6c"})
    {
        INFO("payload '" << bad << "'");
        CHECK_FALSE(mtls::parse_change(bad));
    }
}
