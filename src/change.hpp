// Change notifications from the database, and the keys they name.
//
// The schema's triggers announce every change to identities and
// revocations as "<version> <token> <token> ..." (or "<version> *"),
// where a token names one key: the first 64 bits of
// md5("<kind>:<value>").  A cached lookup remembers the tokens of its
// certificate's keys, so a change evicts exactly the lookups it may
// alter, without knowing which certificates those are.

#ifndef MTLS_IDENTITY_CHANGE_HPP
#define MTLS_IDENTITY_CHANGE_HPP

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "cert_identity.hpp"

namespace mtls {

using key_token = std::uint64_t;

// md5("<kind>:<value>"), first 16 hex digits, as the schema's
// mtls_identity.key_token() computes it
key_token token_of(std::string_view kind, std::string_view value);

// the tokens of every key of a certificate: fingerprint, spki, subject,
// serial and each SAN
std::vector<key_token> tokens_of(const cert_identity &id);

struct change {
    std::int64_t version = 0;
    bool everything = false;
    std::vector<key_token> tokens;
};

// parses a notification payload or a row of mtls_identity.change
std::optional<change> parse_change(std::string_view payload);

}  // namespace mtls

#endif
