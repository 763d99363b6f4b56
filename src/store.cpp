// The module's statements and the reading of their results.

#include "store.hpp"

#include <charconv>
#include <cstring>

#include "pg.hpp"

namespace mtls {
namespace store {

namespace {

// Groups come back as hex of their UTF-8 bytes, comma-separated: nothing
// in a group name can then be mistaken for a separator.
const char lookup_sql[] =
    "SELECT 'v', s.epoch, NULL, NULL, NULL, NULL, s.version::text"
    "  FROM mtls_identity.state s"
    " UNION ALL "
    "SELECT 'r', NULL, NULL, NULL, NULL, NULL, NULL"
    "  FROM mtls_identity.revocation r"
    " WHERE r.fingerprint = $1"
    "    OR (r.serial = $4 AND r.issuer_dn = $2"
    "        AND (r.issuer_key_id IS NULL OR r.issuer_key_id = $3))"
    " UNION ALL "
    "SELECT i.key_kind, i.username,"
    "       array_to_string(ARRAY("
    "           SELECT encode(convert_to(g.name, 'UTF8'), 'hex')"
    "             FROM unnest(i.groups) WITH ORDINALITY AS g(name, n)"
    "            ORDER BY g.n), ','),"
    "       i.enabled::text,"
    "       CASE WHEN i.valid_from = 'infinity'"
    "            THEN '9223372036854775807'"
    "            WHEN isfinite(i.valid_from)"
    "            THEN ceil(extract(epoch FROM i.valid_from))::bigint::text"
    "       END,"
    "       CASE WHEN i.valid_until = '-infinity'"
    "            THEN '-9223372036854775808'"
    "            WHEN isfinite(i.valid_until)"
    "            THEN floor(extract(epoch FROM i.valid_until))::bigint::text"
    "       END,"
    "       NULL"
    "  FROM unnest($5::text[], $6::text[]) AS k(kind, value)"
    "  JOIN mtls_identity.identity i"
    "    ON i.key_kind = k.kind AND i.key_value = k.value"
    " WHERE i.key_kind IN ('fingerprint', 'spki')"
    "    OR (i.issuer_dn = $2 AND i.issuer_key_id = $3)";

const char version_sql[] =
    "SELECT version, epoch FROM mtls_identity.state";

// 1001 rows at most: a listener further behind drops its whole cache
const char changes_sql[] =
    "SELECT version, keys FROM mtls_identity.change"
    " WHERE version > $1 ORDER BY version LIMIT 1001";


bool read_int(const char *text, std::int64_t &out)
{
    const char *end = text + std::strlen(text);
    auto [p, ec] = std::from_chars(text, end, out);

    return ec == std::errc() && p == end && p != text;
}


int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


bool read_groups(std::string_view text, std::vector<std::string> &out)
{
    while (!text.empty()) {
        std::size_t comma = text.find(',');
        std::string_view item = text.substr(0, comma);
        std::string group;

        if (item.size() % 2 != 0) {
            return false;
        }

        for (std::size_t i = 0; i < item.size(); i += 2) {
            int hi = hex_digit(item[i]);
            int lo = hex_digit(item[i + 1]);

            if (hi < 0 || lo < 0) {
                return false;
            }

            group.push_back(static_cast<char>(hi * 16 + lo));
        }

        out.push_back(std::move(group));

        if (comma == std::string_view::npos) {
            break;
        }

        text.remove_prefix(comma + 1);
    }

    return true;
}


// one identity row; false when it is not of the expected shape
bool read_grant(const PGresult *res, int row, key_kind kind, grant &g)
{
    g.kind = kind;
    g.username = PQgetvalue(res, row, 1);
    g.unusable = !usable_username(g.username);

    if (!PQgetisnull(res, row, 2)
        && !read_groups(PQgetvalue(res, row, 2), g.groups))
    {
        return false;
    }

    std::string_view enabled = PQgetvalue(res, row, 3);

    if (enabled != "true" && enabled != "false") {
        return false;
    }

    g.enabled = enabled == "true";

    if (!PQgetisnull(res, row, 4)
        && !read_int(PQgetvalue(res, row, 4), g.valid_from))
    {
        return false;
    }

    if (!PQgetisnull(res, row, 5)
        && !read_int(PQgetvalue(res, row, 5), g.valid_until))
    {
        return false;
    }

    return true;
}

}  // namespace


const char *const channel = "mtls_identity";

const char *const check_version =
    "DO $$ BEGIN"
    " IF coalesce((SELECT max(version)"
    "              FROM mtls_identity.schema_version), 0) < 2 THEN"
    "  RAISE EXCEPTION 'the mtls_identity schema is older than version 2:"
    " apply sql/schema.sql again';"
    " END IF;"
    " END $$";

const statement lookup = {"mtls_identity_lookup", lookup_sql, 6};
const statement version = {"mtls_identity_version", version_sql, 0};
const statement changes = {"mtls_identity_changes", changes_sql, 1};


std::vector<std::optional<std::string>>
lookup_params(const cert_identity &id)
{
    std::vector<std::string> kinds;
    std::vector<std::string> values;

    for (auto &[kind, value] : candidates(id)) {
        kinds.emplace_back(name_of(kind));
        values.push_back(std::move(value));
    }

    std::optional<std::string> key_id;

    if (!id.issuer_key_id.empty()) {
        key_id = id.issuer_key_id;
    }

    return {id.fingerprint, id.issuer, key_id, id.serial,
            pg::text_array(kinds), pg::text_array(values)};
}


std::optional<mtls::lookup> read_lookup(const PGresult *res,
                                        std::string &error)
{
    mtls::lookup facts;
    bool versioned = false;

    if (PQnfields(res) != 7) {
        error = "the lookup returned " + std::to_string(PQnfields(res))
                + " columns: is sql/schema.sql applied?";
        return std::nullopt;
    }

    for (int row = 0; row < PQntuples(res); row++) {
        std::string_view tag = PQgetvalue(res, row, 0);

        if (tag == "v") {
            versioned = read_int(PQgetvalue(res, row, 6), facts.version);
            facts.epoch = PQgetvalue(res, row, 1);

            if (!versioned) {
                error = "the change version cannot be read";
                return std::nullopt;
            }

            continue;
        }

        if (tag == "r") {
            facts.revoked = true;
            continue;
        }

        std::optional<key_kind> kind = key_kind_named(tag);
        grant g;

        if (!kind || !read_grant(res, row, *kind, g)) {
            error = "an identity row cannot be read";
            return std::nullopt;
        }

        facts.grants.push_back(std::move(g));
    }

    if (!versioned) {
        error = "mtls_identity.state has no row: is sql/schema.sql applied?";
        return std::nullopt;
    }

    return facts;
}


std::optional<state> read_version(const PGresult *res)
{
    state st;

    if (PQntuples(res) != 1 || PQnfields(res) != 2
        || !read_int(PQgetvalue(res, 0, 0), st.version)
        || PQgetisnull(res, 0, 1))
    {
        return std::nullopt;
    }

    st.epoch = PQgetvalue(res, 0, 1);
    return st;
}


std::optional<std::vector<change>> read_changes(const PGresult *res)
{
    std::vector<change> out;

    if (PQnfields(res) != 2) {
        return std::nullopt;
    }

    for (int row = 0; row < PQntuples(res); row++) {
        std::string payload = PQgetvalue(res, row, 0);

        payload.push_back(' ');
        payload += PQgetvalue(res, row, 1);

        std::optional<change> c = parse_change(payload);

        if (!c) {
            return std::nullopt;
        }

        out.push_back(std::move(*c));
    }

    return out;
}

}  // namespace store
}  // namespace mtls
