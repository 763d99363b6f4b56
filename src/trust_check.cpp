// Configuration-time checks of client certificate trust.
//
// What OpenSSL 3.0 does with these settings was measured on this build
// with `openssl verify` and with nginx 1.22 answering curl:
//
// CRLs.  ssl_crl makes nginx set X509_V_FLAG_CRL_CHECK and
// X509_V_FLAG_CRL_CHECK_ALL; OpenSSL then wants, for every certificate of
// the chain, the root at the top included, a CRL from its issuer.  So the
// self-signed root needs its own CRL too: with leaf -> int -> root and
// only the int's CRL loaded, nginx answers 400 and logs "unable to get
// certificate CRL" (depth 1: the int, whose CRL the root signs); a root
// its own CRL lists as revoked is refused at depth 2.  Every CA nginx
// trusts therefore needs a CRL that it signed itself.
//
// Depth.  ssl_verify_depth N lets N CA certificates stand between the
// leaf and the self-signed root, the root not counted: leaf -> intA ->
// rootA verifies with 1 (nginx's default), leaf -> rootA with 0, and
// leaf -> intB -> intA -> rootA needs 2; with 1, nginx answers 400 and
// logs "unable to get issuer certificate".

#include "trust_check.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <limits>
#include <memory>
#include <utility>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "cert_identity.hpp"
#include "ossl.hpp"

namespace mtls {

namespace {

using ossl::x509_crl;
using ossl::x509_infos;

using level = finding::level;
using source = finding::source;

constexpr int no_chain = -1;
constexpr int unknown = -2;

// OpenSSL's default depth limit; no chain longer than this verifies
constexpr std::size_t max_chain = 100;


// Drops what OpenSSL queues while the checks run: a block that does not
// parse or a signature that does not verify is a finding here, not an
// error for nginx to print later.
class error_mark {
public:
    error_mark() { ERR_set_mark(); }
    ~error_mark() { ERR_pop_to_mark(); }

    error_mark(const error_mark &) = delete;
    error_mark &operator=(const error_mark &) = delete;
};


struct pem_file {
    std::vector<ossl::x509> certs;
    std::vector<x509_crl> crls;
};


// a CA certificate nginx trusts, and the directive that brought it
struct trusted_ca {
    X509 *cert;
    source from;
};


struct crl_entry {
    X509_CRL *crl;
    source from;
    bool claimed;  // some trusted CA has the issuer name
};


// never prompt on the terminal for a passphrase at `nginx -t`
int no_passphrase(char *, int, int, void *)
{
    return 0;
}


// Reads every certificate and CRL of a PEM file, as the
// X509_load_cert_crl_file() behind nginx's directives does.  Returns ""
// or why the file cannot be used.
std::string read_pem(const std::string &path, pem_file &out)
{
    errno = 0;
    ossl::bio bio(BIO_new_file(path.c_str(), "r"));

    if (!bio) {
        int err = errno;

        return "cannot open \"" + path + "\""
               + (err == 0 ? std::string()
                           : " (" + std::to_string(err) + ": "
                                 + std::strerror(err) + ")")
               + ": name a readable pem file";
    }

    x509_infos infos(PEM_X509_INFO_read_bio(bio.get(), nullptr,
                                            no_passphrase, nullptr));
    if (!infos) {
        return "\"" + path + "\" holds a pem block that cannot be"
               " decoded: fix or remove it";
    }

    for (int i = 0; i < sk_X509_INFO_num(infos.get()); i++) {
        X509_INFO *info = sk_X509_INFO_value(infos.get(), i);

        // the stack keeps each handle until ours owns it
        if (info->x509 != nullptr) {
            out.certs.emplace_back(info->x509);
            info->x509 = nullptr;
        }

        if (info->crl != nullptr) {
            out.crls.emplace_back(info->crl);
            info->crl = nullptr;
        }
    }

    return "";
}


void report(std::vector<finding> &out, level severity, source directive,
            std::string message)
{
    out.push_back(finding{severity, directive, std::move(message)});
}


std::string quoted(const X509_NAME *name)
{
    return "\"" + render_name(name) + "\"";
}


// a CA as messages name it: its quoted subject, and for a CA without
// one, its fingerprint as well
std::string name_of(X509 *cert)
{
    std::string name = quoted(X509_get_subject_name(cert));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;

    if (name.size() > 2
        || X509_digest(cert, EVP_sha256(), md, &len) != 1)
    {
        return name;
    }

    return name + " (sha256 " + hex(md, len) + ")";
}


bool seconds_of(const ASN1_TIME *t, std::int64_t &out)
{
    struct tm tm {};

    if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) {
        return false;
    }

