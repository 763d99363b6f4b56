// The trust checks against CAs and CRLs made here with OpenSSL and
// written to a temporary directory: P-256 keys, a root with an
// intermediate under it, an unrelated second root, CRLs with chosen dates.

#include <catch2/catch.hpp>

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "ossl.hpp"
#include "trust_check.hpp"

namespace {

using mtls::ossl::asn1_time;
using mtls::ossl::x509_crl;

using level = mtls::finding::level;
using source = mtls::finding::source;

constexpr std::int64_t now = 1800000000;  // 2027-01-15T08:00:00Z
constexpr std::int64_t hour = 60 * 60;
constexpr std::int64_t day = 24 * hour;

constexpr const char *ca_usage = "critical,keyCertSign,cRLSign";


struct ca {
    mtls::ossl::pkey key;
    mtls::ossl::x509 cert;
};


mtls::ossl::pkey new_key()
{
    mtls::ossl::pkey key(EVP_EC_gen("P-256"));
    REQUIRE(key);
    return key;
}


void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;

    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);

    mtls::ossl::x509_extension ext(
        X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
    REQUIRE(ext);
    REQUIRE(X509_add_ext(cert, ext.get(), -1) == 1);
}


// A CA certificate named CN=`cn` for `key`, signed by `issuer` or, when
// there is none, by itself.
mtls::ossl::x509 ca_cert(const std::string &cn, EVP_PKEY *key,
                         const ca *issuer, const char *usage = ca_usage)
{
    static long serial = 1;
    mtls::ossl::x509 cert(X509_new());
    REQUIRE(cert);

    mtls::ossl::x509_name name(X509_NAME_new());
    REQUIRE(name);
    REQUIRE(X509_NAME_add_entry_by_txt(
                name.get(), "CN", MBSTRING_UTF8,
                reinterpret_cast<const unsigned char *>(cn.c_str()), -1,
                -1, 0) == 1);

    X509 *signer = issuer != nullptr ? issuer->cert.get() : cert.get();
    EVP_PKEY *signing_key = issuer != nullptr ? issuer->key.get() : key;

    REQUIRE(X509_set_version(cert.get(), 2) == 1);
    REQUIRE(ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++)
            == 1);
    REQUIRE(X509_set_subject_name(cert.get(), name.get()) == 1);
    REQUIRE(X509_set_issuer_name(
                cert.get(), issuer != nullptr
                                ? X509_get_subject_name(signer)
                                : name.get()) == 1);
    REQUIRE(ASN1_TIME_set(X509_getm_notBefore(cert.get()), now - 30 * day)
            != nullptr);
    REQUIRE(ASN1_TIME_set(X509_getm_notAfter(cert.get()), now + 365 * day)
            != nullptr);
    REQUIRE(X509_set_pubkey(cert.get(), key) == 1);

    add_ext(cert.get(), signer, NID_basic_constraints, "critical,CA:true");
    add_ext(cert.get(), signer, NID_key_usage, usage);
    add_ext(cert.get(), signer, NID_subject_key_identifier, "hash");
    add_ext(cert.get(), signer, NID_authority_key_identifier, "keyid");

    REQUIRE(X509_sign(cert.get(), signing_key, EVP_sha256()) > 0);
    return cert;
}


ca new_ca(const std::string &cn, const ca *issuer = nullptr,
          const char *usage = ca_usage)
{
    ca out;

    out.key = new_key();
    out.cert = ca_cert(cn, out.key.get(), issuer, usage);
    return out;
}


// A CRL in the name of `issuer`, signed with `key`; no nextUpdate when
// `next` is 0.
x509_crl crl_of(X509 *issuer, EVP_PKEY *key, std::int64_t last,
                std::int64_t next)
{
    x509_crl crl(X509_CRL_new());
    REQUIRE(crl);

    asn1_time last_update(ASN1_TIME_set(nullptr, last));
    REQUIRE(last_update);

    REQUIRE(X509_CRL_set_version(crl.get(), 1) == 1);
    REQUIRE(X509_CRL_set_issuer_name(crl.get(),
                                     X509_get_subject_name(issuer)) == 1);
    REQUIRE(X509_CRL_set1_lastUpdate(crl.get(), last_update.get()) == 1);

    if (next != 0) {
        asn1_time next_update(ASN1_TIME_set(nullptr, next));
        REQUIRE(next_update);
        REQUIRE(X509_CRL_set1_nextUpdate(crl.get(), next_update.get())
                == 1);
    }

    REQUIRE(X509_CRL_sign(crl.get(), key, EVP_sha256()) > 0);
    return crl;
}


