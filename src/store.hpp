// The module's statements against the schema in sql/schema.sql, and the
// reading of their results.  Every statement is prepared and takes its
// values as parameters; every comparison is an equality on a canonical
// value.

#ifndef MTLS_IDENTITY_STORE_HPP
#define MTLS_IDENTITY_STORE_HPP

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <libpq-fe.h>

#include "cert_identity.hpp"
#include "change.hpp"
#include "decision.hpp"

namespace mtls {
namespace store {

// the NOTIFY channel of the schema's triggers
extern const char *const channel;

// A statement that fails, with a message saying what to do, unless the
// schema is at the version this module reads.
extern const char *const check_version;

struct statement {
    const char *name;
    const char *sql;
    int params;
};

// What the database knows about a certificate: matching identity rows of
// every kind, revocation, and the change version, in one snapshot.
extern const statement lookup;

// The change version and the schema's epoch, from mtls_identity.state.
extern const statement version;

// The changes after a version, oldest first.
extern const statement changes;

// The parameters of `lookup` for a certificate.
std::vector<std::optional<std::string>>
lookup_params(const cert_identity &id);

// Reads the result of `lookup`.  Returns nothing, with `error` set, when
// the result is not of the expected shape.
std::optional<mtls::lookup> read_lookup(const PGresult *res,
                                        std::string &error);

struct state {
    std::int64_t version = 0;
    std::string epoch;
};

// Reads the result of `version`.
std::optional<state> read_version(const PGresult *res);

// Reads the result of `changes`; nothing when a row cannot be read.
std::optional<std::vector<change>> read_changes(const PGresult *res);

}  // namespace store
}  // namespace mtls

#endif
