// Request headers: which inbound names are reserved, and how vetted
// values are written so that any HTTP parser reads them back unchanged.

#ifndef MTLS_IDENTITY_HEADER_HPP
#define MTLS_IDENTITY_HEADER_HPP

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace mtls {

// The prefix every header of the module starts with.  Any inbound header
// whose normalised name starts with it is removed, whatever the
// configuration says.
constexpr std::string_view reserved_prefix = "x-mtls-identity";

// Lower case, with every character but a letter or digit read as "-":
// the names an application behind a WSGI, CGI or PHP gateway cannot tell
// apart from the original all normalise alike.
std::string normalize_header_name(std::string_view name);

// A strip pattern in the form is_reserved_header() compares: the name
// normalised, a trailing "*" kept.
std::string normalize_pattern(std::string_view pattern);

// A pattern of mtls_identity_strip_header: a header name, or a prefix
// followed by "*".  Returns "" when it is acceptable, else why not.
std::string check_strip_pattern(std::string_view pattern);

// Whether an inbound header is to be removed: its normalised name starts
// with the reserved prefix or matches one of the patterns, which must be
// normalised already.  Allocates nothing: it runs on every header.
bool is_reserved_header(std::string_view name,
                        const std::vector<std::string> &patterns);

// Percent-encodes "%", ",", '"', "\", the space, every byte below 0x20,
// 0x7f and every byte above it, so the value is printable ASCII without
// spaces a parser could trim, and a comma always separates list
// elements.  Decoding with any URL unquote gives the original UTF-8 back.
std::string percent_encode(std::string_view value);

// The groups as one header value: each percent-encoded, comma-separated,
// at most `cap` bytes.  Groups that would pass the cap are left out
// whole, never cut; `omitted` counts them.
std::string join_groups(const std::vector<std::string> &groups,
                        std::size_t cap, std::size_t &omitted);

}  // namespace mtls

#endif