// a CRL the CA signed, valid from a day ago for a week
x509_crl crl_of(const ca &by, std::int64_t last = now - day,
                std::int64_t next = now + 7 * day)
{
    return crl_of(by.cert.get(), by.key.get(), last, next);
}


// A directory of its own under the system's temporary one, removed with
// everything in it when the test ends.
class temp_dir {
public:
    temp_dir()
    {
        // mkdtemp() replaces the six trailing X
        std::string pattern =
            (std::filesystem::temp_directory_path() / "mtls-trust-")
                .string()
            + std::string(6, 'X');

        REQUIRE(mkdtemp(pattern.data()) != nullptr);
        path_ = pattern;
    }

    ~temp_dir()
    {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }

    temp_dir(const temp_dir &) = delete;
    temp_dir &operator=(const temp_dir &) = delete;

    std::string path(const std::string &name) const
    {
        return (path_ / name).string();
    }

    // writes the certificates, then the CRLs, as PEM; returns the path
    std::string write(const std::string &name,
                      const std::vector<X509 *> &certs,
                      const std::vector<X509_CRL *> &crls = {}) const
    {
        std::string file = path(name);
        mtls::ossl::bio bio(BIO_new_file(file.c_str(), "w"));
        REQUIRE(bio);

        for (X509 *cert : certs) {
            REQUIRE(PEM_write_bio_X509(bio.get(), cert) == 1);
        }

        for (X509_CRL *crl : crls) {
            REQUIRE(PEM_write_bio_X509_CRL(bio.get(), crl) == 1);
        }

        return file;
    }

    std::string write_text(const std::string &name,
                           const std::string &text) const
    {
        std::string file = path(name);
        mtls::ossl::bio bio(BIO_new_file(file.c_str(), "w"));
        REQUIRE(bio);
        REQUIRE(BIO_write(bio.get(), text.data(),
                          static_cast<int>(text.size()))
                == static_cast<int>(text.size()));
        return file;
    }

private:
    std::filesystem::path path_;
};


// Root A with Int A under it, and an unrelated Root B: the usual shape
// of a trust file for client certificates.
struct pki {
    ca root_a = new_ca("Root A");
    ca int_a = new_ca("Int A", &root_a);
    ca root_b = new_ca("Root B");

    std::vector<X509 *> cas() const
    {
        return {root_a.cert.get(), int_a.cert.get(), root_b.cert.get()};
    }
};


// the input for a trust file and a CRL file with these contents
mtls::trust_input input(const temp_dir &dir,
                        const std::vector<X509 *> &cas,
                        const std::vector<X509_CRL *> &crls)
{
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", cas);
    in.crl_file = dir.write("crl.pem", {}, crls);
    in.now = now;
    return in;
}


std::string all(const std::vector<mtls::finding> &findings)
{
    std::string out;

    for (const mtls::finding &f : findings) {
        out += (f.severity == level::error ? "error: " : "warning: ")
               + f.message + "\n";
    }

    return out;
}

}  // namespace


TEST_CASE("CAs that each have a current crl pass without findings")
{
    temp_dir dir;
    pki p;
    x509_crl a = crl_of(p.root_a);
    x509_crl i = crl_of(p.int_a);
    x509_crl b = crl_of(p.root_b);

    auto found = mtls::check_trust(
        input(dir, p.cas(), {a.get(), i.get(), b.get()}));

    INFO(all(found));
    CHECK(found.empty());
}


