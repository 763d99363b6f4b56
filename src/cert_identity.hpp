// Identity keys derived from one X.509 certificate.
//
// Plain C++17 over OpenSSL; no nginx headers, so the unit tests link it
// alone.  Every key has exactly one canonical text form, documented in
// README.md; the allowlist, the revocation list and the cache all compare
// these strings byte for byte.

#ifndef MTLS_IDENTITY_CERT_IDENTITY_HPP
#define MTLS_IDENTITY_CERT_IDENTITY_HPP

#if __cplusplus < 201703L
#error "the mtls identity core needs C++17 or newer"
#endif

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/x509.h>

namespace mtls {

struct cert_identity {
    // SHA-256 over the DER certificate, 64 lowercase hex digits.  Set
    // whenever the certificate could be encoded, even when the rest of the
    // identity was refused, so a denial can still name the certificate.
    std::string fingerprint;

    // Empty when every key below was derived; otherwise why the
    // certificate yields no identity (the keys are then left empty).
    std::string error;

    std::string spki;          // SHA-256 over SubjectPublicKeyInfo DER, hex
    std::string subject;       // RFC 4514 text, UTF-8 values
    std::string issuer;        // same form as subject
    std::string serial;        // lowercase hex, no leading zeros
    std::string issuer_key_id; // authority key identifier, hex; may be empty

    std::vector<std::string> san_uri;
    std::vector<std::string> san_email;
    std::vector<std::string> san_dns;

    std::int64_t not_before = 0;  // seconds since the epoch, UTC
    std::int64_t not_after = 0;

    bool ok() const noexcept { return error.empty(); }
};

// Derives every key of the certificate.  Never throws for a bad
// certificate: a malformed or hostile one comes back with `error` set.
// Throws std::bad_alloc only.
cert_identity derive_identity(X509 *cert);

// Parses one DER certificate and derives its keys; for tests and tools.
cert_identity derive_identity_der(std::string_view der);

// RFC 4514 rendering of a name, values as UTF-8, control characters and
// the RFC 4514 specials escaped with a backslash.  Used for subject and
// issuer alike.
std::string render_name(const X509_NAME *name);

// Canonical serial: lowercase hex of the integer without leading zeros
// ("0" for zero); a negative serial keeps its sign ("-1001").
std::string render_serial(const ASN1_INTEGER *serial);

// Lowercase hex of bytes.
std::string hex(const unsigned char *data, std::size_t len);

// Joins values with ",", escaping "\" as "\\" and "," as "\,", so that a
// comma inside a value can never split it.
std::string join_values(const std::vector<std::string> &values);

}  // namespace mtls

#endif
