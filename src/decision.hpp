// The access decision: what the database says about a certificate, and
// what that means for one location.
//
// The database answers one question per certificate, whatever the
// location: which rows match any of its keys, and is it revoked (a
// `lookup`).  Each location then decides from those facts with its own
// key kinds and groups (`decide`), so a cached lookup can serve every
// location without ever giving one location another's answer.

#ifndef MTLS_IDENTITY_DECISION_HPP
#define MTLS_IDENTITY_DECISION_HPP

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cert_identity.hpp"

namespace mtls {

enum class key_kind : std::uint8_t {
    fingerprint,
    spki,
    subject,
    issuer_serial,
    san_uri,
    san_email,
    san_dns
};

constexpr std::size_t key_kind_count = 7;

// "fingerprint", "spki", ...: the names the schema and the directives use
std::string_view name_of(key_kind kind);
std::optional<key_kind> key_kind_named(std::string_view name);

enum class reason : std::uint8_t {
    ok,
    no_cert,
    unverified,
    unknown,
    revoked,
    disabled,
    expired,
    group,
    db_unavailable
};

std::string_view name_of(reason why);

constexpr std::int64_t open_start = std::numeric_limits<std::int64_t>::min();
constexpr std::int64_t open_end = std::numeric_limits<std::int64_t>::max();

// One identity row that matched a key of the certificate.
struct grant {
    key_kind kind = key_kind::fingerprint;
    std::string username;
    std::vector<std::string> groups;
    bool enabled = false;
    std::int64_t valid_from = open_start;   // seconds since the epoch
    std::int64_t valid_until = open_end;

    // the row holds a username that can never be forwarded (a control
    // byte, empty, too long): it denies rather than maps
    bool unusable = false;
};

// What the database knows about one certificate.
struct lookup {
    std::int64_t version = 0;  // change version the answer was read at
    std::string epoch;         // the schema's epoch, likewise
    bool revoked = false;
    std::vector<grant> grants;
};

// The keys a lookup asks the database about, in the canonical form of
// each kind.  A URI SAN is a key only when the certificate has exactly
// one; the issuer binding of the name-based kinds is checked by the
// query itself.
std::vector<std::pair<key_kind, std::string>>
candidates(const cert_identity &id);

struct decision {
    reason why = reason::unknown;
    std::optional<key_kind> kind;         // the kind that decided
    std::string username;                 // set when why == ok
    std::vector<std::string> groups;      // likewise
    std::string detail;                   // for the log, never secret
};

// Decides for one location: the first kind in `order` with a matching
// row decides; rows of that kind naming two users decide nothing
// (unknown).  `required` lists groups of which the identity needs one
// (empty: none needed).  `now` is compared with the grant windows.
decision decide(const lookup &facts, const std::vector<key_kind> &order,
                const std::vector<std::string> &required, std::int64_t now);

// A lookup as bytes, for the shared-memory cache, and back.  decode()
// returns nothing for bytes that encode() did not write.
std::string encode(const lookup &facts);
std::optional<lookup> decode(std::string_view bytes);

// Whether a username can be forwarded in a header as it is.
bool usable_username(std::string_view name);

// Whether sql/schema.sql's group name check accepts the name: not empty,
// at most 128 characters, no control byte, comma, quote, backslash or
// "%", no space at either end.
bool schema_group_name(std::string_view name);

}  // namespace mtls

#endif
