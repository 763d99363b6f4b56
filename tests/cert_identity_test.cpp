// The identity core against fixture certificates whose expected values
// come from the openssl command line.

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "cert_identity.hpp"
#include "fixture.hpp"

namespace {

mtls::cert_identity identity_of(const std::string &name)
{
    return mtls::derive_identity(fixture::certificate(name).get());
}


// a copy of a fixture, changed by `edit` and signed again by CA A
template <typename Edit>
mtls::ossl::x509 reissued(const std::string &name, Edit edit)
{
    mtls::ossl::x509 cert(X509_dup(fixture::certificate(name).get()));
    REQUIRE(cert);

    edit(cert.get());

    mtls::ossl::pkey key = fixture::ca_key();
    REQUIRE(X509_sign(cert.get(), key.get(), EVP_sha256()) > 0);
    return cert;
}


void set_serial(X509 *cert, long serial)
{
    REQUIRE(ASN1_INTEGER_set(X509_get_serialNumber(cert), serial) == 1);
}


// adds an extension whose value is the given raw DER
void add_raw_extension(X509 *cert, int nid, const std::string &der)
{
    ASN1_OCTET_STRING *value = ASN1_OCTET_STRING_new();
    REQUIRE(value != nullptr);
    REQUIRE(ASN1_OCTET_STRING_set(
                value, reinterpret_cast<const unsigned char *>(der.data()),
                static_cast<int>(der.size())) == 1);

    mtls::ossl::x509_extension ext(
        X509_EXTENSION_create_by_NID(nullptr, nid, 0, value));
    ASN1_OCTET_STRING_free(value);
    REQUIRE(ext);
    REQUIRE(X509_add_ext(cert, ext.get(), -1) == 1);
}

}  // namespace


TEST_CASE("every fixture yields the keys the openssl command line prints")
{
    std::vector<std::string> names = fixture::names();
    REQUIRE(names.size() >= 12);

    for (const std::string &name : names) {
        INFO("fixture " << name);
        fixture::expected want = fixture::expectations(name);
        mtls::cert_identity id = identity_of(name);

        CHECK(id.fingerprint == want.one("fingerprint"));

        if (want.refused()) {
            CHECK_FALSE(id.ok());
            continue;
        }

        CHECK(id.ok());
        CHECK(id.error == "");
        CHECK(id.spki == want.one("spki"));
        CHECK(id.subject == want.one("subject"));
        CHECK(id.issuer == want.one("issuer"));
        CHECK(id.serial == want.one("serial"));
        CHECK(id.issuer_key_id == want.one("issuer_key_id"));
        CHECK(std::to_string(id.not_before) == want.one("not_before"));
        CHECK(std::to_string(id.not_after) == want.one("not_after"));
        CHECK(id.san_uri == want.all("san_uri"));
        CHECK(id.san_email == want.all("san_email"));
        CHECK(id.san_dns == want.all("san_dns"));
    }
}


TEST_CASE("the fingerprint is SHA-256 over the DER in lowercase hex")
{
    std::string der = fixture::der("alpha");
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;

    REQUIRE(EVP_Digest(der.data(), der.size(), md, &len, EVP_sha256(),
                       nullptr) == 1);

    mtls::cert_identity id = identity_of("alpha");

    CHECK(id.fingerprint == mtls::hex(md, len));
    CHECK(id.fingerprint.size() == 64);
    CHECK(id.fingerprint.find_first_not_of("0123456789abcdef")
          == std::string::npos);
}


TEST_CASE("the SPKI hash survives a re-issue with the same key")
{
    mtls::ossl::x509 again = reissued("alpha", [](X509 *cert) {
        set_serial(cert, 0x2001);
    });

    mtls::cert_identity first = identity_of("alpha");
    mtls::cert_identity second = mtls::derive_identity(again.get());

    CHECK(second.spki == first.spki);
    CHECK(second.fingerprint != first.fingerprint);
    CHECK(second.serial == "2001");
}


TEST_CASE("a different key gives a different SPKI hash")
{
    CHECK(identity_of("alpha").spki != identity_of("alpha-b").spki);
    CHECK(identity_of("rsa").spki.size() == 64);
}


TEST_CASE("subject and issuer are rendered by the same rules")
{
    mtls::cert_identity leaf = identity_of("alpha");
    mtls::cert_identity ca = mtls::derive_identity(
        fixture::certificate("ca-a").get());

    CHECK(leaf.issuer == ca.subject);
    CHECK(leaf.issuer == "CN=Test Issuing CA A,O=Example Test");
}


TEST_CASE("names are rendered most specific RDN first, comma separated")
{
    CHECK(identity_of("alpha").subject
          == "CN=svc-alpha,OU=Services,O=Example Test");
}


TEST_CASE("UTF-8 values stay UTF-8, not \\XX escapes")
{
    CHECK(identity_of("utf8").subject
          == "CN=svc-\xc3\xa7\xc3\xa9-\xc3\xbc,O=Example Test");
}


