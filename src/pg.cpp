// A PostgreSQL client over libpq that never blocks.

#include "pg.hpp"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <charconv>

namespace mtls {
namespace pg {

namespace {

struct options_deleter {
    void operator()(PQconninfoOption *o) const noexcept
    {
        PQconninfoFree(o);
    }
};

struct message_deleter {
    void operator()(char *m) const noexcept { PQfreemem(m); }
};

struct addrinfo_deleter {
    void operator()(addrinfo *ai) const noexcept { freeaddrinfo(ai); }
};

using options = std::unique_ptr<PQconninfoOption, options_deleter>;
using message = std::unique_ptr<char, message_deleter>;
using addresses = std::unique_ptr<addrinfo, addrinfo_deleter>;


void ignore_notice(void *, const char *)
{
}


std::string one_line(std::string_view s)
{
    std::string out;

    // libpq ends lines with "\n" and indents hints with "\t"
    for (char c : s) {
        bool space = c == '\n' || c == '\t' || c == '\r' || c == ' ';

        if (!space) {
            out.push_back(c);

        } else if (!out.empty() && out.back() != ' ') {
            out.push_back(' ');
        }
    }

    while (!out.empty() && out.back() == ' ') {
        out.pop_back();
    }

    return out;
}


bool is_keyword(std::string_view word)
{
    options defaults(PQconndefaults());

    for (PQconninfoOption *o = defaults.get(); o && o->keyword; o++) {
        if (word == o->keyword) {
            return true;
        }
    }

    return false;
}


// libpq's parse errors quote what they could not read, which may hold a
// password, quotes included.  Keep a quoted part only when it is a
// keyword, one of the separators libpq's messages name, or the option
// name of "invalid connection option"; at the first other one, mask it
// and drop the rest of the message, since where a value with quotes in
// it ends cannot be told.
std::string scrub(std::string_view text)
{
    static constexpr std::string_view separators[] = {"=", "]", ":", "/"};
    std::string out;
    bool names_option = text.substr(0, 25) == "invalid connection option";

    while (!text.empty()) {
        std::size_t open = text.find('"');

        if (open == std::string_view::npos) {
            out.append(text);
            break;
        }

        out.append(text.substr(0, open + 1));

        std::size_t close = text.find('"', open + 1);
        std::string_view quoted = close == std::string_view::npos
                                  ? std::string_view()
                                  : text.substr(open + 1, close - open - 1);
        bool keep = close != std::string_view::npos
                    && (names_option || is_keyword(quoted)
                        || std::find(std::begin(separators),
                                     std::end(separators), quoted)
                           != std::end(separators));

        names_option = false;

        if (!keep) {
            out.append("...\"");
            break;
        }

        out.append(quoted);
        out.push_back('"');
        text.remove_prefix(close + 1);
    }

    return one_line(out);
}


std::vector<std::string> split_list(const std::string &s)
{
    std::vector<std::string> out;
    std::size_t start = 0;

    for (;;) {
        std::size_t comma = s.find(',', start);

        out.push_back(s.substr(start, comma - start));

        if (comma == std::string::npos) {
            return out;
        }

        start = comma + 1;
    }
}


// the first address of a host name, as text
std::string lookup_host(const std::string &name, std::string &error)
{
    addrinfo hints{};
    addrinfo *found = nullptr;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;

    int rc = getaddrinfo(name.c_str(), nullptr, &hints, &found);
    addresses owner(found);

    if (rc != 0 || found == nullptr) {
        error = "host \"" + name + "\" cannot be resolved: "
                + gai_strerror(rc);
        return "";
    }

    char text[NI_MAXHOST];

    rc = getnameinfo(found->ai_addr, found->ai_addrlen, text, sizeof(text),
                     nullptr, 0, NI_NUMERICHOST);
    if (rc != 0) {
        error = "host \"" + name + "\": " + gai_strerror(rc);
        return "";
    }

    return text;
}

}  // namespace


std::string message_of(const PGconn *conn)
{
    return one_line(PQerrorMessage(conn));
}


// the server's own words when it sent them, without its context lines
std::string message_of(const PGresult *res)
{
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

    if (primary != nullptr) {
        return one_line(primary);
    }

    return one_line(PQresultErrorMessage(res));
}


std::string text_array(const std::vector<std::string> &items)
{
    std::string out = "{";

    for (const std::string &item : items) {
        if (out.size() > 1) {
            out.push_back(',');
        }

        out.push_back('"');

        for (char c : item) {
            if (c == '"' || c == '\\') {
                out.push_back('\\');
            }

            out.push_back(c);
        }

        out.push_back('"');
    }

    out.push_back('}');
    return out;
}


// conninfo --------------------------------------------------------------

std::string conninfo::parse(std::string_view text)
{
    char *err = nullptr;
    std::string copy(text);
    options parsed(PQconninfoParse(copy.c_str(), &err));
    message owner(err);

    if (!parsed) {
        return err != nullptr ? scrub(err) : "out of memory";
    }

    params_.clear();

    for (PQconninfoOption *o = parsed.get(); o->keyword; o++) {
        if (o->val != nullptr) {
            params_.emplace_back(o->keyword, o->val);
        }
    }

    // a service file is read, and its host names resolved, only while
    // connecting, in a worker
    if (get("service") != nullptr) {
        return "\"service\" is not supported: write the parameters out";
    }

    std::string error = check_values();
    if (!error.empty()) {
        return error;
    }

    rebuild();
    return "";
}


// libpq checks these only while connecting; a worker would then fail
// every connection
std::string conninfo::check_values() const
{
    static const struct {
        const char *key;
        std::vector<std::string_view> allowed;
    } enums[] = {
        {"sslmode", {"disable", "allow", "prefer", "require", "verify-ca",
                     "verify-full"}},
        {"gssencmode", {"disable", "prefer", "require"}},
        {"channel_binding", {"disable", "prefer", "require"}},
        {"target_session_attrs", {"any", "read-write", "read-only",
                                  "primary", "standby", "prefer-standby"}},
    };

    for (const auto &e : enums) {
        const std::string *v = get(e.key);

        if (v != nullptr
            && std::find(e.allowed.begin(), e.allowed.end(), *v)
               == e.allowed.end())
        {
            return "invalid " + std::string(e.key) + " \"" + *v + "\"";
        }
    }

    if (const std::string *ports = get("port")) {
        for (const std::string &p : split_list(*ports)) {
            int port = 0;
            auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(),
                                             port);

            if (!p.empty()
                && (ec != std::errc() || end != p.data() + p.size()
                    || port < 1 || port > 65535))
            {
                return "invalid port \"" + p + "\"";
            }
        }
    }

