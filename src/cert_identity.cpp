// Identity keys derived from one X.509 certificate.

#include "cert_identity.hpp"

#include <ctime>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "ossl.hpp"

namespace mtls {

namespace {

// RFC 2253 order and escaping, but multi-byte characters kept as UTF-8
// instead of \XX escapes (what `-nameopt RFC2253,-esc_msb` prints).
constexpr unsigned long name_flags = XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB;


bool has_control_byte(std::string_view s)
{
    for (unsigned char c : s) {
        if (c < 0x20 || c == 0x7f) {
            return true;
        }
    }

    return false;
}


bool is_ascii(std::string_view s)
{
    for (unsigned char c : s) {
        if (c >= 0x80) {
            return false;
        }
    }

    return true;
}


// Well-formed UTF-8 as PostgreSQL accepts it: shortest forms only, no
// surrogates, nothing above U+10FFFF.
bool is_utf8(std::string_view s)
{
    std::size_t i = 0;

    while (i < s.size()) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        std::size_t n;
        unsigned long cp;

        if (c < 0x80) {
            i++;
            continue;
        }

        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }

        if (s.size() - i <= n) {
            return false;
        }

        for (std::size_t k = 1; k <= n; k++) {
            unsigned char cc = static_cast<unsigned char>(s[i + k]);

            if ((cc & 0xc0) != 0x80) {
                return false;
            }

            cp = (cp << 6) | (cc & 0x3f);
        }

        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)
            || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        {
            return false;
        }

        i += n + 1;
    }

    return true;
}


std::string sha256_hex(const unsigned char *data, std::size_t len)
{
    unsigned char md[SHA256_DIGEST_LENGTH];

    SHA256(data, len, md);

    return hex(md, sizeof(md));
}


bool fingerprint_of(X509 *cert, std::string &out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;

    if (X509_digest(cert, EVP_sha256(), md, &len) != 1) {
        return false;
    }

    out = hex(md, len);
    return true;
}


bool spki_of(X509 *cert, std::string &out)
{
    X509_PUBKEY *key = X509_get_X509_PUBKEY(cert);
    unsigned char *der = nullptr;

    if (key == nullptr) {
        return false;
    }

    int len = i2d_X509_PUBKEY(key, &der);
    if (len <= 0) {
        return false;
    }

    ossl::string owner(reinterpret_cast<char *>(der));
    out = sha256_hex(der, static_cast<std::size_t>(len));
    return true;
}


bool time_of(const ASN1_TIME *t, std::int64_t &out)
{
    struct tm tm {};

    if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) {
        return false;
    }

    out = static_cast<std::int64_t>(timegm(&tm));
    return true;
}


// Appends one SAN value, byte-exact from the ASN.1 length.  A value with
// a NUL or any other control byte is refused rather than cut short.
bool add_san(const ASN1_IA5STRING *s, std::vector<std::string> &out)
{
    const unsigned char *data = ASN1_STRING_get0_data(s);
    int len = ASN1_STRING_length(s);

    if (data == nullptr || len < 0) {
        return false;
    }

    std::string value(reinterpret_cast<const char *>(data),
                      static_cast<std::size_t>(len));

    // IA5String is seven-bit: a NUL, a control byte or a byte above 0x7f
    // makes the name unusable as a key
    if (value.empty() || has_control_byte(value) || !is_ascii(value)) {
        return false;
    }

    out.push_back(std::move(value));
    return true;
}


// Fills the three SAN lists; returns an error text or "".
std::string sans_of(X509 *cert, cert_identity &id)
{
    int crit = 0;
    ossl::general_names names(static_cast<GENERAL_NAMES *>(
        X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, nullptr)));

    if (!names) {
        if (crit == -1) {
            return "";  // no subjectAltName at all
        }

        return crit == -2 ? "subjectAltName appears more than once"
                          : "subjectAltName cannot be decoded";
    }

    for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names.get(), i);
        bool good = true;

        switch (gn->type) {
        case GEN_URI:
            good = add_san(gn->d.uniformResourceIdentifier, id.san_uri);
            break;
        case GEN_EMAIL:
            good = add_san(gn->d.rfc822Name, id.san_email);
            break;
        case GEN_DNS:
            good = add_san(gn->d.dNSName, id.san_dns);
            break;
        default:
            break;  // other name types are not identity keys
        }

        if (!good) {
            return "subjectAltName holds an empty or non-ASCII value"
                   " or a control byte";
        }
    }

    return "";
}


