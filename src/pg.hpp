// A PostgreSQL client over libpq that never blocks and owns no event
// loop.
//
// A `connection` exposes its socket, whether it waits to read or to
// write, and a step function; whoever owns the event loop watches the
// socket and calls step() when it is ready (level-triggered: libpq reads
// at most once per call).  No host name is ever looked up here:
// `conninfo::resolve()` turns host names into addresses once, at
// configuration time.

#ifndef MTLS_IDENTITY_PG_HPP
#define MTLS_IDENTITY_PG_HPP

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <libpq-fe.h>

namespace mtls {
namespace pg {

struct result_deleter {
    void operator()(PGresult *r) const noexcept { PQclear(r); }
};

struct conn_deleter {
    void operator()(PGconn *c) const noexcept { PQfinish(c); }
};

using result = std::unique_ptr<PGresult, result_deleter>;
using conn_handle = std::unique_ptr<PGconn, conn_deleter>;


// Connection parameters, parsed and checked without connecting.
class conninfo {
public:
    // Parses a libpq conninfo string (key=value pairs or a URI).  Returns
    // "" on success, else a message that quotes no value: a value may be
    // a password.
    std::string parse(std::string_view text);

    // Looks up every host name and sets hostaddr, so that connecting
    // never resolves a name.  Host names starting with "/" or "@" are
    // socket directories and stay.  Returns "" or the failure.
    std::string resolve();

    // host, port, dbname and user, for log lines; never the password
    std::string summary() const;

    const std::string *get(std::string_view key) const;
    void set(std::string_view key, std::string value);

    // NULL-terminated arrays for PQconnectStartParams, valid while this
    // object lives and is not changed
    const char *const *keywords() const { return keys_.data(); }
    const char *const *values() const { return values_.data(); }

private:
    void rebuild();
    std::string check_values() const;

    std::vector<std::pair<std::string, std::string>> params_;
    std::vector<const char *> keys_{nullptr};
    std::vector<const char *> values_{nullptr};
};


struct notification {
    std::string channel;
    std::string payload;
};


class connection {
public:
    enum class state {
        closed,      // nothing started, or closed on purpose
        connecting,  // connecting, then running the set-up statements
        idle,        // ready for a statement
        busy,        // a statement is under way
        failed       // broken; error() says why; close() and start again
    };

    connection() = default;
    connection(const connection &) = delete;
    connection &operator=(const connection &) = delete;

    // A statement to prepare once connected, before the connection is
    // idle.  Set-up steps run in the order they were added, before
    // start().
    void prepare(std::string name, std::string sql, int params);

    // A plain statement to run once connected, such as SET or LISTEN.
    void setup(std::string sql);

    // Starts connecting.  The state becomes connecting, or failed.
    void start(const conninfo &info);

    // Closes the connection and forgets any statement under way.
    void close();

    // Sends a prepared statement with text parameters (nullopt is NULL).
    // Only when idle; returns false and fails the connection when libpq
    // refuses.
    bool send(const std::string &name,
              const std::vector<std::optional<std::string>> &params);

    // Advances whatever is under way: reads what arrived, writes what is
    // pending.  Call it whenever the socket is ready, and after start()
    // and send().
    void step();

    state status() const { return state_; }
    int socket() const;
    bool wants_read() const;
    bool wants_write() const;

    // Once a statement ended (idle again): its result, or nullptr with
    // error() set when the statement failed.
    bool has_result() const { return has_result_; }
    result take_result();

    bool has_notifications() const { return !notifications_.empty(); }
    std::vector<notification> take_notifications();

    const std::string &error() const { return error_; }

private:
    struct command {
        bool prepare;
        std::string name;
        std::string sql;
        int params;
    };

    void fail(std::string why);
    void connect_step();
    bool send_setup();
    void io_step();
    void collect_notifications();
    void finish_command();

    conn_handle conn_;
    state state_ = state::closed;
    bool writing_ = false;             // PQconnectPoll asked to write
    bool flushing_ = false;            // PQflush has more to send
    bool in_setup_ = false;

    std::vector<command> setup_;
    std::size_t next_setup_ = 0;

    result result_;
    bool has_result_ = false;
    std::string statement_error_;

    std::deque<notification> notifications_;
    std::string error_;
};


// libpq's message, on one line, without the trailing newline
std::string message_of(const PGconn *conn);
std::string message_of(const PGresult *res);

// A text[] literal for a statement parameter: {"a","b"} with \ and "
// escaped.
std::string text_array(const std::vector<std::string> &items);

}  // namespace pg
}  // namespace mtls

#endif
