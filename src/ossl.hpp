// RAII owners for the OpenSSL handles the core touches.
//
// Every pointer an OpenSSL call hands over is owned by one of these the
// moment the call returns, so no error path can leak it.

#ifndef MTLS_IDENTITY_OSSL_HPP
#define MTLS_IDENTITY_OSSL_HPP

#include <memory>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace mtls {
namespace ossl {

template <typename T, void (*Free)(T *)>
struct deleter {
    void operator()(T *p) const noexcept { Free(p); }
};

inline void free_general_names(GENERAL_NAMES *names)
{
    GENERAL_NAMES_free(names);
}

inline void free_openssl_string(char *s)
{
    OPENSSL_free(s);
}

inline void free_bio(BIO *bio)
{
    BIO_free(bio);
}

inline void free_x509_extension(X509_EXTENSION *ext)
{
    X509_EXTENSION_free(ext);
}

inline void free_x509_infos(STACK_OF(X509_INFO) *infos)
{
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
}

using x509 = std::unique_ptr<X509, deleter<X509, X509_free>>;
using x509_name =
    std::unique_ptr<X509_NAME, deleter<X509_NAME, X509_NAME_free>>;
using x509_extension =
    std::unique_ptr<X509_EXTENSION,
                    deleter<X509_EXTENSION, free_x509_extension>>;
using x509_crl = std::unique_ptr<X509_CRL, deleter<X509_CRL, X509_CRL_free>>;
using x509_infos =
    std::unique_ptr<STACK_OF(X509_INFO),
                    deleter<STACK_OF(X509_INFO), free_x509_infos>>;
using asn1_time =
    std::unique_ptr<ASN1_TIME, deleter<ASN1_TIME, ASN1_TIME_free>>;
using pkey = std::unique_ptr<EVP_PKEY, deleter<EVP_PKEY, EVP_PKEY_free>>;
using bio = std::unique_ptr<BIO, deleter<BIO, free_bio>>;
using bignum = std::unique_ptr<BIGNUM, deleter<BIGNUM, BN_free>>;
using general_names =
    std::unique_ptr<GENERAL_NAMES,
                    deleter<GENERAL_NAMES, free_general_names>>;
using authority_key_id =
    std::unique_ptr<AUTHORITY_KEYID,
                    deleter<AUTHORITY_KEYID, AUTHORITY_KEYID_free>>;
using string = std::unique_ptr<char, deleter<char, free_openssl_string>>;

}  // namespace ossl
}  // namespace mtls

#endif