    out = static_cast<std::int64_t>(timegm(&tm));
    return true;
}


// ISO 8601 in UTC, as in "2027-01-15T08:00:00Z"
std::string render_time(std::int64_t t)
{
    std::time_t tt = static_cast<std::time_t>(t);
    struct tm tm {};
    char buf[32];

    if (gmtime_r(&tt, &tm) == nullptr
        || std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    {
        return std::to_string(t);
    }

    return buf;
}


// Whether `issuer` signed `cert`, judged as OpenSSL picks issuers (names,
// key identifiers, key usage), then by the signature itself.
bool issued(X509 *issuer, X509 *cert)
{
    if (X509_check_issued(issuer, cert) != X509_V_OK) {
        return false;
    }

    EVP_PKEY *key = X509_get0_pubkey(issuer);

    return key != nullptr && X509_verify(cert, key) == 1;
}


// Appends `cert` unless an identical certificate is already there.
bool add_unique(std::vector<X509 *> &cas, X509 *cert)
{
    for (X509 *ca : cas) {
        if (X509_cmp(ca, cert) == 0) {
            return false;
        }
    }

    cas.push_back(cert);
    return true;
}


// Which of a set of distinct certificates issued which, and the longest
// way from each up to a self-signed root.
class ca_graph {
public:
    explicit ca_graph(const std::vector<X509 *> &cas)
        : root_(cas.size()), issuers_(cas.size()),
          known_(cas.size(), unknown), on_path_(cas.size())
    {
        for (std::size_t i = 0; i < cas.size(); i++) {
            root_[i] = X509_self_signed(cas[i], 1) == 1;

            for (std::size_t j = 0; j < cas.size(); j++) {
                if (j != i && !root_[i] && issued(cas[j], cas[i])) {
                    issuers_[i].push_back(j);
                }
            }
        }
    }

    std::size_t roots() const
    {
        return static_cast<std::size_t>(
            std::count(root_.begin(), root_.end(), true));
    }

    // see chain_depth()
    int depth(std::size_t i)
    {
        bool cut = false;

        return walk(i, 0, cut);
    }

private:
    // The longest chain from `i` to a root that avoids the CAs already on
    // the path.  Cross-signed CAs can issue each other; a result that met
    // such a loop depends on the path and is not remembered (`cut`).
    int walk(std::size_t i, std::size_t len, bool &cut)
    {
        if (root_[i]) {
            return 0;
        }

        if (known_[i] != unknown) {
            return known_[i];
        }

        if (len >= max_chain) {
            cut = true;
            return no_chain;
        }

        int best = no_chain;
        bool mine = false;

        on_path_[i] = true;

        for (std::size_t j : issuers_[i]) {
            if (on_path_[j]) {
                mine = true;
                continue;
            }

            int d = walk(j, len + 1, mine);

            if (d != no_chain && d + 1 > best) {
                best = d + 1;
            }
        }

        on_path_[i] = false;

        if (mine) {
            cut = true;
        } else {
            known_[i] = best;
        }

        return best;
    }

    std::vector<bool> root_;
    std::vector<std::vector<std::size_t>> issuers_;
    std::vector<int> known_;
    std::vector<bool> on_path_;
};


// Reads one directive's file; reports and returns false when it is
// unusable, or holds nothing of what the directive is for.
bool load(const std::string &path, source from, pem_file &file,
          std::vector<finding> &out)
{
    std::string error = read_pem(path, file);

    if (!error.empty()) {
        report(out, level::error, from, std::move(error));
        return false;
    }

    if (from == source::crl && file.crls.empty()) {
        report(out, level::error, from,
               "\"" + path + "\" holds no crl: add the crl of every CA"
               " in ssl_client_certificate and ssl_trusted_certificate");
        return false;
    }

    if (from != source::crl && file.certs.empty()) {
        report(out, level::error, from,
               "\"" + path + "\" holds no certificate: name the pem file"
               " of the CAs that issue client certificates");
        return false;
    }

    return true;
}


void check_count(const trust_input &in, const pem_file &trust,
                 std::vector<finding> &out)
{
    std::vector<X509 *> distinct;

    for (const ossl::x509 &cert : trust.certs) {
        add_unique(distinct, cert.get());
    }

    if (distinct.size() <= max_trusted_cas) {
        return;
    }

    report(out, level::warning, source::client_certificate,
           "\"" + in.trust_file + "\" holds "
           + std::to_string(distinct.size())
           + " CAs; any certificate they issue reaches the identity"
             " lookup: trust only the CAs that issue client certificates");
}


void check_depth(const trust_input &in, const std::vector<trusted_ca> &cas,
                 ca_graph &graph, std::vector<finding> &out)
{
    int deepest = no_chain;
    X509 *deepest_ca = nullptr;

    for (std::size_t i = 0; i < cas.size(); i++) {
        int d = graph.depth(i);

        if (d == no_chain) {
            report(out, level::warning, cas[i].from,
                   "CA " + name_of(cas[i].cert) + " has no chain to a"
                   " self-signed root nginx trusts, so nginx refuses every"
                   " client certificate under it: add the CAs up to its"
                   " root");
            continue;
        }

        if (d > deepest) {
            deepest = d;
            deepest_ca = cas[i].cert;
        }
    }

    if (deepest_ca == nullptr || deepest <= in.verify_depth) {
        return;
    }

    report(out, level::warning, source::verify_depth,
           "ssl_verify_depth " + std::to_string(in.verify_depth)
           + " is shorter than the chain of CA " + name_of(deepest_ca)
           + " (" + std::to_string(deepest) + "): use ssl_verify_depth "
           + std::to_string(deepest));
}


// The dates of the CRL OpenSSL would take from those a CA signed: one
// valid now (lastUpdate <= now < nextUpdate), the newest of them.  A CRL
// without nextUpdate never expires, to OpenSSL and so here too.
void check_crl_dates(X509 *ca, const std::vector<X509_CRL *> &crls,
                     std::int64_t now, std::vector<finding> &out)
{
    constexpr std::int64_t never = std::numeric_limits<std::int64_t>::max();
    bool found = false;
    std::int64_t last_of_best = 0;
    std::int64_t next_of_best = never;
    std::int64_t expired = std::numeric_limits<std::int64_t>::min();
    std::int64_t starts = never;

    for (X509_CRL *crl : crls) {
        const ASN1_TIME *next_update = X509_CRL_get0_nextUpdate(crl);
        std::int64_t last = 0;
        std::int64_t next = never;

        if (!seconds_of(X509_CRL_get0_lastUpdate(crl), last)
            || (next_update != nullptr && !seconds_of(next_update, next)))
        {
            continue;
        }

        if (last > now) {
            starts = std::min(starts, last);

        } else if (next <= now) {
            expired = std::max(expired, next);

        } else if (!found || last > last_of_best) {
            found = true;
            last_of_best = last;
            next_of_best = next;
        }
    }

    std::string name = name_of(ca);

    if (found) {
        if (next_of_best != never
            && next_of_best - now <= crl_renewal_margin)
        {
            report(out, level::warning, source::crl,
                   "crl of CA " + name + " expires at "
                   + render_time(next_of_best) + ", within a day: renew it"
                   " before then, or nginx refuses every client"
                   " certificate under it");
        }

        return;
    }

    if (expired != std::numeric_limits<std::int64_t>::min()) {
        report(out, level::error, source::crl,
               "crl of CA " + name + " expired at " + render_time(expired)
               + "; nginx refuses every client certificate under it:"
                 " renew the crl");

    } else if (starts != never) {
        report(out, level::error, source::crl,
               "crl of CA " + name + " is not valid before "
               + render_time(starts) + "; nginx refuses every client"
               " certificate under it until then: load a crl valid now");

    } else {
        report(out, level::error, source::crl,
               "crl of CA " + name + " has dates that cannot be decoded;"
               " nginx refuses every client certificate under it: issue"
               " the crl again");
    }
}


// Every CA needs a CRL with its name as issuer and its signature, and
// must be allowed to sign CRLs at all.
void check_crl_of(X509 *ca, std::vector<crl_entry> &crls, std::int64_t now,
                  std::vector<finding> &out)
{
    EVP_PKEY *key = X509_get0_pubkey(ca);
    bool named = false;
    std::vector<X509_CRL *> signed_by;

    for (crl_entry &e : crls) {
        if (X509_NAME_cmp(X509_CRL_get_issuer(e.crl),
                          X509_get_subject_name(ca)) != 0)
        {
            continue;
        }

        named = true;
        e.claimed = true;

        if (key != nullptr && X509_CRL_verify(e.crl, key) == 1) {
            signed_by.push_back(e.crl);
        }
    }

    std::string name = name_of(ca);

    if (!named) {
        report(out, level::error, source::crl,
               "no crl of CA " + name + "; nginx refuses every client"
               " certificate under it: add the crl that CA issues");
        return;
    }

    if (signed_by.empty()) {
        report(out, level::error, source::crl,
               "no crl naming CA " + name + " is signed by its key;"
               " nginx refuses every client certificate under it: add"
               " the crl that CA signed");
        return;
    }

    // a key usage extension without cRLSign forbids CRLs altogether
    if ((X509_get_key_usage(ca) & KU_CRL_SIGN) == 0) {
        report(out, level::error, source::crl,
               "CA " + name + " may not sign crls (its key usage lacks"
               " cRLSign), so nginx refuses every client certificate"
               " under it: issue the CA again with cRLSign");
        return;
    }

    check_crl_dates(ca, signed_by, now, out);
}


// TODO(trust): also report a CA that its issuer's CRL lists as revoked
// (nginx then refuses every client under it); drop this note once
// check_crl_of() looks each CA up in its issuer's CRL.
void check_crls(const std::vector<trusted_ca> &cas,
                std::vector<crl_entry> &crls, std::int64_t now,
                std::vector<finding> &out)
{
    for (const trusted_ca &ca : cas) {
        check_crl_of(ca.cert, crls, now, out);
    }

    for (const crl_entry &e : crls) {
        if (e.claimed) {
            continue;
        }

        report(out, level::warning, e.from,
               "crl of " + quoted(X509_CRL_get_issuer(e.crl))
               + " belongs to no CA nginx trusts, so it is never used:"
                 " remove it, or trust its CA");
    }
}

}  // namespace


std::vector<finding> check_trust(const trust_input &in)
{
    error_mark mark;
    std::vector<finding> out;
    pem_file trust;
    pem_file trusted;
    pem_file crl;
    bool cas_read = true;
    bool crls_read = !in.crl_file.empty();

    if (!in.trust_file.empty()) {
        cas_read = load(in.trust_file, source::client_certificate, trust,
                        out);
    }

    if (!in.trusted_file.empty()) {
        cas_read = load(in.trusted_file, source::trusted_certificate,
                        trusted, out)
                   && cas_read;
    }

    if (crls_read) {
        crls_read = load(in.crl_file, source::crl, crl, out);
    }

    if (!in.trust_file.empty() && !trust.certs.empty()) {
        check_count(in, trust, out);
    }

    // the files' certificates and CRLs all land in one X509_STORE, even
    // certificates in the ssl_crl file, which nginx then trusts as CAs
    if (!crl.certs.empty()) {
        report(out, level::warning, source::crl,
               "\"" + in.crl_file + "\" holds certificates, and nginx"
               " trusts them as CAs: keep only crls in it");
    }

    // a partial set of CAs would only make the checks below misleading;
    // nginx -t fails on the errors above anyway
    if (!cas_read) {
        return out;
    }

    std::vector<X509 *> distinct;
    std::vector<trusted_ca> cas;
    std::vector<crl_entry> crls;

    const std::pair<const pem_file *, source> files[] = {
        {&trust, source::client_certificate},
        {&trusted, source::trusted_certificate},
        {&crl, source::crl},
    };

    for (const auto &[file, from] : files) {
        for (const ossl::x509 &cert : file->certs) {
            if (add_unique(distinct, cert.get())) {
                cas.push_back(trusted_ca{cert.get(), from});
            }
        }

        for (const x509_crl &c : file->crls) {
            crls.push_back(crl_entry{c.get(), from, false});
        }
    }

    ca_graph graph(distinct);

    check_depth(in, cas, graph, out);

    // a leaf's issuer name and key identifier are whatever its issuer
    // wrote: under a second root, a CA can copy another hierarchy's
    // issuing CA, unless that CA itself is trusted (OpenSSL then builds
    // the chain with the trusted one, and the copy's leaves fail)
    if (in.name_keys && graph.roots() > 1) {
        report(out, level::warning, source::client_certificate,
               "identities are mapped by name, and the trust files hold "
               + std::to_string(graph.roots()) + " root CAs: a CA under "
               "one root could copy the name and key identifier of an "
               "issuing CA under another; put every CA that issues client "
               "certificates in ssl_client_certificate, or map by "
               "fingerprint or spki");
    }

    // CRLs count only when ssl_crl turns checking on
    if (crls_read) {
        check_crls(cas, crls, in.now, out);
    }

    return out;
}


int chain_depth(X509 *ca, const std::vector<X509 *> &cas)
{
    if (ca == nullptr) {
        return no_chain;
    }

    error_mark mark;
    std::vector<X509 *> distinct{ca};

    for (X509 *cert : cas) {
        add_unique(distinct, cert);
    }

    return ca_graph(distinct).depth(0);
}

}  // namespace mtls
