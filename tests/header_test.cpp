// Reserved header names and header-safe values.

#include <catch2/catch.hpp>

#include "header.hpp"

TEST_CASE("every spelling of the module's headers is reserved")
{
    for (const char *name : {"X-Mtls-Identity", "x-mtls-identity",
                             "X_Mtls_Identity", "X-MTLS-IDENTITY-GROUPS",
                             "x_mtls-identity_key", "X-Mtls-IdentityX",
                             "X.Mtls.Identity", "X Mtls Identity",
                             "X[Mtls]Identity"})
    {
        INFO(name);
        CHECK(mtls::is_reserved_header(name, {}));
    }
}


TEST_CASE("other headers are not reserved by default")
{
    CHECK_FALSE(mtls::is_reserved_header("X-Mtls", {}));
    CHECK_FALSE(mtls::is_reserved_header("X-Mtls-Ident", {}));
    CHECK_FALSE(mtls::is_reserved_header("Host", {}));
}


TEST_CASE("strip patterns match exact names and prefixes")
{
    std::vector<std::string> patterns = {"remote-user", "x-ssl-client-*"};

    CHECK(mtls::is_reserved_header("Remote-User", patterns));
    CHECK(mtls::is_reserved_header("REMOTE_USER", patterns));
    CHECK_FALSE(mtls::is_reserved_header("Remote-User-X", patterns));
    CHECK(mtls::is_reserved_header("X-SSL-Client-S-DN", patterns));
    CHECK(mtls::is_reserved_header("x_ssl_client_verify", patterns));
    CHECK_FALSE(mtls::is_reserved_header("X-SSL-Clien", patterns));
}


TEST_CASE("a strip pattern keeps its trailing * when normalised")
{
    CHECK(mtls::normalize_pattern("X-SSL-Client-*") == "x-ssl-client-*");
    CHECK(mtls::normalize_pattern("Remote_User") == "remote-user");
    CHECK(mtls::is_reserved_header("X-SSL-Client-S-DN",
                                   {mtls::normalize_pattern("X-SSL-*")}));
}


TEST_CASE("a strip pattern must be a header name or a prefix and *")
{
    CHECK(mtls::check_strip_pattern("X-Client-Verify") == "");
    CHECK(mtls::check_strip_pattern("X-SSL-*") == "");
    CHECK(mtls::check_strip_pattern("") != "");
    CHECK(mtls::check_strip_pattern("*") != "");
    CHECK(mtls::check_strip_pattern("X-*-Y") != "");
    CHECK(mtls::check_strip_pattern("X Y") != "");
    CHECK(mtls::check_strip_pattern("X:Y") != "");
}


TEST_CASE("percent-encoding leaves printable names alone")
{
    CHECK(mtls::percent_encode("svc-alpha") == "svc-alpha");
    CHECK(mtls::percent_encode("a.b@c_d+e") == "a.b@c_d+e");
}


TEST_CASE("percent-encoding hides spaces a parser would trim")
{
    CHECK(mtls::percent_encode(" admin ") == "%20admin%20");
    CHECK(mtls::percent_encode("ops team") == "ops%20team");
}


TEST_CASE("percent-encoding hides separators, quotes and control bytes")
{
    CHECK(mtls::percent_encode("ops,admin") == "ops%2Cadmin");
    CHECK(mtls::percent_encode("a\"b\\c%d") == "a%22b%5Cc%25d");
    CHECK(mtls::percent_encode("x\r\ny") == "x%0D%0Ay");
    CHECK(mtls::percent_encode(std::string("n\0l", 3)) == "n%00l");
    CHECK(mtls::percent_encode("\x7f") == "%7F");
    CHECK(mtls::percent_encode("\xc3\xa7") == "%C3%A7");
}


TEST_CASE("groups join with commas, a comma inside a group encoded")
{
    std::size_t omitted = 9;

    CHECK(mtls::join_groups({"api", "ops,admin"}, 100, omitted)
          == "api,ops%2Cadmin");
    CHECK(omitted == 0);
}


TEST_CASE("groups past the size cap are left out whole, never cut")
{
    std::size_t omitted = 0;
    std::vector<std::string> groups(100, "group-name");

    std::string value = mtls::join_groups(groups, 54, omitted);

    CHECK(value.size() <= 54);
    CHECK(value == "group-name,group-name,group-name,group-name,group-name");
    CHECK(omitted == 95);
}