    return "";
}


std::string conninfo::resolve()
{
    const std::string *host = get("host");

    if (host == nullptr || get("hostaddr") != nullptr) {
        return "";
    }

    std::string addrs;
    bool named = false;
    std::vector<std::string> hosts = split_list(*host);

    for (std::size_t i = 0; i < hosts.size(); i++) {
        const std::string &h = hosts[i];
        std::string addr;

        if (!h.empty() && h.front() != '/' && h.front() != '@') {
            std::string error;

            addr = lookup_host(h, error);
            if (addr.empty()) {
                return error;
            }

            named = true;
        }

        if (i > 0) {
            addrs.push_back(',');
        }

        addrs += addr;
    }

    if (named) {
        set("hostaddr", addrs);
    }

    return "";
}


std::string conninfo::summary() const
{
    std::string out;

    for (const char *key : {"host", "hostaddr", "port", "dbname", "user"}) {
        const std::string *v = get(key);

        if (v != nullptr) {
            if (!out.empty()) {
                out.push_back(' ');
            }

            out += key;
            out.push_back('=');
            out += *v;
        }
    }

    return out;
}


const std::string *conninfo::get(std::string_view key) const
{
    for (const auto &kv : params_) {
        if (kv.first == key) {
            return &kv.second;
        }
    }

    return nullptr;
}


void conninfo::set(std::string_view key, std::string value)
{
    for (auto &kv : params_) {
        if (kv.first == key) {
            kv.second = std::move(value);
            rebuild();
            return;
        }
    }

    params_.emplace_back(std::string(key), std::move(value));
    rebuild();
}


void conninfo::rebuild()
{
    keys_.clear();
    values_.clear();

    for (const auto &kv : params_) {
        keys_.push_back(kv.first.c_str());
        values_.push_back(kv.second.c_str());
    }

    keys_.push_back(nullptr);
    values_.push_back(nullptr);
}


// connection ------------------------------------------------------------

void connection::prepare(std::string name, std::string sql, int params)
{
    setup_.push_back({true, std::move(name), std::move(sql), params});
}


void connection::setup(std::string sql)
{
    setup_.push_back({false, std::string(), std::move(sql), 0});
}


void connection::start(const conninfo &info)
{
    close();

    error_.clear();
    conn_.reset(PQconnectStartParams(info.keywords(), info.values(), 0));

    if (!conn_) {
        fail("out of memory");
        return;
    }

    if (PQstatus(conn_.get()) == CONNECTION_BAD) {
        fail(message_of(conn_.get()));
        return;
    }

    // notices would go to stderr, that is nginx's error log, unformatted
    PQsetNoticeProcessor(conn_.get(), ignore_notice, nullptr);

    // libpq's own documentation: begin as if PQconnectPoll asked to write
    state_ = state::connecting;
    writing_ = true;
    in_setup_ = false;
    next_setup_ = 0;
    statement_error_.clear();
}


void connection::close()
{
    conn_.reset();
    state_ = state::closed;
    writing_ = false;
    flushing_ = false;
    in_setup_ = false;
    result_.reset();
    has_result_ = false;
    notifications_.clear();
}


void connection::fail(std::string why)
{
    error_ = std::move(why);
    state_ = state::failed;
    result_.reset();
    has_result_ = false;
    flushing_ = false;
}


int connection::socket() const
{
    return conn_ ? PQsocket(conn_.get()) : -1;
}


bool connection::wants_read() const
{
    switch (state_) {
    case state::connecting:
        return in_setup_ || !writing_;
    case state::idle:
    case state::busy:
        return true;
    default:
        return false;
    }
}


bool connection::wants_write() const
{
    switch (state_) {
    case state::connecting:
        return in_setup_ ? flushing_ : writing_;
    case state::busy:
        return flushing_;
    default:
        return false;
    }
}


void connection::step()
{
    if (state_ == state::connecting && !in_setup_) {
        connect_step();
        return;
    }

    if (state_ == state::connecting || state_ == state::busy
        || state_ == state::idle)
    {
        io_step();
    }
}


void connection::connect_step()
{
    switch (PQconnectPoll(conn_.get())) {

    case PGRES_POLLING_READING:
        writing_ = false;
        return;

    case PGRES_POLLING_WRITING:
        writing_ = true;
        return;

    case PGRES_POLLING_OK:
        break;

    default:
        fail(message_of(conn_.get()));
        return;
    }

    if (PQsetnonblocking(conn_.get(), 1) != 0) {
        fail(message_of(conn_.get()));
        return;
    }

    in_setup_ = true;
    writing_ = false;

    if (next_setup_ == setup_.size()) {
        in_setup_ = false;
        state_ = state::idle;
        return;
    }

    send_setup();
}


bool connection::send_setup()
{
    const command &cmd = setup_[next_setup_];

    statement_error_.clear();
    int sent = cmd.prepare
               ? PQsendPrepare(conn_.get(), cmd.name.c_str(),
                               cmd.sql.c_str(), cmd.params, nullptr)
               : PQsendQuery(conn_.get(), cmd.sql.c_str());

    if (sent != 1) {
        fail(message_of(conn_.get()));
        return false;
    }

    flushing_ = true;
    io_step();
    return state_ != state::failed;
}


bool connection::send(const std::string &name,
                      const std::vector<std::optional<std::string>> &params)
{
    if (state_ != state::idle) {
        return false;
    }

    std::vector<const char *> values;

    for (const auto &p : params) {
        values.push_back(p ? p->c_str() : nullptr);
    }

    result_.reset();
    has_result_ = false;
    statement_error_.clear();
    error_.clear();

    if (PQsendQueryPrepared(conn_.get(), name.c_str(),
                            static_cast<int>(values.size()), values.data(),
                            nullptr, nullptr, 0) != 1)
    {
        fail(message_of(conn_.get()));
        return false;
    }

    state_ = state::busy;
    flushing_ = true;
    io_step();
    return state_ != state::failed;
}


void connection::io_step()
{
    PGconn *c = conn_.get();

    if (flushing_) {
        int rc = PQflush(c);

        if (rc < 0) {
            fail(message_of(c));
            return;
        }

        flushing_ = rc == 1;
    }

    // reads once; with nothing to read it returns at once
    if (PQconsumeInput(c) != 1) {
        fail(message_of(c));
        return;
    }

    collect_notifications();

    if (state_ == state::idle) {
        if (PQstatus(c) == CONNECTION_BAD) {
            fail(message_of(c));
        }

        return;
    }

    while (!flushing_ && PQisBusy(c) == 0) {
        result r(PQgetResult(c));

        if (!r) {
            finish_command();
            return;
        }

        ExecStatusType st = PQresultStatus(r.get());

        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
            if (statement_error_.empty()) {
                statement_error_ = message_of(r.get());
            }

        } else if (!result_) {
            result_ = std::move(r);
        }
    }

    if (PQstatus(c) == CONNECTION_BAD) {
        fail(message_of(c));
    }
}


void connection::finish_command()
{
    if (in_setup_) {
        if (!statement_error_.empty()) {
            fail(statement_error_);
            return;
        }

        result_.reset();

        if (++next_setup_ < setup_.size()) {
            send_setup();
            return;
        }

        in_setup_ = false;
        state_ = state::idle;
        return;
    }

    if (!statement_error_.empty()) {
        result_.reset();
        error_ = statement_error_;
    }

    has_result_ = true;
    state_ = state::idle;

    if (PQstatus(conn_.get()) == CONNECTION_BAD) {
        fail(message_of(conn_.get()));
    }
}


void connection::collect_notifications()
{
    for (;;) {
        PGnotify *n = PQnotifies(conn_.get());

        if (n == nullptr) {
            return;
        }

        notifications_.push_back({n->relname, n->extra});
        PQfreemem(n);
    }
}


result connection::take_result()
{
    has_result_ = false;
    return std::move(result_);
}


std::vector<notification> connection::take_notifications()
{
    std::vector<notification> out(notifications_.begin(),
                                  notifications_.end());

    notifications_.clear();
    return out;
}

}  // namespace pg
}  // namespace mtls