TEST_CASE("T61String bytes are read as Latin-1 and rendered as UTF-8")
{
    CHECK(identity_of("t61").subject
          == "CN=svc-\xc3\xbf\xc3\xbe-latin,O=Example Test");
}


TEST_CASE("RFC 4514 special characters in a value are escaped")
{
    CHECK(identity_of("specials").subject
          == "CN=\\#lead\\,comma\\+plus\\\"quote\\\\back\\<lt\\>gt\\;semi=eq,"
             "O=Example Test");
}


TEST_CASE("leading and trailing spaces in a value are escaped")
{
    CHECK(identity_of("spaces").subject
          == "CN=\\ lead and trail\\ ,O=Example Test");
}


TEST_CASE("a slash inside a value is data, not a separator")
{
    CHECK(identity_of("slash").subject
          == "CN=svc-beta/CN=svc-alpha,O=Example Test");
}


TEST_CASE("an escaped comma inside a value never starts a new RDN")
{
    CHECK(identity_of("comma-rdn").subject
          == "CN=svc-zeta\\,CN=svc-alpha,O=Example Test");
}


TEST_CASE("an attribute value that looks like a DN stays in its attribute")
{
    mtls::cert_identity id = identity_of("ou-lookalike");

    CHECK(id.subject == "CN=svc-zeta,OU=CN=svc-alpha,O=Example Test");
    CHECK(id.subject != identity_of("alpha").subject);
}


TEST_CASE("a longer name is a different name, not a match by prefix")
{
    CHECK(identity_of("prefix").subject
          == "CN=svc-alpha-evil,OU=Services,O=Example Test");
}


TEST_CASE("the values of a multi-valued RDN are joined with +")
{
    CHECK(identity_of("multi-rdn").subject
          == "UID=multi-42+CN=svc-multi,OU=Services,O=Example Test");
}


TEST_CASE("an e-mail attribute in the DN keeps its RFC 2253 name")
{
    CHECK(identity_of("email-dn").subject
          == "emailAddress=mail@example.test,CN=svc-mail,O=Example Test");
}


TEST_CASE("control bytes in a name are escaped, never passed raw")
{
    mtls::cert_identity id = identity_of("crlf");

    CHECK(id.subject
          == "CN=svc-delta\\0D\\0AX-Mtls-Identity: svc-admin,O=Example Test");
    CHECK(id.subject.find('\r') == std::string::npos);
    CHECK(id.subject.find('\n') == std::string::npos);
}


TEST_CASE("an empty subject renders empty while the SANs still identify")
{
    mtls::cert_identity id = identity_of("san-only");

    CHECK(id.ok());
    CHECK(id.subject.empty());
    CHECK(id.san_uri
          == std::vector<std::string>{
              "spiffe://example.test/ns/prod/sa/san-only"});
    CHECK(id.san_dns
          == std::vector<std::string>{"san-only.example.test"});
}


TEST_CASE("the serial drops the DER sign byte")
{
    CHECK(identity_of("serial-highbit").serial == "80a1");
}


TEST_CASE("the serial drops leading zero digits")
{
    CHECK(identity_of("serial-leadzero").serial == "a1");
}


TEST_CASE("a negative serial keeps an explicit sign")
{
    std::string serial = identity_of("serial-negative").serial;

    CHECK(serial == "-1001");
    CHECK(serial != identity_of("alpha").serial);
}


TEST_CASE("a zero serial renders as a single 0")
{
    CHECK(identity_of("serial-zero").serial == "0");
}


TEST_CASE("an over-long serial is rendered in full")
{
    CHECK(identity_of("serial-21-octets").serial
          == "7f0102030405060708090a0b0c0d0e0f1011121314");
}


TEST_CASE("serials that share digits stay distinct")
{
    CHECK(identity_of("serial-10").serial == "10");
    CHECK(identity_of("serial-100100").serial == "100100");
    CHECK(identity_of("alpha").serial == "1001");
}


TEST_CASE("SANs are kept by type, in certificate order")
{
    mtls::cert_identity id = identity_of("alpha");

    CHECK(id.san_uri
          == std::vector<std::string>{
              "spiffe://example.test/ns/prod/sa/alpha"});
    CHECK(id.san_email == std::vector<std::string>{"alpha@example.test"});
    CHECK(id.san_dns == std::vector<std::string>{"alpha.svc.example.test"});
}


TEST_CASE("many SANs are all kept, commas and backslashes included")
{
    mtls::cert_identity id = identity_of("many-sans");

    CHECK(id.san_dns.size() == 60);
    CHECK(id.san_email.size() == 2);
    REQUIRE(id.san_uri.size() == 3);
    CHECK(id.san_uri[1] == "https://example.test/a,b");
    CHECK(id.san_uri[2] == "https://example.test/back\\slash");
}


