// The access decision.

#include "decision.hpp"

#include <algorithm>
#include <array>
#include <cstring>

namespace mtls {

namespace {

constexpr std::array<std::string_view, key_kind_count> kind_names = {
    "fingerprint", "spki", "subject", "issuer_serial",
    "san_uri", "san_email", "san_dns",
};

constexpr std::array<std::string_view, 9> reason_names = {
    "ok", "no_cert", "unverified", "unknown", "revoked",
    "disabled", "expired", "group", "db_unavailable",
};

// a username longer than this never reaches a header
constexpr std::size_t max_username = 256;


bool active(const grant &g, std::int64_t now)
{
    return g.enabled && g.valid_from <= now && now < g.valid_until;
}


void add_unique(std::vector<std::string> &to,
                const std::vector<std::string> &from)
{
    for (const std::string &s : from) {
        if (std::find(to.begin(), to.end(), s) == to.end()) {
            to.push_back(s);
        }
    }
}


// decides from the rows of one kind; all of them name `user`
decision decide_kind(const lookup &facts, key_kind kind,
                     const std::string &user,
                     const std::vector<std::string> &required,
                     std::int64_t now)
{
    decision d;
    bool any_enabled = false;
    bool any_active = false;

    d.kind = kind;

    for (const grant &g : facts.grants) {
        if (g.kind != kind) {
            continue;
        }

        if (g.unusable) {
            d.why = reason::unknown;
            d.detail = "the matching row holds an unusable username";
            return d;
        }

        any_enabled = any_enabled || g.enabled;

        if (active(g, now)) {
            any_active = true;
            add_unique(d.groups, g.groups);
        }
    }

    if (!any_active) {
        d.why = any_enabled ? reason::expired : reason::disabled;
        d.groups.clear();
        return d;
    }

    if (!required.empty()
        && std::none_of(required.begin(), required.end(),
                        [&](const std::string &r) {
                            return std::find(d.groups.begin(),
                                             d.groups.end(), r)
                                   != d.groups.end();
                        }))
    {
        d.why = reason::group;
        d.groups.clear();
        return d;
    }

    d.why = reason::ok;
    d.username = user;
    return d;
}


// little-endian fixed-width integers and length-prefixed strings

void put_u64(std::string &out, std::uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
}


void put_u32(std::string &out, std::uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
}


// lengths and counts take four bytes: an entry of the cache stays small
void put_string(std::string &out, std::string_view s)
{
    put_u32(out, static_cast<std::uint32_t>(s.size()));
    out.append(s.data(), s.size());
}


class reader {
public:
    explicit reader(std::string_view bytes) : rest_(bytes) {}

    bool u64(std::uint64_t &v)
    {
        if (rest_.size() < 8) {
            return false;
        }

        v = 0;

        for (int i = 0; i < 8; i++) {
            v |= static_cast<std::uint64_t>(
                     static_cast<unsigned char>(rest_[i]))
                 << (8 * i);
        }

        rest_.remove_prefix(8);
        return true;
    }

    bool u32(std::uint32_t &v)
    {
        if (rest_.size() < 4) {
            return false;
        }

        v = 0;

        for (int i = 0; i < 4; i++) {
            v |= static_cast<std::uint32_t>(
                     static_cast<unsigned char>(rest_[i]))
                 << (8 * i);
        }

        rest_.remove_prefix(4);
        return true;
    }

    bool i64(std::int64_t &v)
    {
        std::uint64_t u;

        if (!u64(u)) {
            return false;
        }

        std::memcpy(&v, &u, sizeof(v));
        return true;
    }

    bool byte(std::uint8_t &v)
    {
        if (rest_.empty()) {
            return false;
        }

        v = static_cast<std::uint8_t>(rest_.front());
        rest_.remove_prefix(1);
        return true;
    }

    bool string(std::string &s)
    {
        std::uint32_t len;

        if (!u32(len) || len > rest_.size()) {
            return false;
        }

        s.assign(rest_.data(), len);
        rest_.remove_prefix(len);
        return true;
    }

