// Change notifications from the database.

#include "change.hpp"

#include <charconv>

#include <openssl/evp.h>

namespace mtls {

namespace {

void add_token(std::vector<key_token> &out, std::string_view kind,
               std::string_view value)
{
    if (!value.empty()) {
        out.push_back(token_of(kind, value));
    }
}


bool parse_hex64(std::string_view s, key_token &out)
{
    if (s.size() != 16) {
        return false;
    }

    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 16);
    return ec == std::errc() && end == s.data() + s.size();
}

}  // namespace


key_token token_of(std::string_view kind, std::string_view value)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    key_token token = 0;

    // a token only selects cache entries to drop: md5 needs no strength
    // here, only to agree with PostgreSQL's md5()
    if (ctx != nullptr
        && EVP_DigestInit_ex(ctx, EVP_md5(), nullptr) == 1
        && EVP_DigestUpdate(ctx, kind.data(), kind.size()) == 1
        && EVP_DigestUpdate(ctx, ":", 1) == 1
        && EVP_DigestUpdate(ctx, value.data(), value.size()) == 1
        && EVP_DigestFinal_ex(ctx, md, &len) == 1 && len >= 8)
    {
        for (int i = 0; i < 8; i++) {
            token = (token << 8) | md[i];
        }
    }

    EVP_MD_CTX_free(ctx);
    return token;
}


std::vector<key_token> tokens_of(const cert_identity &id)
{
    std::vector<key_token> out;

    add_token(out, "fingerprint", id.fingerprint);
    add_token(out, "spki", id.spki);
    add_token(out, "subject", id.subject);
    add_token(out, "serial", id.serial);

    for (const std::string &v : id.san_uri) {
        add_token(out, "san_uri", v);
    }

    for (const std::string &v : id.san_email) {
        add_token(out, "san_email", v);
    }

    for (const std::string &v : id.san_dns) {
        add_token(out, "san_dns", v);
    }

    return out;
}


std::optional<change> parse_change(std::string_view payload)
{
    change c;
    std::size_t sp = payload.find(' ');

    if (sp == std::string_view::npos) {
        return std::nullopt;
    }

    std::string_view version = payload.substr(0, sp);
    auto [end, ec] = std::from_chars(version.data(),
                                     version.data() + version.size(),
                                     c.version);

    if (ec != std::errc() || end != version.data() + version.size()
        || c.version < 0)
    {
        return std::nullopt;
    }

    payload.remove_prefix(sp + 1);

    if (payload == "*") {
        c.everything = true;
        return c;
    }

    while (!payload.empty()) {
        sp = payload.find(' ');
        key_token token;

        if (!parse_hex64(payload.substr(0, sp), token)) {
            return std::nullopt;
        }

        c.tokens.push_back(token);

        if (sp == std::string_view::npos) {
            break;
        }

        payload.remove_prefix(sp + 1);
    }

    if (c.tokens.empty()) {
        return std::nullopt;
    }

    return c;
}

}  // namespace mtls