TEST_CASE("a CA without a crl is an error naming it")
{
    temp_dir dir;
    pki p;
    x509_crl a = crl_of(p.root_a);
    x509_crl b = crl_of(p.root_b);

    auto found = mtls::check_trust(input(dir, p.cas(), {a.get(), b.get()}));

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].directive == source::crl);
    CHECK(found[0].message
          == "no crl of CA \"CN=Int A\"; nginx refuses every client"
             " certificate under it: add the crl that CA issues");
}


TEST_CASE("a self-signed root needs a crl of its own")
{
    // OpenSSL checks the intermediate against the root's CRL and the
    // root against it too, so a root that issues only CAs needs one
    temp_dir dir;
    pki p;
    x509_crl i = crl_of(p.int_a);
    x509_crl b = crl_of(p.root_b);

    auto found = mtls::check_trust(input(dir, p.cas(), {i.get(), b.get()}));

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].message.find("no crl of CA \"CN=Root A\";") == 0);
}


TEST_CASE("a crl past its nextUpdate is an error with the expiry date")
{
    temp_dir dir;
    pki p;
    x509_crl a = crl_of(p.root_a, now - 8 * day, now - 2 * hour);
    x509_crl i = crl_of(p.int_a);
    x509_crl b = crl_of(p.root_b);

    auto found = mtls::check_trust(
        input(dir, p.cas(), {a.get(), i.get(), b.get()}));

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].directive == source::crl);
    CHECK(found[0].message
          == "crl of CA \"CN=Root A\" expired at 2027-01-15T06:00:00Z;"
             " nginx refuses every client certificate under it:"
             " renew the crl");
}


TEST_CASE("a crl at its nextUpdate to the second has expired")
{
    temp_dir dir;
    ca root = new_ca("Root");
    x509_crl c = crl_of(root, now - day, now);

    auto found = mtls::check_trust(input(dir, {root.cert.get()}, {c.get()}));

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].message.find(" expired at ") != std::string::npos);
}


TEST_CASE("a current crl next to an expired one of the same CA is used")
{
    temp_dir dir;
    ca root = new_ca("Root");
    x509_crl old = crl_of(root, now - 9 * day, now - 2 * day);
    x509_crl fresh = crl_of(root);

    auto found = mtls::check_trust(
        input(dir, {root.cert.get()}, {old.get(), fresh.get()}));

    INFO(all(found));
    CHECK(found.empty());
}


TEST_CASE("a crl due within a day is a warning")
{
    temp_dir dir;
    pki p;
    x509_crl a = crl_of(p.root_a);
    x509_crl i = crl_of(p.int_a, now - 6 * day, now + 23 * hour);
    x509_crl b = crl_of(p.root_b);

    auto found = mtls::check_trust(
        input(dir, p.cas(), {a.get(), i.get(), b.get()}));

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::warning);
    CHECK(found[0].directive == source::crl);
    CHECK(found[0].message
          == "crl of CA \"CN=Int A\" expires at 2027-01-16T07:00:00Z,"
             " within a day: renew it before then, or nginx refuses every"
             " client certificate under it");
}


TEST_CASE("a crl due in more than a day passes")
{
    temp_dir dir;
    ca root = new_ca("Root");
    x509_crl c = crl_of(root, now - day, now + day + 1);

    auto found = mtls::check_trust(input(dir, {root.cert.get()}, {c.get()}));

    INFO(all(found));
    CHECK(found.empty());
}


TEST_CASE("a crl without nextUpdate never expires")
{
    temp_dir dir;
    ca root = new_ca("Root");
    x509_crl c = crl_of(root, now - 400 * day, 0);

    auto found = mtls::check_trust(input(dir, {root.cert.get()}, {c.get()}));

    INFO(all(found));
    CHECK(found.empty());
}


TEST_CASE("a crl whose lastUpdate is still ahead is an error")
{
    temp_dir dir;
    ca root = new_ca("Root");
    x509_crl c = crl_of(root, now + hour, now + 7 * day);

    auto found = mtls::check_trust(input(dir, {root.cert.get()}, {c.get()}));

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].message.find("crl of CA \"CN=Root\" is not valid before"
                                " 2027-01-15T09:00:00Z;")
          == 0);
}


