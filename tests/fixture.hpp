// Fixture certificates and the values the openssl command line gave for
// them (tests/fixtures/NAME.crt and NAME.expect, from make-fixtures.sh).

#ifndef MTLS_IDENTITY_TESTS_FIXTURE_HPP
#define MTLS_IDENTITY_TESTS_FIXTURE_HPP

#include <map>
#include <string>
#include <vector>

#include "ossl.hpp"

namespace fixture {

// "field=value" lines; a field may repeat (one line per SAN)
struct expected {
    std::multimap<std::string, std::string> fields;

    // the one value of a field, "" when absent
    std::string one(const std::string &field) const;

    // every value of a field, in file order
    std::vector<std::string> all(const std::string &field) const;

    bool refused() const { return one("refused") == "yes"; }
};

std::string dir();

// names of every fixture that has an .expect file, sorted
std::vector<std::string> names();

mtls::ossl::x509 certificate(const std::string &name);
expected expectations(const std::string &name);

// the DER encoding of a fixture certificate
std::string der(const std::string &name);

// the issuing CA's key, for re-signing modified fixtures
mtls::ossl::pkey ca_key();

}  // namespace fixture

#endif
