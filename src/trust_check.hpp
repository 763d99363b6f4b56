// Configuration-time checks of the CAs, CRLs and verify depth nginx is
// given for client certificates.
//
// Plain C++17 over OpenSSL; no nginx headers.  Meant for configuration
// time only, as it reads files: the glue turns each finding into an
// emerg (error) or a warn (warning) at the directive it is about, and
// fails the configuration on any error.

#ifndef MTLS_IDENTITY_TRUST_CHECK_HPP
#define MTLS_IDENTITY_TRUST_CHECK_HPP

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <openssl/x509.h>

namespace mtls {

struct finding {
    enum class level { warning, error };

    // the directive whose file and line the glue reports
    enum class source {
        client_certificate,   // ssl_client_certificate
        trusted_certificate,  // ssl_trusted_certificate
        crl,                  // ssl_crl
        verify_depth          // ssl_verify_depth
    };

    level severity;
    source directive;

    // one lowercase line: what is wrong, then what to do instead
    std::string message;
};

struct trust_input {
    // file names as nginx resolved them; "" when the directive is unset
    std::string trust_file;    // ssl_client_certificate
    std::string trusted_file;  // ssl_trusted_certificate
    std::string crl_file;      // ssl_crl

    int verify_depth = 1;      // nginx's default
    std::int64_t now = 0;      // seconds since the epoch

    // some location maps identities by subject, issuer and serial or a
    // SAN: bound to the issuer name and key identifier the leaf carries
    bool name_keys = false;
};

// More CAs than this in ssl_client_certificate earn a warning.
constexpr std::size_t max_trusted_cas = 20;

// A CRL whose nextUpdate is this close earns a warning.
constexpr std::int64_t crl_renewal_margin = 24 * 60 * 60;

// Reads the files and returns every finding, in a stable order; an empty
// result means nothing to report.  Leaves the OpenSSL error queue as it
// found it.  Throws std::bad_alloc only.
std::vector<finding> check_trust(const trust_input &in);

// The smallest ssl_verify_depth that lets a client certificate issued by
// `ca` verify against `cas` (`ca` need not be among them): the number of
// CA certificates from `ca` up to a self-signed root, the root not
// counted; the longest such chain when there are several.  0 for a
// self-signed `ca`, -1 when no chain reaches a self-signed root.
int chain_depth(X509 *ca, const std::vector<X509 *> &cas);

}  // namespace mtls

#endif