TEST_CASE("a crl with the CA's name but another key counts as missing")
{
    temp_dir dir;
    pki p;
    mtls::ossl::pkey impostor = new_key();
    x509_crl a = crl_of(p.root_a);
    x509_crl i = crl_of(p.int_a.cert.get(), impostor.get(), now - day,
                        now + 7 * day);
    x509_crl b = crl_of(p.root_b);

    auto found = mtls::check_trust(
        input(dir, p.cas(), {a.get(), i.get(), b.get()}));

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].message
          == "no crl naming CA \"CN=Int A\" is signed by its key; nginx"
             " refuses every client certificate under it: add the crl"
             " that CA signed");
}


TEST_CASE("a crl from a CA nginx does not trust is a warning")
{
    temp_dir dir;
    ca root = new_ca("Root");
    ca stranger = new_ca("Elsewhere");
    x509_crl c = crl_of(root);
    x509_crl s = crl_of(stranger);

    auto found = mtls::check_trust(
        input(dir, {root.cert.get()}, {c.get(), s.get()}));

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::warning);
    CHECK(found[0].directive == source::crl);
    CHECK(found[0].message
          == "crl of \"CN=Elsewhere\" belongs to no CA nginx trusts, so it"
             " is never used: remove it, or trust its CA");
}


TEST_CASE("a CA whose key usage lacks cRLSign is an error")
{
    temp_dir dir;
    ca root = new_ca("No CRLs", nullptr, "critical,keyCertSign");
    x509_crl c = crl_of(root);

    auto found = mtls::check_trust(input(dir, {root.cert.get()}, {c.get()}));

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].message.find("CA \"CN=No CRLs\" may not sign crls") == 0);
}


TEST_CASE("a crl in the trusted certificate file covers its CA")
{
    temp_dir dir;
    ca root = new_ca("Root");
    x509_crl c = crl_of(root);
    mtls::trust_input in;

    in.trusted_file = dir.write("trusted.pem", {root.cert.get()},
                                {c.get()});
    in.crl_file = dir.write("crl.pem", {}, {crl_of(new_ca("X")).get()});
    in.now = now;

    auto found = mtls::check_trust(in);

    // the CRL of CN=X is unused; CN=Root has its CRL
    REQUIRE(found.size() == 1);
    CHECK(found[0].message.find("crl of \"CN=X\"") == 0);
}


TEST_CASE("crls are not checked without ssl_crl")
{
    temp_dir dir;
    pki p;
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", p.cas());
    in.now = now;

    auto found = mtls::check_trust(in);

    INFO(all(found));
    CHECK(found.empty());
}


TEST_CASE("certificates in the crl file are a warning")
{
    temp_dir dir;
    ca root = new_ca("Root");
    x509_crl c = crl_of(root);
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", {root.cert.get()});
    in.crl_file = dir.write("crl.pem", {root.cert.get()}, {c.get()});
    in.now = now;

    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::warning);
    CHECK(found[0].directive == source::crl);
    CHECK(found[0].message
          == "\"" + in.crl_file + "\" holds certificates, and nginx trusts"
             " them as CAs: keep only crls in it");
}


TEST_CASE("a trust file that cannot be opened is an error")
{
    temp_dir dir;
    mtls::trust_input in;

    in.trust_file = dir.path("absent.pem");
    in.now = now;

    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].directive == source::client_certificate);
    CHECK(found[0].message
          == "cannot open \"" + in.trust_file + "\" (2: No such file or"
             " directory): name a readable pem file");
}


TEST_CASE("a crl file that cannot be opened is an error")
{
    temp_dir dir;
    ca root = new_ca("Root");
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", {root.cert.get()});
    in.crl_file = dir.path("absent.pem");
    in.now = now;

    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].directive == source::crl);
    CHECK(found[0].message.find("cannot open \"") == 0);
}


TEST_CASE("a trust file without a certificate is an error")
{
    temp_dir dir;
    mtls::trust_input in;

    in.trust_file = dir.write_text("trust.pem", "not a certificate\n");
    in.now = now;

    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].message
          == "\"" + in.trust_file + "\" holds no certificate: name the pem"
             " file of the CAs that issue client certificates");
}