// Derives every key but the fingerprint; returns an error text or "".
std::string keys_of(X509 *cert, cert_identity &id)
{
    if (X509_get_extension_flags(cert) & EXFLAG_INVALID) {
        return "certificate extensions cannot be decoded";
    }

    if (!spki_of(cert, id.spki)) {
        return "public key cannot be encoded";
    }

    id.subject = render_name(X509_get_subject_name(cert));
    id.issuer = render_name(X509_get_issuer_name(cert));

    if (id.issuer.empty()) {
        return "issuer name is empty or cannot be rendered";
    }

    if (X509_NAME_entry_count(X509_get_subject_name(cert)) > 0
        && id.subject.empty())
    {
        return "subject name cannot be rendered";
    }

    id.serial = render_serial(X509_get0_serialNumber(cert));
    if (id.serial.empty()) {
        return "serial number cannot be decoded";
    }

    // TODO(identity): bind to the key that signed the leaf rather than the
    // names it carries, once a resumed session can tell which CA that was
    // (nginx keeps no verified chain across resumption).
    const ASN1_OCTET_STRING *akid = X509_get0_authority_key_id(cert);
    if (akid != nullptr) {
        id.issuer_key_id = hex(ASN1_STRING_get0_data(akid),
                               static_cast<std::size_t>(
                                   ASN1_STRING_length(akid)));
    }

    if (!time_of(X509_get0_notBefore(cert), id.not_before)
        || !time_of(X509_get0_notAfter(cert), id.not_after))
    {
        return "validity dates cannot be decoded";
    }

    return sans_of(cert, id);
}

}  // namespace


std::string hex(const unsigned char *data, std::size_t len)
{
    static const char digits[] = "0123456789abcdef";
    std::string out;

    out.reserve(len * 2);

    for (std::size_t i = 0; i < len; i++) {
        out.push_back(digits[data[i] >> 4]);
        out.push_back(digits[data[i] & 0x0f]);
    }

    return out;
}


std::string render_name(const X509_NAME *name)
{
    ossl::bio bio(BIO_new(BIO_s_mem()));

    if (!bio || name == nullptr) {
        return "";
    }

    if (X509_NAME_print_ex(bio.get(), name, 0, name_flags) < 0) {
        return "";
    }

    char *data = nullptr;
    long len = BIO_get_mem_data(bio.get(), &data);

    if (len <= 0 || data == nullptr) {
        return "";
    }

    std::string out(data, static_cast<std::size_t>(len));

    // OpenSSL escapes control characters itself; refuse the name rather
    // than pass on anything it let through, or anything not UTF-8.
    return has_control_byte(out) || !is_utf8(out) ? std::string() : out;
}


std::string render_serial(const ASN1_INTEGER *serial)
{
    if (serial == nullptr) {
        return "";
    }

    ossl::bignum bn(ASN1_INTEGER_to_BN(serial, nullptr));
    if (!bn) {
        return "";
    }

    if (BN_is_zero(bn.get())) {
        return "0";
    }

    ossl::string text(BN_bn2hex(bn.get()));
    if (!text) {
        return "";
    }

    std::string_view digits(text.get());
    std::string out;

    if (!digits.empty() && digits.front() == '-') {
        out.push_back('-');
        digits.remove_prefix(1);
    }

    while (digits.size() > 1 && digits.front() == '0') {
        digits.remove_prefix(1);
    }

    for (char c : digits) {
        out.push_back(c >= 'A' && c <= 'F' ? static_cast<char>(c - 'A' + 'a')
                                           : c);
    }

    return out;
}


std::string join_values(const std::vector<std::string> &values)
{
    std::string out;

    for (const std::string &v : values) {
        if (!out.empty()) {
            out.push_back(',');
        }

        for (char c : v) {
            if (c == ',' || c == '\\') {
                out.push_back('\\');
            }

            out.push_back(c);
        }
    }

    return out;
}


cert_identity derive_identity(X509 *cert)
{
    cert_identity id;

    if (cert == nullptr) {
        id.error = "no certificate";
        return id;
    }

    if (!fingerprint_of(cert, id.fingerprint)) {
        id.error = "certificate cannot be encoded";
        return id;
    }

    id.error = keys_of(cert, id);

    if (!id.ok()) {
        std::string fingerprint = std::move(id.fingerprint);
        std::string error = std::move(id.error);

        id = cert_identity();
        id.fingerprint = std::move(fingerprint);
        id.error = std::move(error);
    }

    return id;
}


cert_identity derive_identity_der(std::string_view der)
{
    const unsigned char *p =
        reinterpret_cast<const unsigned char *>(der.data());
    const unsigned char *end = p + der.size();

    ossl::x509 cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));

    if (!cert || p != end) {
        cert_identity id;
        id.error = "not a single DER certificate";
        return id;
    }

    return derive_identity(cert.get());
}

}  // namespace mtls
