// Connection parameters and statement values; the connection itself is
// exercised against a real PostgreSQL by the tests in t/.

#include <catch2/catch.hpp>

#include "pg.hpp"

TEST_CASE("a conninfo string is parsed into its parameters")
{
    mtls::pg::conninfo info;

    REQUIRE(info.parse("host=/run/postgresql dbname=app user=nginx") == "");
    REQUIRE(info.get("dbname"));
    CHECK(*info.get("dbname") == "app");
    CHECK_FALSE(info.get("password"));
}


TEST_CASE("a URI conninfo is parsed too")
{
    mtls::pg::conninfo info;

    REQUIRE(info.parse("postgresql://nginx@127.0.0.1:5433/app") == "");
    CHECK(*info.get("port") == "5433");
    CHECK(*info.get("host") == "127.0.0.1");
}


TEST_CASE("an unknown keyword is refused, naming the keyword")
{
    mtls::pg::conninfo info;
    std::string error = info.parse("hots=db dbname=app");

    CHECK(error.find("hots") != std::string::npos);
}


TEST_CASE("a parse error never repeats a password")
{
    mtls::pg::conninfo info;

    std::string e1 = info.parse("dbname=app password='s3cret");
    CHECK_FALSE(e1.empty());
    CHECK(e1.find("s3cret") == std::string::npos);

    std::string e2 = info.parse("dbname=app s3cret");
    CHECK_FALSE(e2.empty());
    CHECK(e2.find("s3cret") == std::string::npos);
}


TEST_CASE("a parse error never repeats a password with quotes in it")
{
    mtls::pg::conninfo info;
    const char *bad[] = {
        "postgresql://app:pw\"TopSecret%zz@127.0.0.1/app",
        "postgresql://app:ab\"TopSecret@[::1/app",
        "postgresql://app@127.0.0.1/app?password=ab\"TopSecret%zz",
        "postgresql://app:a\"b\"TopSecret%zz@127.0.0.1/app",
        "dbname=app pass\"word TopSecret",
    };

    for (const char *text : bad) {
        std::string e = info.parse(text);

        INFO(text);
        CHECK_FALSE(e.empty());
        CHECK(e.find("TopSecret") == std::string::npos);
    }
}


TEST_CASE("a parse error still names the option or separator at fault")
{
    mtls::pg::conninfo info;

    CHECK(info.parse("dbname=app passwrd=x").find("\"passwrd\"")
          != std::string::npos);
    CHECK(info.parse("dbname=app s3cret").find("\"=\"")
          != std::string::npos);
}


TEST_CASE("values libpq would refuse only when connecting are refused")
{
    mtls::pg::conninfo info;

    CHECK(info.parse("dbname=d sslmode=bogus").find("sslmode")
          != std::string::npos);
    CHECK(info.parse("dbname=d port=abc").find("port") != std::string::npos);
    CHECK(info.parse("dbname=d port=70000") != "");
    CHECK(info.parse("dbname=d gssencmode=maybe") != "");
    CHECK(info.parse("host=a,b port=5432,5433 sslmode=verify-full") == "");
}


TEST_CASE("the summary for the log leaves the password out")
{
    mtls::pg::conninfo info;

    REQUIRE(info.parse("host=127.0.0.1 user=u password=s3cret dbname=d")
            == "");
    CHECK(info.summary() == "host=127.0.0.1 dbname=d user=u");
}


TEST_CASE("a service name is refused: its file is read while connecting")
{
    mtls::pg::conninfo info;

    CHECK(info.parse("service=mtls") != "");
}


TEST_CASE("host names are resolved to hostaddr once, ahead of time")
{
    mtls::pg::conninfo info;

    REQUIRE(info.parse("host=localhost,/run/postgresql dbname=d") == "");
    REQUIRE(info.resolve() == "");
    REQUIRE(info.get("hostaddr"));

    std::string addr = *info.get("hostaddr");
    CHECK((addr == "127.0.0.1," || addr == "::1,"));
    CHECK(*info.get("host") == "localhost,/run/postgresql");
}


TEST_CASE("a socket directory needs no resolving")
{
    mtls::pg::conninfo info;

    REQUIRE(info.parse("host=/run/postgresql") == "");
    REQUIRE(info.resolve() == "");
    CHECK_FALSE(info.get("hostaddr"));
}


TEST_CASE("a name that does not resolve is an error at configuration")
{
    mtls::pg::conninfo info;

    REQUIRE(info.parse("host=no-such-host.invalid") == "");
    CHECK(info.resolve().find("no-such-host.invalid") != std::string::npos);
}


TEST_CASE("keywords and values are handed to libpq null-terminated")
{
    mtls::pg::conninfo info;

    REQUIRE(info.parse("dbname=d") == "");
    info.set("application_name", "nginx");

    std::size_t n = 0;
    while (info.keywords()[n] != nullptr) {
        CHECK(info.values()[n] != nullptr);
        n++;
    }

    CHECK(n == 2);
    CHECK(info.values()[n] == nullptr);
}


TEST_CASE("a text array literal quotes and escapes every element")
{
    CHECK(mtls::pg::text_array({}) == "{}");
    CHECK(mtls::pg::text_array({"a", "b,c"}) == "{\"a\",\"b,c\"}");
    CHECK(mtls::pg::text_array({"q\"x\\y"}) == "{\"q\\\"x\\\\y\"}");
    CHECK(mtls::pg::text_array({"NULL"}) == "{\"NULL\"}");
}