TEST_CASE("a trust file with a broken pem block is an error")
{
    temp_dir dir;
    mtls::trust_input in;

    in.trust_file = dir.write_text(
        "trust.pem",
        "-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJ\n"
        "-----END CERTIFICATE-----\n");
    in.now = now;

    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].message.find("holds a pem block that cannot be decoded")
          != std::string::npos);
}


TEST_CASE("a crl file without a crl is an error")
{
    temp_dir dir;
    ca root = new_ca("Root");
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", {root.cert.get()});
    in.crl_file = dir.write_text("crl.pem", "");
    in.now = now;

    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::error);
    CHECK(found[0].directive == source::crl);
    CHECK(found[0].message.find("holds no crl:") != std::string::npos);
}


TEST_CASE("more than 20 CAs in the trust file are a warning")
{
    temp_dir dir;
    std::vector<ca> roots;
    std::vector<X509 *> certs;

    for (int i = 0; i < 21; i++) {
        roots.push_back(new_ca("Root " + std::to_string(i)));
        certs.push_back(roots.back().cert.get());
    }

    mtls::trust_input in;
    in.trust_file = dir.write("trust.pem", certs);

    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::warning);
    CHECK(found[0].directive == source::client_certificate);
    CHECK(found[0].message
          == "\"" + in.trust_file + "\" holds 21 CAs; any certificate they"
             " issue reaches the identity lookup: trust only the CAs that"
             " issue client certificates");
}


TEST_CASE("20 CAs in the trust file pass, duplicates not counted")
{
    temp_dir dir;
    std::vector<ca> roots;
    std::vector<X509 *> certs;

    for (int i = 0; i < 20; i++) {
        roots.push_back(new_ca("Root " + std::to_string(i)));
        certs.push_back(roots.back().cert.get());
    }

    certs.push_back(roots.front().cert.get());

    mtls::trust_input in;
    in.trust_file = dir.write("trust.pem", certs);

    auto found = mtls::check_trust(in);

    INFO(all(found));
    CHECK(found.empty());
}


TEST_CASE("ssl_verify_depth 1 covers an intermediate under a root")
{
    temp_dir dir;
    pki p;
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", p.cas());
    in.verify_depth = 1;

    CHECK(mtls::chain_depth(p.int_a.cert.get(), p.cas()) == 1);
    CHECK(mtls::check_trust(in).empty());
}


TEST_CASE("ssl_verify_depth 0 is short for an intermediate")
{
    temp_dir dir;
    pki p;
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", p.cas());
    in.verify_depth = 0;

    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::warning);
    CHECK(found[0].directive == source::verify_depth);
    CHECK(found[0].message
          == "ssl_verify_depth 0 is shorter than the chain of CA"
             " \"CN=Int A\" (1): use ssl_verify_depth 1");
}


TEST_CASE("two intermediates under a root need ssl_verify_depth 2")
{
    temp_dir dir;
    pki p;
    ca int_b = new_ca("Int B", &p.int_a);
    std::vector<X509 *> cas = p.cas();
    mtls::trust_input in;

    cas.push_back(int_b.cert.get());
    in.trust_file = dir.write("trust.pem", cas);

    CHECK(mtls::chain_depth(int_b.cert.get(), cas) == 2);

    in.verify_depth = 1;
    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::warning);
    CHECK(found[0].message
          == "ssl_verify_depth 1 is shorter than the chain of CA"
             " \"CN=Int B\" (2): use ssl_verify_depth 2");

    in.verify_depth = 2;
    CHECK(mtls::check_trust(in).empty());
}


TEST_CASE("a trust file with only a root passes at any depth")
{
    temp_dir dir;
    ca root = new_ca("Root");
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", {root.cert.get()});
    in.verify_depth = 0;

    CHECK(mtls::chain_depth(root.cert.get(), {}) == 0);
    CHECK(mtls::check_trust(in).empty());
}


TEST_CASE("the same certificate twice does not lengthen the chain")
{
    temp_dir dir;
    pki p;
    std::vector<X509 *> cas = {p.int_a.cert.get(), p.int_a.cert.get(),
                               p.root_a.cert.get(), p.int_a.cert.get(),
                               p.root_a.cert.get()};
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", cas);

    CHECK(mtls::chain_depth(p.int_a.cert.get(), cas) == 1);
    CHECK(mtls::check_trust(in).empty());
}