TEST_CASE("a SAN with an embedded NUL refuses the identity, never truncates")
{
    mtls::cert_identity id = identity_of("nul-san");

    CHECK_FALSE(id.ok());
    CHECK(id.fingerprint == fixture::expectations("nul-san")
                                .one("fingerprint"));
    CHECK(id.san_dns.empty());
    CHECK(id.san_uri.empty());
    CHECK(id.subject.empty());
    CHECK(id.serial.empty());
}


TEST_CASE("a SAN byte above 0x7f refuses the identity")
{
    mtls::cert_identity id = identity_of("high-byte-san");

    CHECK_FALSE(id.ok());
    CHECK(id.san_dns.empty());
}


TEST_CASE("two subjectAltName extensions refuse the identity")
{
    mtls::ossl::x509 cert = reissued("alpha", [](X509 *c) {
        // SEQUENCE { [2] "x.example.test" }
        add_raw_extension(c, NID_subject_alt_name,
                          std::string("\x30\x10\x82\x0e", 4)
                              + "x.example.test");
    });

    mtls::cert_identity id = mtls::derive_identity(cert.get());

    CHECK_FALSE(id.ok());
    CHECK(id.san_dns.empty());
    CHECK(id.fingerprint.size() == 64);
}


TEST_CASE("an undecodable subjectAltName refuses the identity")
{
    mtls::ossl::x509 cert = reissued("rsa", [](X509 *c) {
        add_raw_extension(c, NID_subject_alt_name,
                          std::string("\x30\x05\x82\x07", 4) + "x");
    });

    mtls::cert_identity id = mtls::derive_identity(cert.get());

    CHECK_FALSE(id.ok());
    CHECK(id.fingerprint.size() == 64);
}


TEST_CASE("a name that does not convert to valid UTF-8 renders empty")
{
    // a BMPString holding a lone surrogate, U+D800; OpenSSL refuses to
    // parse a certificate with such a name, the renderer refuses it too
    mtls::ossl::x509_name name(X509_NAME_new());
    REQUIRE(name);
    REQUIRE(X509_NAME_add_entry_by_NID(
                name.get(), NID_commonName, V_ASN1_BMPSTRING,
                reinterpret_cast<const unsigned char *>("\xd8\x00"), 2,
                -1, 0) == 1);

    CHECK(mtls::render_name(name.get()) == "");
}


TEST_CASE("validity is read as seconds since the epoch")
{
    fixture::expected want = fixture::expectations("alpha");
    mtls::cert_identity id = identity_of("alpha");

    CHECK(id.not_before == std::stoll(want.one("not_before")));
    CHECK(id.not_after == std::stoll(want.one("not_after")));
    CHECK(id.not_before < id.not_after);
}


TEST_CASE("the issuer key identifier is the leaf's authority key id")
{
    mtls::ossl::x509 ca = fixture::certificate("ca-a");
    const ASN1_OCTET_STRING *skid = X509_get0_subject_key_id(ca.get());
    REQUIRE(skid != nullptr);

    std::string want = mtls::hex(ASN1_STRING_get0_data(skid),
                                 static_cast<std::size_t>(
                                     ASN1_STRING_length(skid)));

    CHECK(identity_of("alpha").issuer_key_id == want);
    CHECK(identity_of("alpha-b").issuer_key_id != want);
}


TEST_CASE("an embedded NUL in a name value is escaped, never cut short")
{
    mtls::ossl::x509_name name(X509_NAME_new());
    REQUIRE(name);
    REQUIRE(X509_NAME_add_entry_by_txt(
                name.get(), "CN", MBSTRING_ASC,
                reinterpret_cast<const unsigned char *>("svc\0-alpha"), 10,
                -1, 0) == 1);

    CHECK(mtls::render_name(name.get()) == "CN=svc\\00-alpha");
}


TEST_CASE("malformed DER yields an error, never a crash")
{
    std::string der = fixture::der("alpha");

    std::vector<std::string> inputs = {
        "",
        std::string("\x30", 1),
        der.substr(0, der.size() / 2),
        der + std::string("\x00", 1),
        std::string(64, '\xff'),
        "-----BEGIN CERTIFICATE-----",
    };

    for (const std::string &input : inputs) {
        INFO("input of " << input.size() << " bytes");
        mtls::cert_identity id = mtls::derive_identity_der(input);

        CHECK_FALSE(id.ok());
        CHECK(id.fingerprint.empty());
        CHECK(id.subject.empty());
    }

    CHECK(mtls::derive_identity_der(der).ok());
}


TEST_CASE("no certificate yields an error, not an identity")
{
    mtls::cert_identity id = mtls::derive_identity(nullptr);

    CHECK_FALSE(id.ok());
    CHECK(id.fingerprint.empty());
}


TEST_CASE("joined values escape a comma or backslash inside a value")
{
    CHECK(mtls::join_values({"a,b", "c\\d", "e"}) == "a\\,b,c\\\\d,e");
}


TEST_CASE("joining one value or none adds no separator")
{
    CHECK(mtls::join_values({"only"}) == "only");
    CHECK(mtls::join_values({}) == "");
}
