// Request headers.

#include "header.hpp"

#include <algorithm>

namespace mtls {

namespace {

// a space too: parsers trim spaces around a value and inside a list
bool must_encode(unsigned char c)
{
    return c <= 0x20 || c >= 0x7f || c == '%' || c == ',' || c == '"'
           || c == '\\';
}


// an RFC 9110 token character, as nginx accepts in a header name
bool is_tchar(unsigned char c)
{
    static const std::string_view others = "!#$%&'*+-.^_`|~";

    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
           || (c >= 'A' && c <= 'Z') || others.find(static_cast<char>(c))
                                            != std::string_view::npos;
}


// Gateways turn header names into variables in their own ways: CGI and
// WSGI read "-" as "_", PHP also "." and " ".  Every character but a
// letter or digit is therefore read as "-".
char normalized(char c)
{
    if (c >= 'A' && c <= 'Z') {
        return static_cast<char>(c - 'A' + 'a');
    }

    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
        return c;
    }

    return '-';
}


// whether the normalised `name` starts with the normalised `prefix`
bool starts_with(std::string_view name, std::string_view prefix)
{
    if (name.size() < prefix.size()) {
        return false;
    }

    for (std::size_t i = 0; i < prefix.size(); i++) {
        if (normalized(name[i]) != prefix[i]) {
            return false;
        }
    }

    return true;
}


bool matches(std::string_view name, std::string_view pattern)
{
    if (!pattern.empty() && pattern.back() == '*') {
        pattern.remove_suffix(1);
        return starts_with(name, pattern);
    }

    return name.size() == pattern.size() && starts_with(name, pattern);
}

}  // namespace


std::string normalize_header_name(std::string_view name)
{
    std::string out(name);

    for (char &c : out) {
        c = normalized(c);
    }

    return out;
}


std::string normalize_pattern(std::string_view pattern)
{
    bool prefix = !pattern.empty() && pattern.back() == '*';

    if (prefix) {
        pattern.remove_suffix(1);
    }

    std::string out = normalize_header_name(pattern);

    if (prefix) {
        out.push_back('*');
    }

    return out;
}


std::string check_strip_pattern(std::string_view pattern)
{
    std::string_view name = pattern;

    if (!name.empty() && name.back() == '*') {
        name.remove_suffix(1);
    }

    if (name.empty()) {
        return "an empty header name";
    }

    for (char c : name) {
        if (!is_tchar(static_cast<unsigned char>(c)) || c == '*') {
            return "a character not allowed in a header name";
        }
    }

    return "";
}


bool is_reserved_header(std::string_view name,
                        const std::vector<std::string> &patterns)
{
    if (starts_with(name, reserved_prefix)) {
        return true;
    }

    return std::any_of(patterns.begin(), patterns.end(),
                       [&](const std::string &p) {
                           return matches(name, p);
                       });
}


std::string percent_encode(std::string_view value)
{
    static const char digits[] = "0123456789ABCDEF";
    std::string out;

    out.reserve(value.size());

    for (char ch : value) {
        unsigned char c = static_cast<unsigned char>(ch);

        if (must_encode(c)) {
            out.push_back('%');
            out.push_back(digits[c >> 4]);
            out.push_back(digits[c & 0x0f]);

        } else {
            out.push_back(ch);
        }
    }

    return out;
}


std::string join_groups(const std::vector<std::string> &groups,
                        std::size_t cap, std::size_t &omitted)
{
    std::string out;

    omitted = 0;

    for (const std::string &g : groups) {
        std::string item = percent_encode(g);
        std::size_t need = item.size() + (out.empty() ? 0 : 1);

        if (item.empty() || out.size() + need > cap) {
            omitted++;
            continue;
        }

        if (!out.empty()) {
            out.push_back(',');
        }

        out += item;
    }

    return out;
}

}  // namespace mtls