TEST_CASE("CAs that issued each other end the walk")
{
    // X is signed by Y, and Y by X: neither reaches a root
    ca y_first = new_ca("Y");
    ca x;
    x.key = new_key();
    x.cert = ca_cert("X", x.key.get(), &y_first);
    mtls::ossl::x509 y = ca_cert("Y", y_first.key.get(), &x);

    CHECK(mtls::chain_depth(x.cert.get(), {y.get()}) == -1);
    CHECK(mtls::chain_depth(y.get(), {x.cert.get()}) == -1);
}


TEST_CASE("a loop beside a way to the root does not hide the root")
{
    // X by Y, Y by X, and the same Y key certified by Root too:
    // X -> Y (by Root) -> Root, and Y (by X) -> X -> Y (by Root) -> Root
    temp_dir dir;
    ca root = new_ca("Root");
    ca y_by_root = new_ca("Y", &root);
    ca x = new_ca("X", &y_by_root);
    mtls::ossl::x509 y_by_x = ca_cert("Y", y_by_root.key.get(), &x);
    std::vector<X509 *> cas = {y_by_x.get(), x.cert.get(),
                               y_by_root.cert.get(), root.cert.get()};
    mtls::trust_input in;

    CHECK(mtls::chain_depth(x.cert.get(), cas) == 2);
    CHECK(mtls::chain_depth(y_by_x.get(), cas) == 3);

    in.trust_file = dir.write("trust.pem", cas);
    in.verify_depth = 2;

    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].message
          == "ssl_verify_depth 2 is shorter than the chain of CA \"CN=Y\""
             " (3): use ssl_verify_depth 3");
}


TEST_CASE("an intermediate without its root is a warning")
{
    temp_dir dir;
    pki p;
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", {p.int_a.cert.get()});

    CHECK(mtls::chain_depth(p.int_a.cert.get(), {}) == -1);

    auto found = mtls::check_trust(in);

    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::warning);
    CHECK(found[0].directive == source::client_certificate);
    CHECK(found[0].message
          == "CA \"CN=Int A\" has no chain to a self-signed root nginx"
             " trusts, so nginx refuses every client certificate under"
             " it: add the CAs up to its root");
}


TEST_CASE("a root in the trusted certificate file completes the chain")
{
    temp_dir dir;
    pki p;
    mtls::trust_input in;

    in.trust_file = dir.write("trust.pem", {p.int_a.cert.get()});
    in.trusted_file = dir.write("trusted.pem", {p.root_a.cert.get()});

    auto found = mtls::check_trust(in);

    INFO(all(found));
    CHECK(found.empty());
}


TEST_CASE("the checks leave no OpenSSL errors queued")
{
    temp_dir dir;
    mtls::trust_input in;

    in.trust_file = dir.write_text(
        "trust.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");

    ERR_clear_error();
    CHECK_FALSE(mtls::check_trust(in).empty());
    CHECK(ERR_peek_error() == 0);
}


TEST_CASE("mapping by name under two roots is warned about")
{
    temp_dir dir;
    pki p;
    mtls::trust_input in = input(dir, p.cas(), {});

    in.crl_file.clear();
    in.name_keys = true;

    auto found = mtls::check_trust(in);

    INFO(all(found));
    REQUIRE(found.size() == 1);
    CHECK(found[0].severity == level::warning);
    CHECK(found[0].message.find("2 root CAs") != std::string::npos);
}


TEST_CASE("mapping by name under one root, or by key, is not warned about")
{
    temp_dir dir;
    pki p;
    mtls::trust_input one = input(dir, {p.root_a.cert.get(),
                                        p.int_a.cert.get()}, {});

    one.crl_file.clear();
    one.name_keys = true;
    CHECK(mtls::check_trust(one).empty());

    mtls::trust_input two = input(dir, p.cas(), {});

    two.crl_file.clear();
    CHECK(mtls::check_trust(two).empty());
}