    bool done() const { return rest_.empty(); }

private:
    std::string_view rest_;
};


constexpr std::uint8_t encoding_version = 2;

}  // namespace


std::string_view name_of(key_kind kind)
{
    return kind_names[static_cast<std::size_t>(kind)];
}


std::optional<key_kind> key_kind_named(std::string_view name)
{
    for (std::size_t i = 0; i < kind_names.size(); i++) {
        if (kind_names[i] == name) {
            return static_cast<key_kind>(i);
        }
    }

    return std::nullopt;
}


std::string_view name_of(reason why)
{
    return reason_names[static_cast<std::size_t>(why)];
}


bool usable_username(std::string_view name)
{
    if (name.empty() || name.size() > max_username) {
        return false;
    }

    return std::none_of(name.begin(), name.end(), [](char c) {
        unsigned char u = static_cast<unsigned char>(c);
        return u < 0x20 || u == 0x7f;
    });
}


bool schema_group_name(std::string_view name)
{
    if (name.empty() || name.front() == ' ' || name.back() == ' ') {
        return false;
    }

    std::size_t chars = 0;

    for (char c : name) {
        unsigned char u = static_cast<unsigned char>(c);

        if (u < 0x20 || u == 0x7f || std::strchr(",\"\\%", c) != nullptr) {
            return false;
        }

        // characters, as PostgreSQL's length() counts them in UTF-8
        chars += (u & 0xc0) != 0x80;
    }

    return chars <= 128;
}


std::vector<std::pair<key_kind, std::string>>
candidates(const cert_identity &id)
{
    std::vector<std::pair<key_kind, std::string>> out;

    if (!id.ok()) {
        return out;
    }

    out.emplace_back(key_kind::fingerprint, id.fingerprint);
    out.emplace_back(key_kind::spki, id.spki);

    if (!id.subject.empty()) {
        out.emplace_back(key_kind::subject, id.subject);
    }

    out.emplace_back(key_kind::issuer_serial, id.serial);

    if (id.san_uri.size() == 1) {
        out.emplace_back(key_kind::san_uri, id.san_uri.front());
    }

    for (const std::string &v : id.san_email) {
        out.emplace_back(key_kind::san_email, v);
    }

    for (const std::string &v : id.san_dns) {
        out.emplace_back(key_kind::san_dns, v);
    }

    return out;
}


decision decide(const lookup &facts, const std::vector<key_kind> &order,
                const std::vector<std::string> &required, std::int64_t now)
{
    decision d;

    if (facts.revoked) {
        d.why = reason::revoked;
        return d;
    }

    for (key_kind kind : order) {
        const std::string *user = nullptr;
        bool ambiguous = false;

        for (const grant &g : facts.grants) {
            if (g.kind != kind) {
                continue;
            }

            if (user == nullptr) {
                user = &g.username;

            } else if (*user != g.username) {
                ambiguous = true;
            }
        }

        if (user == nullptr) {
            continue;
        }

        if (ambiguous) {
            d.why = reason::unknown;
            d.kind = kind;
            d.detail = "rows of kind " + std::string(name_of(kind))
                       + " name more than one identity";
            return d;
        }

        return decide_kind(facts, kind, *user, required, now);
    }

    d.why = reason::unknown;
    return d;
}


std::string encode(const lookup &facts)
{
    std::string out;

    out.push_back(static_cast<char>(encoding_version));
    put_u64(out, static_cast<std::uint64_t>(facts.version));
    out.push_back(facts.revoked ? 1 : 0);
    put_u32(out, static_cast<std::uint32_t>(facts.grants.size()));

    for (const grant &g : facts.grants) {
        out.push_back(static_cast<char>(g.kind));
        out.push_back(static_cast<char>((g.enabled ? 1 : 0)
                                        | (g.unusable ? 2 : 0)));
        put_u64(out, static_cast<std::uint64_t>(g.valid_from));
        put_u64(out, static_cast<std::uint64_t>(g.valid_until));
        put_string(out, g.username);
        put_u32(out, static_cast<std::uint32_t>(g.groups.size()));

        for (const std::string &group : g.groups) {
            put_string(out, group);
        }
    }

    return out;
}


std::optional<lookup> decode(std::string_view bytes)
{
    reader in(bytes);
    lookup facts;
    std::uint8_t version, revoked;
    std::uint32_t count;

    if (!in.byte(version) || version != encoding_version
        || !in.i64(facts.version) || !in.byte(revoked) || revoked > 1
        || !in.u32(count) || count > bytes.size())
    {
        return std::nullopt;
    }

    facts.revoked = revoked == 1;

    for (std::uint32_t i = 0; i < count; i++) {
        grant g;
        std::uint8_t kind, flags;
        std::uint32_t groups;

        if (!in.byte(kind) || kind >= key_kind_count || !in.byte(flags)
            || flags > 3 || !in.i64(g.valid_from) || !in.i64(g.valid_until)
            || !in.string(g.username) || !in.u32(groups)
            || groups > bytes.size())
        {
            return std::nullopt;
        }

        g.kind = static_cast<key_kind>(kind);
        g.enabled = (flags & 1) != 0;
        g.unusable = (flags & 2) != 0;

        for (std::uint32_t k = 0; k < groups; k++) {
            std::string group;

            if (!in.string(group)) {
                return std::nullopt;
            }

            g.groups.push_back(std::move(group));
        }

        facts.grants.push_back(std::move(g));
    }

    if (!in.done()) {
        return std::nullopt;
    }

    return facts;
}

}  // namespace mtls
