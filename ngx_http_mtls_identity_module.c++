/*
 * ngx_http_mtls_identity_module: turns the TLS client certificate that
 * nginx verified into a vetted application identity.
 *
 * In the access phase it derives the certificate's identity keys, asks
 * PostgreSQL (through non-blocking libpq connections that nginx's event
 * loop drives) which identity they map to and whether the certificate
 * is revoked, and then denies the request or hands the identity to the
 * upstream in request headers.  In the post-read phase it removes every
 * inbound header a client could use to forge that identity.
 *
 * This file is the nginx glue.  The certificate, decision and database
 * logic live in src/, in plain C++ without nginx headers.  Everything
 * here but the module symbol has internal linkage; no C++ exception
 * leaves a function nginx calls.
 */

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include <cstdlib>
#include <memory>
#include <new>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "cert_identity.hpp"
#include "change.hpp"
#include "decision.hpp"
#include "header.hpp"
#include "pg.hpp"
#include "store.hpp"
#include "trust_check.hpp"


extern "C" {
extern ngx_module_t  ngx_http_mtls_identity_module;
}


namespace {

char *const  conf_error = static_cast<char *>(NGX_CONF_ERROR);

/* an X-Mtls-Identity-Groups value never grows past this many bytes */
constexpr std::size_t  groups_header_cap = 4096;


enum class mode_t : ngx_uint_t {
    off,
    on,
    report
};


/* where a directive was written, for checks that run after parsing */

struct conf_place_t {
    ngx_str_t   file;
    ngx_uint_t  line;
};


/*
 * Configuration objects that are C++ (vectors, strings) live outside the
 * pool and are deleted by a pool cleanup; the nginx conf structures only
 * point at them and stay trivially destructible.
 */

struct policy_t {
    std::vector<mtls::key_kind>  kinds;
    std::vector<std::string>     groups;
};


struct database_t {
    mtls::pg::conninfo  info;
    std::string         summary;       /* for log lines, no password */
};


/*
 * The shared cache: one lookup per certificate, keyed by its fingerprint,
 * in an rbtree and an LRU queue in a shared memory zone.  The rbtree uses
 * nginx's own string-node insert function, whose address every process
 * and every reload agrees on.
 */

constexpr uint32_t  cache_layout = 0x6d740002;   /* bump when changing */

struct cache_sh_t {
    uint32_t           layout;
    ngx_rbtree_t       rbtree;
    ngx_rbtree_node_t  sentinel;
    ngx_queue_t        lru;              /* most recently used first */
    int64_t            seen_version;     /* highest change applied */
    time_t             synced;           /* a listener last caught up */
    size_t             epoch_len;        /* the schema's epoch, or 0 */
    u_char             epoch[64];
    ngx_uint_t         entries;
    time_t             full_logged;      /* the last "zone is full" line */
};

struct cache_node_t {
    ngx_str_node_t     sn;               /* key: crc32 of the fingerprint */
    ngx_queue_t        lru;
    u_char             fingerprint[32];  /* SHA-256, as bytes */
    ngx_msec_t         expires;
    time_t             fetched;          /* when the database said so */
    int64_t            version;
    uint32_t           ntokens;
    uint32_t           len;              /* of the encoded lookup */
    uint64_t           tokens[1];        /* then the encoded lookup */
};

struct cache_t {
    ngx_str_t          name;
    ngx_shm_zone_t    *zone;
    ngx_slab_pool_t   *shpool;
    cache_sh_t        *sh;
    ngx_msec_t         ttl;
    ngx_msec_t         negative_ttl;
};


struct main_conf_t {
    int              ex_index;         /* SSL ex_data slot of identities */

    /* an mtls_identity directive appears in this http block */
    ngx_flag_t       configured;

    database_t      *db;
    conf_place_t     db_place;
    ngx_uint_t       connections;      /* per worker */
    ngx_uint_t       queue;            /* requests that may wait */
    ngx_msec_t       connect_timeout;
    ngx_msec_t       timeout;          /* a lookup, from start to answer */

    cache_t         *cache;
    ngx_msec_t       poll;             /* the change version, checked */
};


struct srv_conf_t {
    std::vector<std::string>  *strip;  /* normalised patterns */

    /* what the server's locations do, for the checks after parsing */
    conf_place_t     mode_place;       /* an "mtls_identity on|report" */
    conf_place_t     satisfy_place;    /* "on" under "satisfy any" */
    ngx_str_t        satisfy_location;
    ngx_array_t     *open_upstreams;   /* ngx_str_t: module off */
    unsigned         uses_module:1;
    unsigned         forwards:1;       /* identity headers upstream */
    unsigned         has_upstream:1;
    unsigned         name_keys:1;      /* maps by a name, not a hash */
};


struct loc_conf_t {
    ngx_uint_t       mode;
    conf_place_t     mode_place;
    policy_t        *policy;
    ngx_array_t     *kinds;            /* of ngx_str_t, as written */
    ngx_array_t     *groups;           /* of ngx_str_t */
    ngx_flag_t       headers;
    time_t           stale;            /* seconds; 0: deny on db error */
    conf_place_t     stale_place;
};

static_assert(std::is_trivially_destructible<main_conf_t>::value
              && std::is_trivially_destructible<srv_conf_t>::value
              && std::is_trivially_destructible<loc_conf_t>::value,
              "pool memory never runs destructors");


/*
 * The per-request state.  It lives in the request pool and is found again
 * through its pool cleanup after an internal redirect has cleared the
 * module context, so a lookup is made once per request whatever the
 * number of locations it passes through.
 */

enum class phase_t : ngx_uint_t {
    fresh,        /* nothing asked yet */
    waiting,      /* a lookup is under way */
    answered,     /* facts holds the database's answer */
    failed        /* the database could not answer */
};

struct link_t;

struct request_state_t {
    ngx_http_request_t  *request;
    phase_t              phase;

    ngx_str_t            facts;        /* mtls::encode()d lookup */

    /* the waiting request: in the worker's queue, or on a link */
    ngx_queue_t          queue;
    ngx_event_t          timer;
    link_t              *link;
    unsigned             queued:1;

    /* the outcome for the location that decided last */
    unsigned             decided:1;
    unsigned             allowed:1;
    mtls::reason         why;
    mode_t               mode;
    int                  kind;         /* mtls::key_kind, or -1 */
    ngx_str_t            username;     /* percent-encoded */
    ngx_str_t            groups;       /* likewise, comma-separated */
    const char          *cache;        /* "hit", "miss", "stale" or null */
};

static_assert(std::is_trivially_destructible<request_state_t>::value,
              "request pool memory never runs destructors");


/* one database connection of a worker, and what waits on it */

struct link_t {
    mtls::pg::connection   pg;
    bool                   listener = false; /* LISTENs for changes */
    ngx_connection_t      *conn = nullptr;   /* nginx's view of pg's socket */
    ngx_event_t            timer{};          /* connect, query or retry */
    ngx_log_t              log{};
    request_state_t       *waiter = nullptr;
    ngx_msec_t             backoff = 0;
    ngx_uint_t             failures = 0;     /* in a row */
    bool                   draining = false; /* its request went away */
};


struct worker_t {
    main_conf_t                          *mcf;
    ngx_log_t                            *log;
    std::vector<std::unique_ptr<link_t>>  links;
    ngx_queue_t                           waiting;
    ngx_uint_t                            nwaiting = 0;
    bool                                  exiting = false;

    /* the change listener, and where its resynchronisation stands */
    std::unique_ptr<link_t>               listener;
    ngx_event_t                           poll{};
    enum class sync_t { none, version, changes } sync = sync_t::none;
    int64_t                               sync_from = 0;
    int64_t                               sync_to = 0;
    bool                                  sync_again = false;
    bool                                  listening = false;
};

worker_t  *worker;


/*
 * Sets log->action, so that error lines end in "while <action>", for the
 * lifetime of the object, and puts the previous one back.
 */

class log_action {
public:
    log_action(ngx_log_t *log, const char *action)
        : log_(log), saved_(log->action)
    {
        /* nginx declares action as char *, but never writes through it */
        log_->action = const_cast<char *>(action);
    }

    ~log_action() { log_->action = saved_; }

    log_action(const log_action &) = delete;
    log_action &operator=(const log_action &) = delete;

private:
    ngx_log_t  *log_;
    char       *saved_;
};


enum class field_t : uintptr_t {
    fingerprint,
    spki,
    subject,
    issuer,
    serial,
    san_uri,
    san_email,
    san_dns,
    identity,
    groups,
    key,
    status,
    reason,
    cache
};


/* the headers the module sets, lower-cased, with their hashes */

struct own_header_t {
    ngx_str_t   name;
    ngx_str_t   lowcase;
    ngx_uint_t  hash;
};

own_header_t  own_headers[] = {
    { ngx_string("X-Mtls-Identity"), ngx_string("x-mtls-identity"), 0 },
    { ngx_string("X-Mtls-Identity-Groups"),
      ngx_string("x-mtls-identity-groups"), 0 },
    { ngx_string("X-Mtls-Identity-Key"), ngx_string("x-mtls-identity-key"),
      0 },
    { ngx_string("X-Mtls-Identity-Fingerprint"),
      ngx_string("x-mtls-identity-fingerprint"), 0 },
};


/* the strip list's default, besides every X-Mtls-Identity* header */

const char  *default_strip[] = {
    "Remote-User",
    "X-Remote-User",
    "X-SSL-Client-*",
    "X-Forwarded-Client-Cert",
    "Client-Cert",
    "Client-Cert-Chain",
};


ngx_int_t add_variables(ngx_conf_t *cf);
ngx_int_t postconfiguration(ngx_conf_t *cf);
void *create_main_conf(ngx_conf_t *cf);
char *init_main_conf(ngx_conf_t *cf, void *conf);
void *create_srv_conf(ngx_conf_t *cf);
char *merge_srv_conf(ngx_conf_t *cf, void *parent, void *child);
void *create_loc_conf(ngx_conf_t *cf);
char *merge_loc_conf(ngx_conf_t *cf, void *parent, void *child);
ngx_int_t init_process(ngx_cycle_t *cycle);
void exit_process(ngx_cycle_t *cycle);

char *set_db(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_mode(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_keys(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_groups(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_strip(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_flag(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_cache(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_poll(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_on_db_error(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);


ngx_command_t  commands[] = {

    { ngx_string("mtls_identity_db"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      set_db,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      nullptr },

    { ngx_string("mtls_identity"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      set_mode,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      nullptr },

    { ngx_string("mtls_identity_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      set_keys,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      nullptr },

    { ngx_string("mtls_identity_require_group"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      set_groups,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      nullptr },

    { ngx_string("mtls_identity_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      set_flag,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(loc_conf_t, headers),
      nullptr },

    { ngx_string("mtls_identity_strip_header"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_1MORE,
      set_strip,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      nullptr },

    { ngx_string("mtls_identity_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      set_cache,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      nullptr },

    { ngx_string("mtls_identity_poll"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      set_poll,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(main_conf_t, poll),
      nullptr },

    { ngx_string("mtls_identity_on_db_error"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      set_on_db_error,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      nullptr },

    ngx_null_command
};


ngx_http_module_t  module_ctx = {
    add_variables,                     /* preconfiguration */
    postconfiguration,                 /* postconfiguration */

    create_main_conf,                  /* create main configuration */
    init_main_conf,                    /* init main configuration */

    create_srv_conf,                   /* create server configuration */
    merge_srv_conf,                    /* merge server configuration */

    create_loc_conf,                   /* create location configuration */
    merge_loc_conf                     /* merge location configuration */
};


/* C++ objects owned by a pool: deleted when the pool is destroyed */

template <typename T>
void
delete_object(void *data)
{
    delete static_cast<T *>(data);
}


template <typename T, typename... Args>
T *
pool_new(ngx_pool_t *pool, Args &&... args)
{
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == nullptr) {
        return nullptr;
    }

    T *obj = new (std::nothrow) T(std::forward<Args>(args)...);
    if (obj == nullptr) {
        return nullptr;
    }

    cln->handler = delete_object<T>;
    cln->data = obj;

    return obj;
}


ngx_str_t
pool_string(ngx_pool_t *pool, const std::string &s)
{
    ngx_str_t  out = ngx_null_string;

    if (s.empty()) {
        return out;
    }

    out.data = static_cast<u_char *>(ngx_pnalloc(pool, s.size()));
    if (out.data != nullptr) {
        ngx_memcpy(out.data, s.data(), s.size());
        out.len = s.size();
    }

    return out;
}


main_conf_t *
main_conf(ngx_http_request_t *r)
{
    return static_cast<main_conf_t *>(
        ngx_http_get_module_main_conf(r, ngx_http_mtls_identity_module));
}


/* ---------------------------------------------------------------------
 * The certificate
 */

enum class cert_state_t {
    none,         /* no certificate, or not a TLS connection */
    unverified,   /* presented, but nginx's verification failed */
    verified
};


/*
 * What the module keeps of a connection's peer certificate on its SSL
 * object: the identity, and what the lookups and the cache derive from
 * it, each made once per connection when first needed.
 */

struct peer_t {
    mtls::cert_identity                      id;
    u_char                                   fingerprint[32];
    std::vector<std::optional<std::string>>  params;     /* of a lookup */
    std::vector<mtls::key_token>             tokens;     /* for the cache */
    bool                                     have_params = false;
    bool                                     have_tokens = false;

    const std::vector<std::optional<std::string>> &lookup_params()
    {
        if (!have_params) {
            params = mtls::store::lookup_params(id);
            have_params = true;
        }

        return params;
    }

    const std::vector<mtls::key_token> &key_tokens()
    {
        if (!have_tokens) {
            tokens = mtls::tokens_of(id);
            have_tokens = true;
        }

        return tokens;
    }
};


void
free_identity(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
    long argl, void *argp)
{
    delete static_cast<peer_t *>(ptr);
}


void
free_ex_index(void *data)
{
    CRYPTO_free_ex_index(CRYPTO_EX_INDEX_SSL,
                         static_cast<main_conf_t *>(data)->ex_index);
}


/* lowercase hex into bytes; returns how many bytes, or 0 */

size_t
hex_decode(u_char *out, const std::string &hex)
{
    for (size_t i = 0; i + 1 < hex.size(); i += 2) {
        ngx_int_t b = ngx_hextoi(reinterpret_cast<u_char *>(
                                     const_cast<char *>(hex.data() + i)), 2);
        if (b == NGX_ERROR) {
            return 0;
        }

        out[i / 2] = static_cast<u_char>(b);
    }

    return hex.size() / 2;
}


bool
same_string(const ngx_str_t &a, const ngx_str_t &b)
{
    return a.len == b.len && ngx_strncmp(a.data, b.data, a.len) == 0;
}


/*
 * Whether the handshake verified the certificate with the trust settings
 * (CAs, CRL, depth and OCSP) of the server that handles the request.
 * Without SNI the handshake uses the default server's settings, and
 * nothing else compares them with those of the server Host picks (with
 * SNI, nginx refuses a mismatch with 421 itself).
 */

bool
verified_for_this_server(ngx_http_request_t *r, SSL *ssl)
{
    auto *mine = static_cast<ngx_http_ssl_srv_conf_t *>(
        ngx_http_get_module_srv_conf(r, ngx_http_ssl_module));
    auto *used = static_cast<ngx_http_ssl_srv_conf_t *>(
        SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl),
                            ngx_ssl_server_conf_index));

    if (used == mine) {
        return true;
    }

    return used != nullptr
           && same_string(used->client_certificate, mine->client_certificate)
           && same_string(used->trusted_certificate,
                          mine->trusted_certificate)
           && same_string(used->crl, mine->crl)
           && used->verify_depth == mine->verify_depth
           && used->ocsp == mine->ocsp
           && same_string(used->ocsp_responder, mine->ocsp_responder);
}


/*
 * Whether the connection carries a certificate that nginx verified, and
 * its identity, derived on first use and kept on the SSL object: a
 * resumed session keeps the peer's leaf, and every HTTP/2 stream of the
 * connection shares it.  *id is nullptr unless the state is verified and
 * memory allowed the keys to be derived.  Throws nothing.
 */

cert_state_t
connection_identity(ngx_http_request_t *r, const mtls::cert_identity **id)
{
    ngx_connection_t  *c = r->connection;
    const char        *ocsp;

    *id = nullptr;

    if (c->ssl == nullptr) {
        return cert_state_t::none;
    }

    SSL *ssl = c->ssl->connection;

    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (cert == nullptr) {
        return cert_state_t::none;
    }

    /* what nginx itself calls SUCCESS in $ssl_client_verify */

    if (SSL_get_verify_result(ssl) != X509_V_OK
        || ngx_ssl_ocsp_get_status(c, &ocsp) != NGX_OK
        || !verified_for_this_server(r, ssl))
    {
        return cert_state_t::unverified;
    }

    main_conf_t *mcf = main_conf(r);

    auto *found = static_cast<peer_t *>(SSL_get_ex_data(ssl, mcf->ex_index));

    if (found != nullptr) {
        *id = &found->id;
        return cert_state_t::verified;
    }

    log_action  action(c->log, "deriving the client certificate identity");

    try {
        found = new peer_t();
        found->id = mtls::derive_identity(cert);

    } catch (const std::bad_alloc &) {
        delete found;
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "mtls identity: out of memory");
        return cert_state_t::verified;
    }

    /* the fingerprint as bytes: the cache's key */

    if (found->id.fingerprint.size() != 64
        || hex_decode(found->fingerprint, found->id.fingerprint) != 32)
    {
        ngx_memzero(found->fingerprint, sizeof(found->fingerprint));
    }

    if (SSL_set_ex_data(ssl, mcf->ex_index, found) != 1) {
        delete found;
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "mtls identity: SSL_set_ex_data() failed");
        return cert_state_t::verified;
    }

    if (!found->id.ok()) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "mtls identity: certificate %s yields no identity: %s",
                      found->id.fingerprint.c_str(),
                      found->id.error.c_str());
    }

    *id = &found->id;
    return cert_state_t::verified;
}


/*
 * The peer of a connection whose identity connection_identity() gave;
 * nullptr otherwise.
 */

peer_t *
connection_peer(ngx_http_request_t *r)
{
    ngx_connection_t  *c = r->connection;

    if (c->ssl == nullptr) {
        return nullptr;
    }

    return static_cast<peer_t *>(
        SSL_get_ex_data(c->ssl->connection, main_conf(r)->ex_index));
}


/* ---------------------------------------------------------------------
 * Request headers
 */

/*
 * A position in an ngx_list_t, with the part before it: removing an
 * element may unlink the part that held it.
 */

struct list_cursor_t {
    ngx_list_t       *list;
    ngx_list_part_t  *prev;
    ngx_list_part_t  *part;
    ngx_uint_t        i;

    explicit list_cursor_t(ngx_list_t *l)
        : list(l), prev(nullptr), part(&l->part), i(0) {}

    /* the element at the cursor, or nullptr at the end */
    void *get()
    {
        while (i >= part->nelts) {
            if (part->next == nullptr) {
                return nullptr;
            }

            prev = part;
            part = part->next;
            i = 0;
        }

        return static_cast<u_char *>(part->elts) + i * list->size;
    }
};


/*
 * Removes the element at the cursor without moving any other element:
 * nginx keeps pointers into the header list (r->headers_in.host and the
 * like), so the part is split around the element instead.  Two rules of
 * nginx's lists are kept: a loop over the parts reads the first element
 * of every part after the first, so none of them may be empty; and
 * ngx_list_push() writes into the last part until it holds nalloc
 * elements, which a split part has no room for, so nalloc is lowered to
 * what the last part holds and the next push starts a new part.
 * Afterwards the cursor's get() returns the element that followed.
 */

ngx_int_t
remove_element(ngx_pool_t *pool, list_cursor_t &cur)
{
    ngx_list_t       *list = cur.list;
    ngx_list_part_t  *part = cur.part;
    bool              first = part == &list->part;
    bool              last = list->last == part;

    if (cur.i + 1 < part->nelts) {
        auto *rest = static_cast<ngx_list_part_t *>(
            ngx_palloc(pool, sizeof(ngx_list_part_t)));
        if (rest == nullptr) {
            return NGX_ERROR;
        }

        rest->elts = static_cast<u_char *>(part->elts)
                     + (cur.i + 1) * list->size;
        rest->nelts = part->nelts - cur.i - 1;
        rest->next = part->next;

        part->nelts = cur.i;
        part->next = rest;

        if (last) {
            list->last = rest;
        }

    } else {
        part->nelts--;
    }

    if (part->nelts == 0 && !first) {
        cur.prev->next = part->next;

        if (list->last == part) {
            list->last = cur.prev;
        }

        cur.part = cur.prev;
        cur.i = cur.prev->nelts;
    }

    if (last) {
        list->nalloc = ngx_max(list->last->nelts, 1);
    }

    return NGX_OK;
}


bool
is_own_header(const ngx_table_elt_t *h)
{
    for (const own_header_t &own : own_headers) {
        if (h->key.data == own.name.data) {
            return true;
        }
    }

    return false;
}


/*
 * Removes every reserved header from the request: those a client sent,
 * and after an internal redirect the module's own from the location
 * before, which the new location sets again if it allows.
 */

ngx_int_t
strip_reserved(ngx_http_request_t *r)
{
    auto *scf = static_cast<srv_conf_t *>(
        ngx_http_get_module_srv_conf(r, ngx_http_mtls_identity_module));

    log_action     action(r->connection->log,
                          "removing reserved client headers");
    list_cursor_t  cur(&r->headers_in.headers);

    while (auto *h = static_cast<ngx_table_elt_t *>(cur.get())) {
        std::string_view name(reinterpret_cast<char *>(h->key.data),
                              h->key.len);

        if (!mtls::is_reserved_header(name, *scf->strip)) {
            cur.i++;
            continue;
        }

        if (!is_own_header(h)) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "mtls identity: removed client header \"%V\"",
                          &h->key);
        }

        if (remove_element(r->pool, cur) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * The post-read phase: every reserved inbound header goes.  The same
 * handler runs in the preaccess phase for internal redirects: a request
 * nginx refused before the post-read phase (a missing certificate under
 * "ssl_verify_client on", a malformed header, plain HTTP on a TLS port)
 * and sends on with error_page never passed it, and after any redirect
 * the headers the location before set must go.
 */

ngx_int_t
strip_handler(ngx_http_request_t *r)
{
    if (!main_conf(r)->configured || r != r->main) {
        return NGX_DECLINED;
    }

    return strip_reserved(r) == NGX_OK ? NGX_DECLINED
                                       : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


ngx_int_t
strip_again_handler(ngx_http_request_t *r)
{
    return r->internal ? strip_handler(r) : NGX_DECLINED;
}


/* adds the module's identity headers of an allowed request */

ngx_int_t
set_identity_headers(ngx_http_request_t *r, request_state_t *st,
    const mtls::cert_identity &id)
{
    std::string_view  kind = mtls::name_of(
                                 static_cast<mtls::key_kind>(st->kind));
    ngx_str_t         values[4];

    values[0] = st->username;
    values[1] = st->groups;
    values[2].data = reinterpret_cast<u_char *>(
        const_cast<char *>(kind.data()));
    values[2].len = kind.size();
    values[3] = pool_string(r->pool, id.fingerprint);

    for (std::size_t n = 0; n < 4; n++) {
        if (values[n].len == 0) {
            continue;
        }

        auto *h = static_cast<ngx_table_elt_t *>(
            ngx_list_push(&r->headers_in.headers));
        if (h == nullptr) {
            return NGX_ERROR;
        }

        h->key = own_headers[n].name;
        h->lowcase_key = own_headers[n].lowcase.data;
        h->hash = own_headers[n].hash;
        h->value = values[n];
    }

    return NGX_OK;
}


/* ---------------------------------------------------------------------
 * The request state
 */

void request_state_cleanup(void *data);


request_state_t *
find_state(ngx_http_request_t *r)
{
    r = r->main;

    auto *st = static_cast<request_state_t *>(
        ngx_http_get_module_ctx(r, ngx_http_mtls_identity_module));

    if (st != nullptr || !r->internal) {
        return st;
    }

    /* an internal redirect cleared the context; the pool still has it */

    for (ngx_pool_cleanup_t *cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == request_state_cleanup) {
            st = static_cast<request_state_t *>(cln->data);
            ngx_http_set_ctx(r, st, ngx_http_mtls_identity_module);
            return st;
        }
    }

    return nullptr;
}


request_state_t *
create_state(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool,
                                                   sizeof(request_state_t));
    if (cln == nullptr) {
        return nullptr;
    }

    auto *st = static_cast<request_state_t *>(cln->data);

    ngx_memzero(st, sizeof(request_state_t));
    st->request = r;
    st->kind = -1;

    cln->handler = request_state_cleanup;

    ngx_http_set_ctx(r, st, ngx_http_mtls_identity_module);

    return st;
}


/* ---------------------------------------------------------------------
 * The shared cache
 */

cache_node_t *
cache_find_locked(cache_t *cache, const u_char *fingerprint)
{
    ngx_str_t  name;

    name.data = const_cast<u_char *>(fingerprint);
    name.len = sizeof(cache_node_t::fingerprint);

    ngx_str_node_t *sn = ngx_str_rbtree_lookup(
        &cache->sh->rbtree, &name, ngx_crc32_short(name.data, name.len));

    /* the string node is the first member */
    return reinterpret_cast<cache_node_t *>(sn);
}


void
cache_remove_locked(cache_t *cache, cache_node_t *node)
{
    ngx_queue_remove(&node->lru);
    ngx_rbtree_delete(&cache->sh->rbtree, &node->sn.node);
    ngx_slab_free_locked(cache->shpool, node);
    cache->sh->entries--;
}


/*
 * Copies the cached lookup of a certificate into the request pool.  With
 * max_age < 0 only an entry within its ttl will do; otherwise any entry
 * known to be current at most max_age seconds ago: read from the
 * database then, or confirmed since by a change listener that had caught
 * up (while one listens, every change evicts what it alters).  The
 * buffer is allocated before the lock is taken: nothing under the lock
 * reaches a system call.
 */

bool
cache_get(ngx_http_request_t *r, cache_t *cache, const u_char *fingerprint,
    time_t max_age, ngx_str_t *out)
{
    size_t  room = 1024;

    for (int attempt = 0; attempt < 2; attempt++) {
        auto *buf = static_cast<u_char *>(ngx_pnalloc(r->pool, room));
        if (buf == nullptr) {
            return false;
        }

        ngx_shmtx_lock(&cache->shpool->mutex);

        cache_node_t *node = cache_find_locked(cache, fingerprint);

        bool usable = node != nullptr
                      && (max_age < 0
                          ? (ngx_msec_int_t) (node->expires
                                              - ngx_current_msec) > 0
                          : ngx_time() - ngx_max(node->fetched,
                                                 cache->sh->synced)
                            <= max_age);

        if (!usable) {
            ngx_shmtx_unlock(&cache->shpool->mutex);
            return false;
        }

        if (node->len > room) {
            room = node->len;
            ngx_shmtx_unlock(&cache->shpool->mutex);
            continue;
        }

        ngx_memcpy(buf, node->tokens + node->ntokens, node->len);
        out->data = buf;
        out->len = node->len;

        ngx_queue_remove(&node->lru);
        ngx_queue_insert_head(&cache->sh->lru, &node->lru);

        ngx_shmtx_unlock(&cache->shpool->mutex);
        return true;
    }

    return false;
}


/* keeps what the database said about a certificate */

void
cache_put(cache_t *cache, peer_t &peer, const mtls::lookup &facts,
    const std::string &bytes, ngx_log_t *log)
{
    bool        negative = facts.revoked || facts.grants.empty();
    ngx_msec_t  ttl = negative ? cache->negative_ttl : cache->ttl;

    if (ttl == 0) {
        return;
    }

    const std::vector<mtls::key_token> &tokens = peer.key_tokens();
    size_t size = offsetof(cache_node_t, tokens)
                  + tokens.size() * sizeof(uint64_t) + bytes.size();
    bool   full = false;

    /* a lookup this big would push out too many others: not kept */

    if (size > cache->zone->shm.size / 8) {
        return;
    }

    ngx_shmtx_lock(&cache->shpool->mutex);

    cache_sh_t *sh = cache->sh;

    /*
     * a change after this answer was read may alter it, or it comes from
     * another copy of the schema than the one the listeners follow: keep
     * nothing
     */

    if (facts.version < sh->seen_version || sh->epoch_len == 0
        || facts.epoch.size() != sh->epoch_len
        || ngx_memcmp(facts.epoch.data(), sh->epoch, sh->epoch_len) != 0)
    {
        ngx_shmtx_unlock(&cache->shpool->mutex);
        return;
    }

    cache_node_t *node = cache_find_locked(cache, peer.fingerprint);
    if (node != nullptr) {
        cache_remove_locked(cache, node);
    }

    node = static_cast<cache_node_t *>(
        ngx_slab_alloc_locked(cache->shpool, size));

    /* room from the least recently used; one lookup too big for the
       zone must not empty it */

    for (int n = 0; node == nullptr && n < 16 && !ngx_queue_empty(&sh->lru);
         n++)
    {
        ngx_queue_t *q = ngx_queue_last(&sh->lru);

        cache_remove_locked(cache, ngx_queue_data(q, cache_node_t, lru));
        node = static_cast<cache_node_t *>(
            ngx_slab_alloc_locked(cache->shpool, size));
    }

    if (node == nullptr) {
        full = ngx_time() - sh->full_logged >= 60;

        if (full) {
            sh->full_logged = ngx_time();
        }

    } else {
        ngx_memcpy(node->fingerprint, peer.fingerprint,
                   sizeof(node->fingerprint));
        node->sn.str.data = node->fingerprint;
        node->sn.str.len = sizeof(node->fingerprint);
        node->sn.node.key = ngx_crc32_short(node->fingerprint,
                                            sizeof(node->fingerprint));
        node->expires = ngx_current_msec + ttl;
        node->fetched = ngx_time();
        node->version = facts.version;
        node->ntokens = static_cast<uint32_t>(tokens.size());
        node->len = static_cast<uint32_t>(bytes.size());

        ngx_memcpy(node->tokens, tokens.data(),
                   tokens.size() * sizeof(uint64_t));
        ngx_memcpy(node->tokens + node->ntokens, bytes.data(),
                   bytes.size());

        ngx_rbtree_insert(&sh->rbtree, &node->sn.node);
        ngx_queue_insert_head(&sh->lru, &node->lru);
        sh->entries++;
    }

    ngx_shmtx_unlock(&cache->shpool->mutex);

    if (full) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "mtls identity: cache zone \"%V\" cannot hold a "
                      "lookup of %uz bytes; the lookup is not cached",
                      &cache->name, size);
    }
}


/* evicts what a change may alter; returns how many entries went */

ngx_uint_t
cache_apply(cache_t *cache, const mtls::change &c)
{
    ngx_uint_t  evicted = 0;

    ngx_shmtx_lock(&cache->shpool->mutex);

    cache_sh_t   *sh = cache->sh;
    ngx_queue_t  *q = ngx_queue_head(&sh->lru);

    while (q != ngx_queue_sentinel(&sh->lru)) {
        auto *node = ngx_queue_data(q, cache_node_t, lru);
        bool  hit = c.everything;

        q = ngx_queue_next(q);

        for (uint32_t i = 0; !hit && i < node->ntokens; i++) {
            for (mtls::key_token t : c.tokens) {
                if (node->tokens[i] == t) {
                    hit = true;
                    break;
                }
            }
        }

        if (hit) {
            cache_remove_locked(cache, node);
            evicted++;
        }
    }

    if (c.version > sh->seen_version) {
        sh->seen_version = c.version;
    }

    ngx_shmtx_unlock(&cache->shpool->mutex);

    return evicted;
}


/*
 * The schema the listeners follow is another one (recreated, or another
 * database): drop everything and start from its epoch and version.
 * Returns how many entries went.
 */

ngx_uint_t
cache_restart(cache_t *cache, const mtls::store::state &db)
{
    ngx_uint_t  evicted = 0;

    ngx_shmtx_lock(&cache->shpool->mutex);

    cache_sh_t  *sh = cache->sh;

    while (!ngx_queue_empty(&sh->lru)) {
        cache_remove_locked(cache, ngx_queue_data(ngx_queue_head(&sh->lru),
                                                  cache_node_t, lru));
        evicted++;
    }

    sh->seen_version = db.version;
    sh->epoch_len = ngx_min(db.epoch.size(), sizeof(sh->epoch));
    ngx_memcpy(sh->epoch, db.epoch.data(), sh->epoch_len);

    /* an epoch too long to keep never matches: nothing is cached */
    if (db.epoch.size() > sizeof(sh->epoch)) {
        sh->epoch_len = 0;
    }

    ngx_shmtx_unlock(&cache->shpool->mutex);

    return evicted;
}


bool
cache_same_epoch(cache_t *cache, const std::string &epoch)
{
    ngx_shmtx_lock(&cache->shpool->mutex);

    cache_sh_t *sh = cache->sh;
    bool same = sh->epoch_len != 0 && epoch.size() == sh->epoch_len
                && ngx_memcmp(epoch.data(), sh->epoch, sh->epoch_len) == 0;

    ngx_shmtx_unlock(&cache->shpool->mutex);

    return same;
}


/* a listener has applied every change up to now */

void
cache_synced(cache_t *cache)
{
    ngx_shmtx_lock(&cache->shpool->mutex);
    cache->sh->synced = ngx_time();
    ngx_shmtx_unlock(&cache->shpool->mutex);
}


int64_t
cache_seen_version(cache_t *cache)
{
    ngx_shmtx_lock(&cache->shpool->mutex);
    int64_t v = cache->sh->seen_version;
    ngx_shmtx_unlock(&cache->shpool->mutex);

    return v;
}


/*
 * The zone is kept across reloads while its name and size stay; a layout
 * this code does not know (another version of the module) is left to the
 * processes that use it, and the cache starts empty beside it.
 */

ngx_int_t
cache_init_zone(ngx_shm_zone_t *zone, void *data)
{
    auto *cache = static_cast<cache_t *>(zone->data);
    auto *shpool = reinterpret_cast<ngx_slab_pool_t *>(zone->shm.addr);
    auto *sh = static_cast<cache_sh_t *>(shpool->data);

    cache->shpool = shpool;

    if (sh != nullptr && sh->layout == cache_layout) {
        cache->sh = sh;
        return NGX_OK;
    }

    /*
     * TODO(cache): the other layout's entries stay allocated until nginx
     * restarts; free them once no process of that version can be running.
     */

    if (sh != nullptr) {
        ngx_log_error(NGX_LOG_NOTICE, zone->shm.log, 0,
                      "mtls identity: cache zone \"%V\" was laid out by "
                      "another version of the module; starting empty",
                      &cache->name);
    }

    sh = static_cast<cache_sh_t *>(ngx_slab_alloc(shpool,
                                                  sizeof(cache_sh_t)));
    if (sh == nullptr) {
        return NGX_ERROR;
    }

    ngx_memzero(sh, sizeof(cache_sh_t));
    sh->layout = cache_layout;
    ngx_rbtree_init(&sh->rbtree, &sh->sentinel,
                    ngx_str_rbtree_insert_value);
    ngx_queue_init(&sh->lru);

    shpool->data = sh;
    cache->sh = sh;

    size_t len = sizeof(" in mtls_identity_cache zone \"\"") + cache->name.len;

    shpool->log_ctx = static_cast<u_char *>(ngx_slab_alloc(shpool, len));
    if (shpool->log_ctx == nullptr) {
        return NGX_ERROR;
    }

    ngx_sprintf(shpool->log_ctx, " in mtls_identity_cache zone \"%V\"%Z",
                &cache->name);

    /* a full zone is the cache's normal state, not an error to log */
    shpool->log_nomem = 0;

    return NGX_OK;
}


/* ---------------------------------------------------------------------
 * Waiting for the database
 */

bool link_send(link_t *link);
link_t *idle_link();
request_state_t *take_waiter(link_t *link);
void link_failed(link_t *link, const char *what);


void
unpark(request_state_t *st)
{
    if (st->timer.timer_set) {
        ngx_del_timer(&st->timer);
    }

    if (st->queued) {
        ngx_queue_remove(&st->queue);
        st->queued = 0;
        worker->nwaiting--;
    }

    if (st->link != nullptr) {
        st->link->waiter = nullptr;
        st->link->draining = true;
        st->link = nullptr;
    }
}


/*
 * The request went away while it waited (the client closed, or nginx
 * terminated it): nothing may point at it any more.  A statement under
 * way still runs to its end before its link serves anyone else.
 */

void
request_state_cleanup(void *data)
{
    auto *st = static_cast<request_state_t *>(data);

    if (st->phase == phase_t::waiting && worker != nullptr) {
        unpark(st);
    }
}


/* hands the request its answer and lets it run on */

void
wake(request_state_t *st, phase_t phase)
{
    ngx_http_request_t  *r = st->request;
    ngx_connection_t    *c = r->connection;

    unpark(st);

    st->phase = phase;

    r->main->count--;
    r->read_event_handler = ngx_http_block_reading;

    r->write_event_handler(r);
    ngx_http_run_posted_requests(c);
}


void
wait_timeout_handler(ngx_event_t *ev)
{
    auto *st = static_cast<request_state_t *>(ev->data);

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "mtls identity: the database did not answer in %M ms",
                  worker->mcf->timeout);

    wake(st, phase_t::failed);
}


/*
 * Starts a lookup for the request: on an idle link, or in the queue while
 * a link is connecting or busy.  Returns false when nothing can take it.
 */

bool
park(ngx_http_request_t *r, request_state_t *st)
{
    if (worker == nullptr || worker->exiting) {
        return false;
    }

    link_t *link = idle_link();

    if (link == nullptr) {
        bool coming = false;

        /* a link comes free: it connects, works, or has an answer read */

        for (auto &l : worker->links) {
            auto s = l->pg.status();

            coming = coming || s == mtls::pg::connection::state::connecting
                     || s == mtls::pg::connection::state::busy
                     || l->waiter != nullptr || l->draining;
        }

        if (!coming || worker->nwaiting >= worker->mcf->queue) {
            return false;
        }

    } else {
        st->link = link;
        link->waiter = st;

        if (!link_send(link)) {
            take_waiter(link);
            link_failed(link, "cannot send the lookup");
            return false;
        }
    }

    if (link == nullptr) {
        ngx_queue_insert_tail(&worker->waiting, &st->queue);
        st->queued = 1;
        worker->nwaiting++;
    }

    st->phase = phase_t::waiting;

    st->timer.handler = wait_timeout_handler;
    st->timer.data = st;
    st->timer.log = r->connection->log;
    ngx_add_timer(&st->timer, worker->mcf->timeout);

    r->main->count++;
    r->read_event_handler = ngx_http_test_reading;

    return true;
}


/* ---------------------------------------------------------------------
 * The access phase
 */

/* what the request learns from the database for this location */

ngx_int_t
decide(ngx_http_request_t *r, request_state_t *st, loc_conf_t *lcf,
    const mtls::cert_identity *id, ngx_str_t bytes)
{
    st->decided = 1;
    st->allowed = 0;
    st->kind = -1;
    ngx_str_null(&st->username);
    ngx_str_null(&st->groups);

    if (bytes.len == 0) {
        st->why = mtls::reason::db_unavailable;
        return NGX_OK;
    }

    std::optional<mtls::lookup> facts = mtls::decode(std::string_view(
        reinterpret_cast<char *>(bytes.data), bytes.len));

    if (!facts) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "mtls identity: a stored lookup cannot be read");
        st->why = mtls::reason::db_unavailable;
        return NGX_OK;
    }

    mtls::decision d = mtls::decide(*facts, lcf->policy->kinds,
                                    lcf->policy->groups, ngx_time());

    st->why = d.why;

    if (d.kind) {
        st->kind = static_cast<int>(*d.kind);
    }

    if (!d.detail.empty()) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "mtls identity: certificate %s: %s",
                      id->fingerprint.c_str(), d.detail.c_str());
    }

    if (d.why != mtls::reason::ok) {
        return NGX_OK;
    }

    std::size_t omitted = 0;
    std::string groups = mtls::join_groups(d.groups, groups_header_cap,
                                           omitted);

    if (omitted > 0) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "mtls identity: %uz groups of \"%s\" left out of "
                      "the groups header, which stops at %uz bytes",
                      omitted, d.username.c_str(), groups_header_cap);
    }

    st->allowed = 1;
    st->username = pool_string(r->pool, mtls::percent_encode(d.username));
    st->groups = pool_string(r->pool, groups);

    if (st->username.data == nullptr
        || (!groups.empty() && st->groups.data == nullptr))
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
status_of(mtls::reason why)
{
    switch (why) {
    case mtls::reason::ok:
        return NGX_OK;
    case mtls::reason::no_cert:
        return NGX_HTTPS_NO_CERT;
    case mtls::reason::unverified:
        return NGX_HTTPS_CERT_ERROR;
    case mtls::reason::db_unavailable:
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    default:
        return NGX_HTTP_FORBIDDEN;
    }
}


/* the outcome: the log line, the headers and what nginx is told */

ngx_int_t
finish(ngx_http_request_t *r, request_state_t *st, loc_conf_t *lcf,
    const mtls::cert_identity *id)
{
    bool         report = st->mode == mode_t::report;
    const char  *fingerprint = id != nullptr ? id->fingerprint.c_str()
                                             : "-";

    if (!st->allowed) {
        std::string_view why = mtls::name_of(st->why);

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      report ? "mtls identity: would deny (%*s), "
                               "certificate %s"
                             : "mtls identity: access denied (%*s), "
                               "certificate %s",
                      why.size(), why.data(), fingerprint);
    }

    if (st->allowed && lcf->headers) {
        if (set_identity_headers(r, st, *id) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (report) {
        return NGX_DECLINED;
    }

    return status_of(st->why);
}


/*
 * Subrequests (SSI includes, auth_request, mirror) skip the access
 * phase, and share the main request's headers, identity headers
 * included.  A location with the module on decides for them here, in the
 * precontent phase, from what the main request's lookup found: a
 * subrequest starts no lookup of its own.
 * TODO(subrequest): park a subrequest on a lookup of its own, for a main
 * request decided nowhere, if users need the module only in subrequests.
 */

ngx_int_t
subrequest_handler(ngx_http_request_t *r)
{
    if (r == r->main) {
        return NGX_DECLINED;
    }

    auto *lcf = static_cast<loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_mtls_identity_module));

    if (lcf->mode == static_cast<ngx_uint_t>(mode_t::off)) {
        return NGX_DECLINED;
    }

    log_action  action(r->connection->log,
                       "checking the identity of a subrequest");

    const mtls::cert_identity  *id = nullptr;
    request_state_t            *st = find_state(r);
    mtls::reason                why = mtls::reason::unknown;

    try {
        cert_state_t cert = connection_identity(r, &id);

        if (cert == cert_state_t::none) {
            why = mtls::reason::no_cert;

        } else if (cert == cert_state_t::unverified) {
            why = mtls::reason::unverified;

        } else if (st != nullptr && st->phase == phase_t::failed) {
            why = mtls::reason::db_unavailable;

        } else if (id != nullptr && id->ok() && st != nullptr
                   && st->phase == phase_t::answered)
        {
            std::optional<mtls::lookup> facts = mtls::decode(
                std::string_view(reinterpret_cast<char *>(st->facts.data),
                                 st->facts.len));

            why = facts ? mtls::decide(*facts, lcf->policy->kinds,
                                       lcf->policy->groups, ngx_time()).why
                        : mtls::reason::db_unavailable;

        } else if (id != nullptr && id->ok()) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "mtls identity: the main request made no lookup "
                          "this subrequest could use: enable the module "
                          "for the main request's location too");
        }

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "mtls identity: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (why == mtls::reason::ok) {
        return NGX_DECLINED;
    }

    std::string_view  name = mtls::name_of(why);
    bool              report = lcf->mode
                               == static_cast<ngx_uint_t>(mode_t::report);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  report ? "mtls identity: would deny a subrequest (%*s), "
                           "certificate %s"
                         : "mtls identity: subrequest denied (%*s), "
                           "certificate %s",
                  name.size(), name.data(),
                  id != nullptr ? id->fingerprint.c_str() : "-");

    return report ? NGX_DECLINED : status_of(why);
}


ngx_int_t
access_handler(ngx_http_request_t *r)
{
    auto *lcf = static_cast<loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_mtls_identity_module));

    request_state_t  *st = find_state(r);

    if (lcf->mode == static_cast<ngx_uint_t>(mode_t::off)) {
        return NGX_DECLINED;
    }

    if (st == nullptr) {
        st = create_state(r);
        if (st == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (st->phase == phase_t::waiting) {
        return NGX_AGAIN;
    }

    log_action  action(r->connection->log,
                       "checking the client certificate identity");

    st->mode = static_cast<mode_t>(lcf->mode);

    const mtls::cert_identity *id = nullptr;

    switch (connection_identity(r, &id)) {

    case cert_state_t::none:
        st->decided = 1;
        st->allowed = 0;
        st->why = mtls::reason::no_cert;
        return finish(r, st, lcf, nullptr);

    case cert_state_t::unverified:
        st->decided = 1;
        st->allowed = 0;
        st->why = mtls::reason::unverified;
        return finish(r, st, lcf, nullptr);

    case cert_state_t::verified:
        break;
    }

    if (id == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!id->ok()) {
        st->decided = 1;
        st->allowed = 0;
        st->why = mtls::reason::unknown;
        return finish(r, st, lcf, id);
    }

    cache_t  *cache = main_conf(r)->cache;
    peer_t   *peer = connection_peer(r);

    if (peer == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    try {
        if (st->phase == phase_t::fresh) {

            /*
             * a hit needs this worker's change listener: while it is
             * away, changes may pass unseen
             */

            if (cache != nullptr && worker != nullptr && worker->listening
                && cache_get(r, cache, peer->fingerprint, -1, &st->facts))
            {
                st->phase = phase_t::answered;
                st->cache = "hit";

            } else if (park(r, st)) {
                st->cache = cache != nullptr ? "miss" : nullptr;
                return NGX_AGAIN;

            } else {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "mtls identity: no database connection "
                              "can take the lookup");
                st->phase = phase_t::failed;
                st->cache = cache != nullptr ? "miss" : nullptr;
            }
        }

        ngx_str_t  facts = st->facts;

        if (st->phase == phase_t::failed) {
            ngx_str_null(&facts);

            /* what the database said a short while ago, if allowed */

            if (lcf->stale > 0 && cache != nullptr
                && cache_get(r, cache, peer->fingerprint, lcf->stale,
                             &facts))
            {
                st->cache = "stale";
            }
        }

        if (decide(r, st, lcf, id, facts) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "mtls identity: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return finish(r, st, lcf, id);
}


/* ---------------------------------------------------------------------
 * Database links: one libpq connection each, driven by nginx's events
 */

void link_event_handler(ngx_event_t *ev);
void link_timer_handler(ngx_event_t *ev);
void link_connect(link_t *link);
void listener_sync(link_t *link);
void listener_synced(link_t *link);
void listener_answer(link_t *link);
void listener_notifications(link_t *link);


u_char *
link_log_handler(ngx_log_t *log, u_char *buf, size_t len)
{
    u_char  *p = buf;

    if (log->action != nullptr) {
        p = ngx_snprintf(p, len, " while %s", log->action);
        len -= p - buf;
    }

    if (worker != nullptr && worker->mcf->db != nullptr) {
        p = ngx_snprintf(p, len, ", database: %s",
                         worker->mcf->db->summary.c_str());
    }

    return p;
}


/* forgets the socket: pg has closed it, or is about to */

void
link_release_socket(link_t *link)
{
    ngx_connection_t  *c = link->conn;

    if (c == nullptr) {
        return;
    }

    if (c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
    link->conn = nullptr;
}


/* stops watching the socket while it is still open */

void
link_unwatch(link_t *link)
{
    ngx_connection_t  *c = link->conn;

    if (c == nullptr) {
        return;
    }

    if (c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }
}


/*
 * Watches the socket for what pg waits for, level-triggered: libpq reads
 * at most once per call, so an edge could be consumed while data remains.
 */

bool
link_watch(link_t *link)
{
    int  fd = link->pg.socket();

    if (fd < 0) {
        return false;
    }

    if (link->conn != nullptr && link->conn->fd != fd) {
        link_release_socket(link);
    }

    if (link->conn == nullptr) {
        ngx_connection_t *c = ngx_get_connection(fd, &link->log);
        if (c == nullptr) {
            return false;
        }

        c->data = link;
        c->log = &link->log;
        c->read->handler = link_event_handler;
        c->write->handler = link_event_handler;
        c->read->log = &link->log;
        c->write->log = &link->log;
        link->conn = c;
    }

    ngx_connection_t  *c = link->conn;
    bool               r = link->pg.wants_read();
    bool               w = link->pg.wants_write();

    if (r && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return false;
        }

    } else if (!r && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return false;
        }
    }

    if (w && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return false;
        }

    } else if (!w && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return false;
        }
    }

    return true;
}


/* closes the connection and tries again later, or at once */

void
link_reset(link_t *link, ngx_msec_t delay)
{
    link_release_socket(link);
    link->pg.close();
    link->draining = false;

    if (link->listener) {
        worker->listening = false;
        worker->sync = worker_t::sync_t::none;
    }

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    if (worker->exiting) {
        return;
    }

    if (delay == 0) {
        link_connect(link);
        return;
    }

    ngx_add_timer(&link->timer, delay);
}


/* the link's request, which no longer waits on it */

request_state_t *
take_waiter(link_t *link)
{
    request_state_t *st = link->waiter;

    if (st != nullptr) {
        st->link = nullptr;
        link->waiter = nullptr;
    }

    return st;
}


/* the connection broke: its request fails, and it reconnects later */

void
link_failed(link_t *link, const char *what)
{
    /* while the database stays away, a line a minute is enough */

    if (link->failures++ % 60 == 0) {
        ngx_log_error(NGX_LOG_ERR, &link->log, 0, "mtls identity: %s: %s",
                      what, link->pg.error().c_str());
    }

    request_state_t *st = take_waiter(link);

    /* capped, so a database that is back is found within a second */

    link->backoff = link->backoff == 0 ? 100
                                       : ngx_min(link->backoff * 2, 1000);

    link_reset(link, link->backoff);

    if (st != nullptr) {
        wake(st, phase_t::failed);
    }
}


/* hands an idle link the next waiting request, if any */

void
link_next(link_t *link)
{
    if (ngx_queue_empty(&worker->waiting)) {
        return;
    }

    ngx_queue_t *q = ngx_queue_head(&worker->waiting);
    auto *st = ngx_queue_data(q, request_state_t, queue);

    ngx_queue_remove(q);
    st->queued = 0;
    worker->nwaiting--;

    st->link = link;
    link->waiter = st;

    if (!link_send(link)) {
        st = take_waiter(link);
        link_failed(link, "cannot send the lookup");
        wake(st, phase_t::failed);
    }
}


/* the statement ended: give its answer to its request */

void
link_answer(link_t *link)
{
    request_state_t     *st = take_waiter(link);
    mtls::pg::result     res = link->pg.take_result();

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    link->draining = false;

    if (st == nullptr) {
        link_next(link);
        return;
    }

    ngx_http_request_t  *r = st->request;
    phase_t              phase = phase_t::failed;

    if (res == nullptr) {
        ngx_log_error(NGX_LOG_ERR, &link->log, 0,
                      "mtls identity: lookup failed: %s",
                      link->pg.error().c_str());

    } else {
        std::string                  error;
        std::optional<mtls::lookup>  facts =
            mtls::store::read_lookup(res.get(), error);

        if (!facts) {
            ngx_log_error(NGX_LOG_ERR, &link->log, 0,
                          "mtls identity: %s", error.c_str());

        } else {
            std::string  bytes = mtls::encode(*facts);

            st->facts = pool_string(r->pool, bytes);
            phase = st->facts.data != nullptr ? phase_t::answered
                                              : phase_t::failed;

            cache_t  *cache = worker->mcf->cache;
            peer_t   *peer = connection_peer(r);

            if (cache != nullptr && peer != nullptr) {
                cache_put(cache, *peer, *facts, bytes, &link->log);
            }
        }
    }

    wake(st, phase);

    if (link->pg.status() == mtls::pg::connection::state::idle
        && link->waiter == nullptr)
    {
        link_next(link);
    }
}


/*
 * Watches the link after a statement was sent.  On loopback the answer
 * may have been read while sending; no socket event will announce it,
 * and a request must not be woken from inside its own handler: the next
 * turn of the event loop reads it.
 */

bool
link_watch_sent(link_t *link)
{
    if (!link_watch(link)) {
        return false;
    }

    if (link->pg.has_result() || link->pg.has_notifications()) {
        ngx_post_event(link->conn->read, &ngx_posted_events);
    }

    return true;
}


/* advances the link after its socket became ready, or a step began */

void
link_step(link_t *link)
{
    using state = mtls::pg::connection::state;

    bool connecting = link->pg.status() == state::connecting;

    /* while connecting, libpq may close its socket and open another */

    if (connecting) {
        link_unwatch(link);
    }

    link->pg.step();

    if (link->listener && link->pg.has_notifications()) {
        listener_notifications(link);
    }

    switch (link->pg.status()) {

    case state::failed:
        link_failed(link, connecting ? "cannot connect to PostgreSQL"
                                     : "PostgreSQL connection failed");
        return;

    case state::idle:
        if (connecting) {
            if (link->timer.timer_set) {
                ngx_del_timer(&link->timer);
            }

            link->backoff = 0;
            link->failures = 0;
            ngx_log_error(NGX_LOG_INFO, &link->log, 0,
                          "mtls identity: connected to PostgreSQL");
        }

        if (link->pg.has_result()) {
            if (!link_watch(link)) {
                link_failed(link, "cannot watch the PostgreSQL socket");
                return;
            }

            if (link->listener) {
                listener_answer(link);
            } else {
                link_answer(link);
            }

            return;
        }

        if (connecting) {
            if (link->listener) {
                listener_sync(link);
                return;
            }

            link_next(link);
        }

        break;

    default:
        break;
    }

    if (link->pg.status() != state::closed && !link_watch(link)) {
        link_failed(link, "cannot watch the PostgreSQL socket");
    }
}


void
link_event_handler(ngx_event_t *ev)
{
    using state = mtls::pg::connection::state;

    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *link = static_cast<link_t *>(c->data);

    state        now = link->pg.status();
    log_action   action(&link->log,
                        now == state::connecting ? "connecting to PostgreSQL"
                        : now == state::busy ? "waiting for a lookup"
                        : "reading from an idle PostgreSQL connection");

    try {
        link_step(link);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, &link->log, 0, "mtls identity: %s",
                      e.what());
        link_failed(link, "internal error");
    }
}


void
link_timer_handler(ngx_event_t *ev)
{
    using state = mtls::pg::connection::state;

    auto *link = static_cast<link_t *>(ev->data);

    log_action  action(&link->log, "waiting for PostgreSQL");

    switch (link->pg.status()) {

    case state::connecting:
        ngx_log_error(NGX_LOG_ERR, &link->log, 0,
                      "mtls identity: connecting to PostgreSQL "
                      "timed out after %M ms",
                      worker->mcf->connect_timeout);
        link_reset(link, 1000);
        return;

    case state::busy: {
        request_state_t *st = take_waiter(link);

        ngx_log_error(NGX_LOG_ERR, &link->log, 0,
                      "mtls identity: the lookup timed out after %M ms; "
                      "reconnecting", worker->mcf->timeout);

        /*
         * a statement under way cannot be abandoned: the link starts over.
         * TODO(pg): cancel with PQcancelStart() and keep the connection,
         * once libpq 17 is the oldest the module builds against.
         */

        link_reset(link, 0);

        if (st != nullptr) {
            wake(st, phase_t::failed);
        }

        return;
    }

    case state::closed:
    case state::failed:
        link_connect(link);
        return;

    default:
        return;
    }
}


void
link_connect(link_t *link)
{
    log_action  action(&link->log, "connecting to PostgreSQL");

    try {
        link->pg.start(worker->mcf->db->info);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, &link->log, 0, "mtls identity: %s",
                      e.what());
        link_reset(link, 1000);
        return;
    }

    if (link->pg.status() == mtls::pg::connection::state::failed) {
        link_failed(link, "cannot connect to PostgreSQL");
        return;
    }

    ngx_add_timer(&link->timer, worker->mcf->connect_timeout);

    link_step(link);
}


/*
 * Sends the lookup of the link's request.  On failure the request is
 * still the link's, for the caller to fail.
 */

bool
link_send(link_t *link)
{
    peer_t  *peer = connection_peer(link->waiter->request);

    if (peer == nullptr
        || !link->pg.send(mtls::store::lookup.name, peer->lookup_params()))
    {
        return false;
    }

    ngx_add_timer(&link->timer, worker->mcf->timeout);

    return link_watch_sent(link);
}


/* an idle link, if there is one */

link_t *
idle_link()
{
    for (auto &link : worker->links) {
        if (link->pg.status() == mtls::pg::connection::state::idle
            && link->waiter == nullptr && !link->draining)
        {
            return link.get();
        }
    }

    return nullptr;
}


/* ---------------------------------------------------------------------
 * The change listener: a connection of each worker that LISTENs on the
 * schema's channel and evicts from the shared cache what a change may
 * alter.  After every (re)connection, and every mtls_identity_poll, it
 * compares the change version with the one the cache has seen, and
 * replays the change log from there.
 */

void
listener_apply(const mtls::change &c)
{
    ngx_uint_t evicted = cache_apply(worker->mcf->cache, c);

    if (c.everything) {
        ngx_log_error(NGX_LOG_INFO, worker->log, 0,
                      "mtls identity: change %L: dropped the whole cache "
                      "(%ui entries)", c.version, evicted);
    }
}


/*
 * A notification only says that something changed.  What changed, the
 * change log tells, and only a role that may write the schema's tables
 * can write to it; anyone who can connect could send a notification.
 */

void
listener_notifications(link_t *link)
{
    bool  ours = false;

    for (const mtls::pg::notification &n : link->pg.take_notifications()) {
        ours = ours || n.channel == mtls::store::channel;
    }

    if (!ours || ngx_exiting) {
        return;
    }

    if (worker->sync != worker_t::sync_t::none) {
        worker->sync_again = true;
        return;
    }

    if (link->pg.status() == mtls::pg::connection::state::idle) {
        listener_sync(link);
    }
}


bool
listener_send(link_t *link, const mtls::store::statement &stmt,
    const std::vector<std::optional<std::string>> &params)
{
    if (!link->pg.send(stmt.name, params)) {
        link_failed(link, "cannot send to PostgreSQL");
        return false;
    }

    ngx_add_timer(&link->timer, worker->mcf->timeout);

    if (!link_watch_sent(link)) {
        link_failed(link, "cannot watch the PostgreSQL socket");
        return false;
    }

    return true;
}


/* asks for the change version: the first step of catching up */

void
listener_sync(link_t *link)
{
    worker->sync_again = false;

    if (listener_send(link, mtls::store::version, {})) {
        worker->sync = worker_t::sync_t::version;
    }
}


void
listener_synced(link_t *link)
{
    using sync_t = worker_t::sync_t;

    if (!worker->listening) {
        ngx_log_error(NGX_LOG_INFO, worker->log, 0,
                      "mtls identity: listening for changes from "
                      "version %L", worker->sync_to);
    }

    worker->sync = sync_t::none;
    worker->listening = true;

    cache_synced(worker->mcf->cache);

    /* changes were announced while this round ran */

    if (worker->sync_again) {
        listener_sync(link);
    }
}


void
listener_answer(link_t *link)
{
    using sync_t = worker_t::sync_t;

    mtls::pg::result  res = link->pg.take_result();
    cache_t          *cache = worker->mcf->cache;

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    if (ngx_exiting) {
        worker->sync = sync_t::none;
        return;
    }

    if (res == nullptr) {
        ngx_log_error(NGX_LOG_ERR, &link->log, 0,
                      "mtls identity: reading the changes failed: %s",
                      link->pg.error().c_str());
        link_reset(link, 1000);
        return;
    }

    if (worker->sync == sync_t::version) {
        std::optional<mtls::store::state> db =
            mtls::store::read_version(res.get());

        if (!db) {
            ngx_log_error(NGX_LOG_ERR, &link->log, 0,
                          "mtls identity: mtls_identity.state cannot be "
                          "read: is sql/schema.sql applied?");
            link_reset(link, 1000);
            return;
        }

        int64_t seen = cache_seen_version(cache);

        worker->sync_from = seen;
        worker->sync_to = db->version;

        /*
         * another copy of the schema, or a version that went back (a
         * restored backup): nothing cached can be trusted
         */

        if (!cache_same_epoch(cache, db->epoch) || db->version < seen) {
            ngx_uint_t evicted = cache_restart(cache, *db);

            if (evicted > 0) {
                ngx_log_error(NGX_LOG_INFO, worker->log, 0,
                              "mtls identity: the schema was recreated or "
                              "replaced; dropped the whole cache (%ui "
                              "entries)", evicted);
            }

            listener_synced(link);
            return;
        }

        if (db->version == seen) {
            listener_synced(link);
            return;
        }

        if (listener_send(link, mtls::store::changes,
                          {std::to_string(seen)}))
        {
            worker->sync = sync_t::changes;
        }

        return;
    }

    std::optional<std::vector<mtls::change>> changes =
        mtls::store::read_changes(res.get());

    /*
     * the log must go on right after what the cache has seen; otherwise
     * (pruned, or more than a page behind) the whole cache goes
     */

    if (!changes || changes->empty() || changes->size() > 1000
        || changes->front().version != worker->sync_from + 1)
    {
        mtls::change c;
        c.everything = true;
        c.version = worker->sync_to;

        if (changes && !changes->empty()) {
            c.version = ngx_max(c.version, changes->back().version);
        }

        listener_apply(c);

    } else {
        for (const mtls::change &c : *changes) {
            listener_apply(c);
        }
    }

    listener_synced(link);
}


void close_link(link_t *link);


void
poll_handler(ngx_event_t *ev)
{
    link_t *link = worker->listener.get();

    if (worker->exiting) {
        return;
    }

    /*
     * a worker that shuts down (after a reload, say) stops following
     * changes: the new workers follow them, perhaps in another database
     */

    if (ngx_exiting) {
        close_link(link);
        worker->listening = false;
        return;
    }

    if (link->pg.status() == mtls::pg::connection::state::idle
        && worker->sync == worker_t::sync_t::none)
    {
        try {
            listener_sync(link);

        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ALERT, ev->log, 0, "mtls identity: %s",
                          e.what());
        }
    }

    ngx_add_timer(&worker->poll, worker->mcf->poll);
}


/* ---------------------------------------------------------------------
 * Variables
 */

/* copies a value into the request pool; std::string never lives there */

ngx_int_t
set_value(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    std::string_view s)
{
    u_char  *p = nullptr;

    if (!s.empty()) {
        p = static_cast<u_char *>(ngx_pnalloc(r->pool, s.size()));
        if (p == nullptr) {
            return NGX_ERROR;
        }

        ngx_memcpy(p, s.data(), s.size());
    }

    v->data = p;
    v->len = s.size();
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


ngx_int_t
set_value(ngx_http_variable_value_t *v, ngx_str_t s)
{
    v->data = s.data;
    v->len = s.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


ngx_int_t
certificate_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    field_t field)
{
    const mtls::cert_identity *id = nullptr;

    connection_identity(r, &id);

    if (id == nullptr) {
        return set_value(r, v, "");
    }

    if (field == field_t::fingerprint) {
        return set_value(r, v, id->fingerprint);
    }

    if (!id->ok()) {
        return set_value(r, v, "");
    }

    switch (field) {
    case field_t::spki:
        return set_value(r, v, id->spki);
    case field_t::subject:
        return set_value(r, v, id->subject);
    case field_t::issuer:
        return set_value(r, v, id->issuer);
    case field_t::serial:
        return set_value(r, v, id->serial);
    case field_t::san_uri:
        return set_value(r, v, mtls::join_values(id->san_uri));
    case field_t::san_email:
        return set_value(r, v, mtls::join_values(id->san_email));
    case field_t::san_dns:
        return set_value(r, v, mtls::join_values(id->san_dns));
    default:
        break;
    }

    ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                  "mtls identity: unknown variable field %ui",
                  static_cast<ngx_uint_t>(field));
    return NGX_ERROR;
}


/* the reason of a request the module has not decided (yet) */

std::string_view
undecided_reason(ngx_http_request_t *r)
{
    const mtls::cert_identity  *id;

    switch (connection_identity(r, &id)) {
    case cert_state_t::none:
        return mtls::name_of(mtls::reason::no_cert);
    case cert_state_t::unverified:
        return mtls::name_of(mtls::reason::unverified);
    default:
        return "";
    }
}


ngx_int_t
decision_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    field_t field)
{
    request_state_t  *st = find_state(r);

    if (st == nullptr || !st->decided) {
        return set_value(r, v, field == field_t::reason
                               ? undecided_reason(r) : "");
    }

    switch (field) {

    case field_t::identity:
        return set_value(v, st->allowed ? st->username : ngx_str_t{});

    case field_t::groups:
        return set_value(v, st->allowed ? st->groups : ngx_str_t{});

    case field_t::key:
        return set_value(r, v, st->allowed
                               ? mtls::name_of(static_cast<mtls::key_kind>(
                                     st->kind))
                               : "");

    case field_t::status:
        return set_value(r, v, st->allowed ? "allow"
                               : st->mode == mode_t::report ? "report"
                               : "deny");

    case field_t::cache:
        return set_value(r, v, st->cache != nullptr ? st->cache : "");

    case field_t::reason:
        return set_value(r, v, mtls::name_of(st->why));

    default:
        break;
    }

    return set_value(r, v, "");
}


ngx_int_t
identity_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    auto field = static_cast<field_t>(data);

    try {
        if (field >= field_t::identity) {
            ngx_int_t rc = decision_variable(r, v, field);

            /* the decision may change after an internal redirect */
            v->no_cacheable = 1;
            return rc;
        }

        return certificate_variable(r, v, field);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "mtls identity: %s", e.what());
        return NGX_ERROR;
    }
}


struct variable_def_t {
    ngx_str_t  name;
    field_t    field;
};


variable_def_t  variables[] = {
    { ngx_string("mtls_identity_fingerprint"), field_t::fingerprint },
    { ngx_string("mtls_identity_spki"), field_t::spki },
    { ngx_string("mtls_identity_subject"), field_t::subject },
    { ngx_string("mtls_identity_issuer"), field_t::issuer },
    { ngx_string("mtls_identity_serial"), field_t::serial },
    { ngx_string("mtls_identity_san_uri"), field_t::san_uri },
    { ngx_string("mtls_identity_san_email"), field_t::san_email },
    { ngx_string("mtls_identity_san_dns"), field_t::san_dns },
    { ngx_string("mtls_identity"), field_t::identity },
    { ngx_string("mtls_identity_groups"), field_t::groups },
    { ngx_string("mtls_identity_key"), field_t::key },
    { ngx_string("mtls_identity_status"), field_t::status },
    { ngx_string("mtls_identity_reason"), field_t::reason },
    { ngx_string("mtls_identity_cache"), field_t::cache },
};


ngx_int_t
add_variables(ngx_conf_t *cf)
{
    for (variable_def_t &def : variables) {
        ngx_uint_t flags = def.field >= field_t::identity
                           ? NGX_HTTP_VAR_NOCACHEABLE : 0;

        ngx_http_variable_t *var = ngx_http_add_variable(cf, &def.name,
                                                         flags);
        if (var == nullptr) {
            return NGX_ERROR;
        }

        var->get_handler = identity_variable;
        var->data = static_cast<uintptr_t>(def.field);
    }

    return NGX_OK;
}


/* ---------------------------------------------------------------------
 * Configuration
 */

main_conf_t *
conf_main(ngx_conf_t *cf)
{
    return static_cast<main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf,
                                           ngx_http_mtls_identity_module));
}


conf_place_t
place_of(ngx_conf_t *cf)
{
    return { cf->conf_file->file.name, cf->conf_file->line };
}


void *
create_main_conf(ngx_conf_t *cf)
{
    auto *mcf = static_cast<main_conf_t *>(
        ngx_pcalloc(cf->pool, sizeof(main_conf_t)));
    if (mcf == nullptr) {
        return nullptr;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mcf->configured = 0;
     *     mcf->db = NULL;
     *     mcf->db_place = { null, 0 };
     */

    mcf->ex_index = -1;
    mcf->connections = NGX_CONF_UNSET_UINT;
    mcf->queue = NGX_CONF_UNSET_UINT;
    mcf->connect_timeout = NGX_CONF_UNSET_MSEC;
    mcf->timeout = NGX_CONF_UNSET_MSEC;
    mcf->poll = NGX_CONF_UNSET_MSEC;

    return mcf;
}


char *
init_main_conf(ngx_conf_t *cf, void *conf)
{
    auto *mcf = static_cast<main_conf_t *>(conf);

    ngx_conf_init_uint_value(mcf->connections, 2);
    ngx_conf_init_uint_value(mcf->queue, 256);
    ngx_conf_init_msec_value(mcf->connect_timeout, 2000);
    ngx_conf_init_msec_value(mcf->timeout, 2000);
    ngx_conf_init_msec_value(mcf->poll, 10000);

    if (mcf->cache != nullptr && mcf->db == nullptr) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"mtls_identity_cache\" needs a database: add "
                      "\"mtls_identity_db\" to the http block");
        return conf_error;
    }

    return NGX_CONF_OK;
}


void *
create_srv_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(srv_conf_t));
}


char *
merge_srv_conf(ngx_conf_t *cf, void *parent, void *child)
{
    auto *prev = static_cast<srv_conf_t *>(parent);
    auto *conf = static_cast<srv_conf_t *>(child);

    if (conf->strip != nullptr) {
        return NGX_CONF_OK;
    }

    if (prev->strip == nullptr) {
        prev->strip = pool_new<std::vector<std::string>>(cf->pool);
        if (prev->strip == nullptr) {
            return conf_error;
        }

        try {
            for (const char *name : default_strip) {
                prev->strip->push_back(mtls::normalize_pattern(name));
            }

        } catch (const std::bad_alloc &) {
            return conf_error;
        }
    }

    conf->strip = prev->strip;

    return NGX_CONF_OK;
}


void *
create_loc_conf(ngx_conf_t *cf)
{
    auto *lcf = static_cast<loc_conf_t *>(
        ngx_pcalloc(cf->pool, sizeof(loc_conf_t)));
    if (lcf == nullptr) {
        return nullptr;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     lcf->mode_place = { null, 0 };
     *     lcf->policy = NULL;
     *     lcf->kinds = NULL;
     *     lcf->groups = NULL;
     */

    lcf->mode = NGX_CONF_UNSET_UINT;
    lcf->headers = NGX_CONF_UNSET;
    lcf->stale = NGX_CONF_UNSET;

    return lcf;
}


/*
 * Notes what a location does for the server-wide checks that run after
 * parsing (postconfiguration): nginx merges the locations of a server
 * with the server's configuration at hand.
 */

ngx_int_t
note_location(ngx_conf_t *cf, loc_conf_t *conf)
{
    auto *scf = static_cast<srv_conf_t *>(
        ngx_http_conf_get_module_srv_conf(cf, ngx_http_mtls_identity_module));
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));

    auto mode = static_cast<mode_t>(conf->mode);

    /*
     * a content handler: proxy_pass, fastcgi_pass, uwsgi_pass and kin.
     * TODO(checks): stub_status and the like count too; tell upstream
     * handlers apart if nginx ever exposes which module set the handler.
     */
    bool upstream = clcf->handler != nullptr;

    scf->has_upstream = scf->has_upstream || upstream;

    if (mode != mode_t::off) {
        if (!scf->uses_module) {
            scf->mode_place = conf->mode_place;
        }

        scf->uses_module = 1;
        scf->forwards = scf->forwards || conf->headers;

        if (conf->kinds != nullptr) {
            auto *kinds = static_cast<ngx_str_t *>(conf->kinds->elts);

            for (ngx_uint_t i = 0; i < conf->kinds->nelts; i++) {
                scf->name_keys = scf->name_keys
                                 || (ngx_strcmp(kinds[i].data,
                                                "fingerprint") != 0
                                     && ngx_strcmp(kinds[i].data,
                                                   "spki") != 0);
            }
        }

        if (mode == mode_t::on && clcf->satisfy == NGX_HTTP_SATISFY_ANY
            && scf->satisfy_place.line == 0)
        {
            scf->satisfy_place = conf->mode_place;
            scf->satisfy_location = clcf->name;
        }

        return NGX_OK;
    }

    if (!upstream || clcf->name.len == 0) {
        return NGX_OK;
    }

    if (scf->open_upstreams == nullptr) {
        scf->open_upstreams = ngx_array_create(cf->pool, 4,
                                               sizeof(ngx_str_t));
        if (scf->open_upstreams == nullptr) {
            return NGX_ERROR;
        }
    }

    auto *name = static_cast<ngx_str_t *>(
        ngx_array_push(scf->open_upstreams));
    if (name == nullptr) {
        return NGX_ERROR;
    }

    *name = clcf->name;

    return NGX_OK;
}


char *
merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    auto *prev = static_cast<loc_conf_t *>(parent);
    auto *conf = static_cast<loc_conf_t *>(child);

    if (conf->mode == NGX_CONF_UNSET_UINT) {
        conf->mode = prev->mode;
        conf->mode_place = prev->mode_place;
    }

    ngx_conf_merge_uint_value(conf->mode, prev->mode,
                              static_cast<ngx_uint_t>(mode_t::off));
    ngx_conf_merge_value(conf->headers, prev->headers, 1);
    if (conf->stale == NGX_CONF_UNSET) {
        conf->stale_place = prev->stale_place;
    }

    ngx_conf_merge_sec_value(conf->stale, prev->stale, 0);

    if (conf->stale > 0 && conf_main(cf)->cache == nullptr) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"mtls_identity_on_db_error stale=\" in %V:%ui "
                      "serves from the cache: add \"mtls_identity_cache\" "
                      "to the http block, or use \"deny\"",
                      &conf->stale_place.file, conf->stale_place.line);
        return conf_error;
    }

    if (conf->kinds == nullptr) {
        conf->kinds = prev->kinds;
    }

    if (conf->groups == nullptr) {
        conf->groups = prev->groups;
    }

    if (note_location(cf, conf) != NGX_OK) {
        return conf_error;
    }

    if (conf->mode != static_cast<ngx_uint_t>(mode_t::off)
        && conf_main(cf)->db == nullptr)
    {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"mtls_identity %s\" in %V:%ui needs a database: "
                      "add \"mtls_identity_db\" to the http block",
                      conf->mode == static_cast<ngx_uint_t>(mode_t::on)
                      ? "on" : "report",
                      &conf->mode_place.file, conf->mode_place.line);
        return conf_error;
    }

    if (conf->kinds == prev->kinds && conf->groups == prev->groups
        && prev->policy != nullptr)
    {
        conf->policy = prev->policy;
        return NGX_CONF_OK;
    }

    conf->policy = pool_new<policy_t>(cf->pool);
    if (conf->policy == nullptr) {
        return conf_error;
    }

    try {
        if (conf->kinds == nullptr) {
            conf->policy->kinds.push_back(mtls::key_kind::fingerprint);

        } else {
            auto *kinds = static_cast<ngx_str_t *>(conf->kinds->elts);

            for (ngx_uint_t i = 0; i < conf->kinds->nelts; i++) {
                conf->policy->kinds.push_back(*mtls::key_kind_named(
                    std::string_view(
                        reinterpret_cast<char *>(kinds[i].data),
                        kinds[i].len)));
            }
        }

        if (conf->groups != nullptr) {
            auto *groups = static_cast<ngx_str_t *>(conf->groups->elts);

            for (ngx_uint_t i = 0; i < conf->groups->nelts; i++) {
                conf->policy->groups.emplace_back(
                    reinterpret_cast<char *>(groups[i].data),
                    groups[i].len);
            }
        }

    } catch (const std::bad_alloc &) {
        return conf_error;
    }

    return NGX_CONF_OK;
}


/* "name=value": the value when arg starts with name=, else nullptr */

ngx_str_t *
option_value(ngx_str_t *arg, const char *name, ngx_str_t *value)
{
    size_t  len = ngx_strlen(name);

    if (arg->len <= len || ngx_strncmp(arg->data, name, len) != 0) {
        return nullptr;
    }

    value->data = arg->data + len;
    value->len = arg->len - len;
    return value;
}


char *
set_db(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    auto      *mcf = static_cast<main_conf_t *>(conf);
    auto      *args = static_cast<ngx_str_t *>(cf->args->elts);
    ngx_str_t  v;

    if (mcf->db != nullptr) {
        return const_cast<char *>("is duplicate");
    }

    mcf->configured = 1;
    mcf->db_place = place_of(cf);

    mcf->db = pool_new<database_t>(cf->pool);
    if (mcf->db == nullptr) {
        return conf_error;
    }

    try {
        std::string error = mcf->db->info.parse(std::string_view(
            reinterpret_cast<char *>(args[1].data), args[1].len));

        if (!error.empty()) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid conninfo in \"mtls_identity_db\": "
                               "%s", error.c_str());
            return conf_error;
        }

        /* no host name lookup ever happens in a worker */

        error = mcf->db->info.resolve();
        if (!error.empty()) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"mtls_identity_db\": %s; use an address "
                               "or a socket directory", error.c_str());
            return conf_error;
        }

        /*
         * GSSAPI negotiation can read credential files and look up host
         * names while connecting; it is off unless the conninfo asks
         */

        auto &info = mcf->db->info;

        if (info.get("gssencmode") == nullptr) {
            info.set("gssencmode", "disable");
        }

        if (info.get("application_name") == nullptr) {
            info.set("application_name", "nginx mtls_identity");
        }

        if (info.get("client_encoding") == nullptr) {
            info.set("client_encoding", "UTF8");
        }

        mcf->db->summary = info.summary();

    } catch (const std::bad_alloc &) {
        return conf_error;
    }

    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {

        if (option_value(&args[i], "connections=", &v)) {
            ngx_int_t n = ngx_atoi(v.data, v.len);

            if (n < 1 || n > 64) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"connections\" must be 1 to 64, "
                                   "not \"%V\"", &v);
                return conf_error;
            }

            mcf->connections = n;
            continue;
        }

        if (option_value(&args[i], "queue=", &v)) {
            ngx_int_t n = ngx_atoi(v.data, v.len);

            if (n == NGX_ERROR || n > 65535) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"queue\" must be 0 to 65535, "
                                   "not \"%V\"", &v);
                return conf_error;
            }

            mcf->queue = n;
            continue;
        }

        if (option_value(&args[i], "connect_timeout=", &v)
            || option_value(&args[i], "timeout=", &v))
        {
            ngx_msec_t t = ngx_parse_time(&v, 0);

            if (t == (ngx_msec_t) NGX_ERROR || t == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid time \"%V\"", &args[i]);
                return conf_error;
            }

            if (args[i].data[0] == 'c') {
                mcf->connect_timeout = t;
            } else {
                mcf->timeout = t;
            }

            continue;
        }

        /* an unquoted conninfo lands here: never repeat a value */

        ngx_str_t  name = args[i];
        u_char    *eq = static_cast<u_char *>(
            ngx_strlchr(name.data, name.data + name.len, '='));

        if (eq != nullptr) {
            name.len = eq - name.data;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V%s\" of "
                           "\"mtls_identity_db\"; expected connections=, "
                           "queue=, connect_timeout= or timeout= (quote the "
                           "conninfo as one argument)",
                           &name, eq != nullptr ? "=..." : "");
        return conf_error;
    }

    return NGX_CONF_OK;
}


char *
set_mode(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    auto  *lcf = static_cast<loc_conf_t *>(conf);
    auto  *args = static_cast<ngx_str_t *>(cf->args->elts);

    if (lcf->mode != NGX_CONF_UNSET_UINT) {
        return const_cast<char *>("is duplicate");
    }

    if (ngx_strcmp(args[1].data, "on") == 0) {
        lcf->mode = static_cast<ngx_uint_t>(mode_t::on);

    } else if (ngx_strcmp(args[1].data, "off") == 0) {
        lcf->mode = static_cast<ngx_uint_t>(mode_t::off);

    } else if (ngx_strcmp(args[1].data, "report") == 0) {
        lcf->mode = static_cast<ngx_uint_t>(mode_t::report);

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"mtls_identity\"; "
                           "it must be \"on\", \"off\" or \"report\"",
                           &args[1]);
        return conf_error;
    }

    lcf->mode_place = place_of(cf);
    conf_main(cf)->configured = 1;

    return NGX_CONF_OK;
}


/* copies the directive's arguments into an array of ngx_str_t */

ngx_array_t *
argument_list(ngx_conf_t *cf)
{
    auto *args = static_cast<ngx_str_t *>(cf->args->elts);
    ngx_array_t *list = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                         sizeof(ngx_str_t));
    if (list == nullptr) {
        return nullptr;
    }

    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        auto *s = static_cast<ngx_str_t *>(ngx_array_push(list));
        *s = args[i];
    }

    return list;
}


bool
listed_before(ngx_conf_t *cf, ngx_uint_t i)
{
    auto *args = static_cast<ngx_str_t *>(cf->args->elts);

    for (ngx_uint_t k = 1; k < i; k++) {
        if (args[k].len == args[i].len
            && ngx_strncmp(args[k].data, args[i].data, args[i].len) == 0)
        {
            return true;
        }
    }

    return false;
}


char *
set_keys(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    auto  *lcf = static_cast<loc_conf_t *>(conf);
    auto  *args = static_cast<ngx_str_t *>(cf->args->elts);

    if (lcf->kinds != nullptr) {
        return const_cast<char *>("is duplicate");
    }

    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        std::string_view name(reinterpret_cast<char *>(args[i].data),
                              args[i].len);

        if (!mtls::key_kind_named(name)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown key kind \"%V\" in "
                               "\"mtls_identity_key\"; use fingerprint, "
                               "spki, subject, issuer_serial, san_uri, "
                               "san_email or san_dns", &args[i]);
            return conf_error;
        }

        if (listed_before(cf, i)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "key kind \"%V\" is listed twice",
                               &args[i]);
            return conf_error;
        }
    }

    lcf->kinds = argument_list(cf);
    conf_main(cf)->configured = 1;

    return lcf->kinds != nullptr ? NGX_CONF_OK : conf_error;
}


char *
set_groups(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    auto  *lcf = static_cast<loc_conf_t *>(conf);
    auto  *args = static_cast<ngx_str_t *>(cf->args->elts);

    if (lcf->groups != nullptr) {
        return const_cast<char *>("is duplicate");
    }

    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        if (args[i].len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "empty group name in "
                               "\"mtls_identity_require_group\"");
            return conf_error;
        }

        if (!mtls::schema_group_name(
                 {reinterpret_cast<char *>(args[i].data), args[i].len}))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "group %ui of \"mtls_identity_require_group\" "
                               "can never match: the schema holds no group "
                               "with a comma, quote, backslash, \"%%\", "
                               "control character or surrounding space, or "
                               "past 128 characters; name each group as its "
                               "own argument", i);
            return conf_error;
        }
    }

    lcf->groups = argument_list(cf);
    conf_main(cf)->configured = 1;

    return lcf->groups != nullptr ? NGX_CONF_OK : conf_error;
}


char *
set_flag(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    conf_main(cf)->configured = 1;

    return ngx_conf_set_flag_slot(cf, cmd, conf);
}


char *
set_strip(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    auto  *scf = static_cast<srv_conf_t *>(conf);
    auto  *args = static_cast<ngx_str_t *>(cf->args->elts);

    if (scf->strip != nullptr) {
        return const_cast<char *>("is duplicate");
    }

    scf->strip = pool_new<std::vector<std::string>>(cf->pool);
    if (scf->strip == nullptr) {
        return conf_error;
    }

    try {
        for (const char *name : default_strip) {
            scf->strip->push_back(mtls::normalize_pattern(name));
        }

        for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
            std::string_view pattern(
                reinterpret_cast<char *>(args[i].data), args[i].len);
            std::string error = mtls::check_strip_pattern(pattern);

            if (!error.empty()) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid header \"%V\" in "
                                   "\"mtls_identity_strip_header\": %s",
                                   &args[i], error.c_str());
                return conf_error;
            }

            /* nginx keeps pointers to the headers it reads itself */

            for (ngx_http_header_t *h = ngx_http_headers_in;
                 h->name.len != 0; h++)
            {
                std::vector<std::string> one{
                    mtls::normalize_pattern(pattern)};

                if (mtls::is_reserved_header(
                        std::string_view(
                            reinterpret_cast<char *>(h->name.data),
                            h->name.len),
                        one))
                {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "\"%V\" in "
                                       "\"mtls_identity_strip_header\" "
                                       "matches \"%V\", a header nginx "
                                       "itself reads; use "
                                       "proxy_set_header for it",
                                       &args[i], &h->name);
                    return conf_error;
                }
            }

            scf->strip->push_back(mtls::normalize_pattern(pattern));
        }

    } catch (const std::bad_alloc &) {
        return conf_error;
    }

    conf_main(cf)->configured = 1;

    return NGX_CONF_OK;
}


char *
set_cache(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    auto       *mcf = static_cast<main_conf_t *>(conf);
    auto       *args = static_cast<ngx_str_t *>(cf->args->elts);
    ngx_str_t   v, name = ngx_null_string;
    ssize_t     size = 0;
    ngx_msec_t  ttl = 60000, negative_ttl = 10000;

    if (mcf->cache != nullptr) {
        return const_cast<char *>("is duplicate");
    }

    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {

        if (option_value(&args[i], "zone=", &v)) {
            u_char *colon = static_cast<u_char *>(
                ngx_strlchr(v.data, v.data + v.len, ':'));

            if (colon == nullptr || colon == v.data) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone \"%V\": write "
                                   "zone=name:size", &v);
                return conf_error;
            }

            name.data = v.data;
            name.len = colon - v.data;

            ngx_str_t s = { static_cast<size_t>(v.data + v.len - colon - 1),
                            colon + 1 };

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &s);
                return conf_error;
            }

            /* the slab allocator's own pages, and room for an entry */

            if (size < static_cast<ssize_t>(8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "zone \"%V\" is too small to hold a "
                                   "single entry: use at least %uzk",
                                   &name, 8 * ngx_pagesize / 1024);
                return conf_error;
            }

            continue;
        }

        bool negative = option_value(&args[i], "negative_ttl=", &v);

        if (negative || option_value(&args[i], "ttl=", &v)) {
            ngx_msec_t t = ngx_parse_time(&v, 0);

            if (t == static_cast<ngx_msec_t>(NGX_ERROR)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid time \"%V\"", &args[i]);
                return conf_error;
            }

            (negative ? negative_ttl : ttl) = t;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" of "
                           "\"mtls_identity_cache\"; expected zone=, ttl= "
                           "or negative_ttl=", &args[i]);
        return conf_error;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"mtls_identity_cache\" needs "
                           "zone=name:size");
        return conf_error;
    }

    auto *cache = static_cast<cache_t *>(ngx_pcalloc(cf->pool,
                                                     sizeof(cache_t)));
    if (cache == nullptr) {
        return conf_error;
    }

    cache->name = name;
    cache->ttl = ttl;
    cache->negative_ttl = negative_ttl;

    cache->zone = ngx_shared_memory_add(cf, &name, size,
                                        &ngx_http_mtls_identity_module);
    if (cache->zone == nullptr) {
        return conf_error;
    }

    if (cache->zone->data != nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is already used", &name);
        return conf_error;
    }

    cache->zone->init = cache_init_zone;
    cache->zone->data = cache;

    mcf->cache = cache;
    mcf->configured = 1;

    return NGX_CONF_OK;
}


char *
set_poll(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char *rv = ngx_conf_set_msec_slot(cf, cmd, conf);

    if (rv == NGX_CONF_OK && static_cast<main_conf_t *>(conf)->poll == 0) {
        return const_cast<char *>("must be longer than 0");
    }

    conf_main(cf)->configured = 1;

    return rv;
}


char *
set_on_db_error(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    auto       *lcf = static_cast<loc_conf_t *>(conf);
    auto       *args = static_cast<ngx_str_t *>(cf->args->elts);
    ngx_str_t   v;

    if (lcf->stale != NGX_CONF_UNSET) {
        return const_cast<char *>("is duplicate");
    }

    if (ngx_strcmp(args[1].data, "deny") == 0) {
        lcf->stale = 0;

    } else if (option_value(&args[1], "stale=", &v)) {
        lcf->stale = ngx_parse_time(&v, 1);
        lcf->stale_place = place_of(cf);

        if (lcf->stale == static_cast<time_t>(NGX_ERROR) || lcf->stale == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid time \"%V\"", &v);
            return conf_error;
        }

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in "
                           "\"mtls_identity_on_db_error\"; it must be "
                           "\"deny\" or \"stale=<time>\"", &args[1]);
        return conf_error;
    }

    conf_main(cf)->configured = 1;

    return NGX_CONF_OK;
}


/* ---------------------------------------------------------------------
 * Checks of the configuration around the module, after parsing
 *
 * Plain `nginx -t` checks the servers where the module is used; with
 * MTLS_IDENTITY_AUDIT=1 in the environment (the checker in contrib/ sets
 * it), every server that asks for client certificates or hands requests
 * to an upstream is checked, whether or not the module is used there.
 * Every finding is logged before the configuration fails.
 */

const char *
verify_name(ngx_uint_t verify)
{
    switch (verify) {
    case 0:
        return "off";
    case 1:
        return "on";
    case 2:
        return "optional";
    default:
        return "optional_no_ca";
    }
}


const char *
directive_name(mtls::finding::source from)
{
    switch (from) {
    case mtls::finding::source::client_certificate:
        return "ssl_client_certificate";
    case mtls::finding::source::trusted_certificate:
        return "ssl_trusted_certificate";
    case mtls::finding::source::crl:
        return "ssl_crl";
    default:
        return "ssl_verify_depth";
    }
}


std::string
to_string(const ngx_str_t &s)
{
    return std::string(reinterpret_cast<char *>(s.data), s.len);
}


/* the trust files of one server; returns the number of errors */

ngx_uint_t
check_trust_of(ngx_conf_t *cf, ngx_http_core_srv_conf_t *cscf,
    ngx_http_ssl_srv_conf_t *sscf, bool name_keys,
    std::set<std::string> &seen)
{
    mtls::trust_input  in;

    in.trust_file = to_string(sscf->client_certificate);
    in.trusted_file = to_string(sscf->trusted_certificate);
    in.crl_file = to_string(sscf->crl);
    in.verify_depth = static_cast<int>(sscf->verify_depth);
    in.now = ngx_time();
    in.name_keys = name_keys;

    /* servers that inherit the same files are checked once */

    std::string key = in.trust_file + '\n' + in.trusted_file + '\n'
                      + in.crl_file + '\n'
                      + std::to_string(in.verify_depth)
                      + (name_keys ? "\nnames" : "");

    if (!seen.insert(key).second) {
        return 0;
    }

    ngx_uint_t errors = 0;

    for (const mtls::finding &f : mtls::check_trust(in)) {
        bool        error = f.severity == mtls::finding::level::error;
        ngx_uint_t  level = error ? NGX_LOG_EMERG : NGX_LOG_WARN;

        errors += error;

        ngx_log_error(level, cf->log, 0,
                      "\"%s\" of the server in %s:%ui: %s",
                      directive_name(f.directive), cscf->file_name,
                      cscf->line, f.message.c_str());
    }

    return errors;
}


/* one server; returns the number of errors */

ngx_uint_t
check_server(ngx_conf_t *cf, ngx_http_core_srv_conf_t *cscf, bool audit,
    std::set<std::string> &seen)
{
    auto *scf = static_cast<srv_conf_t *>(
        cscf->ctx->srv_conf[ngx_http_mtls_identity_module.ctx_index]);
    auto *sscf = static_cast<ngx_http_ssl_srv_conf_t *>(
        cscf->ctx->srv_conf[ngx_http_ssl_module.ctx_index]);

    ngx_uint_t  verify = sscf->verify;
    ngx_uint_t  errors = 0;

    if (!scf->uses_module && !(audit && (verify != 0 || scf->has_upstream)))
    {
        return 0;
    }

    if (scf->uses_module && (verify == 0 || verify == 3)) {
        errors++;
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"mtls_identity\" in %V:%ui needs client "
                      "certificates that nginx verified, but its server in "
                      "%s:%ui has \"ssl_verify_client %s\": use "
                      "\"ssl_verify_client on\", or \"optional\" to let "
                      "each location decide",
                      &scf->mode_place.file, scf->mode_place.line,
                      cscf->file_name, cscf->line, verify_name(verify));

    } else if (verify == 3) {
        errors++;
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "the server in %s:%ui has \"ssl_verify_client "
                      "optional_no_ca\", which passes certificates nginx "
                      "could not verify: use \"ssl_verify_client on\" or "
                      "\"optional\"", cscf->file_name, cscf->line);
    }

    if (scf->satisfy_place.line != 0) {
        errors++;
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"mtls_identity on\" in %V:%ui is in location "
                      "\"%V\" with \"satisfy any\", where an \"allow\" or "
                      "\"auth_basic\" match skips the identity check: use "
                      "\"satisfy all\"",
                      &scf->satisfy_place.file, scf->satisfy_place.line,
                      &scf->satisfy_location);
    }

    if (verify == 2 && scf->open_upstreams != nullptr) {
        auto *names = static_cast<ngx_str_t *>(scf->open_upstreams->elts);

        for (ngx_uint_t i = 0; i < scf->open_upstreams->nelts; i++) {
            ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                          "the server in %s:%ui lets clients in without a "
                          "certificate (\"ssl_verify_client optional\"), "
                          "and its location \"%V\" hands requests to an "
                          "upstream with \"mtls_identity off\": add "
                          "\"mtls_identity on\" there, or deny it",
                          cscf->file_name, cscf->line, &names[i]);
        }
    }

    if (verify != 0) {
        errors += check_trust_of(cf, cscf, sscf, scf->name_keys, seen);
    }

    return errors;
}


/*
 * Request headers are parsed with the settings of the default server of
 * an address (and, for HTTP/2, of the server SNI chose) before Host picks
 * a server: a server that lets through header names with underscores or
 * odd characters weakens every server beside it that forwards identity
 * headers.
 */

/* what a server sends upstream that a loose header parser weakens */

const char *
exposure(srv_conf_t *scf, bool audit)
{
    if (scf->forwards) {
        return "forwards identity headers";
    }

    return audit && scf->has_upstream ? "hands requests to an upstream"
                                      : nullptr;
}


void
warn_header_parsing(ngx_conf_t *cf, ngx_http_core_srv_conf_t *cscf,
    const char *setting, const char *fix, ngx_str_t *addr,
    ngx_http_core_srv_conf_t *exposed, const char *what)
{
    if (exposed == cscf) {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "the server in %s:%ui has \"%s\" and %s: use \"%s\"",
                      cscf->file_name, cscf->line, setting, what, fix);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                  "the server in %s:%ui has \"%s\" on %V, where the server "
                  "in %s:%ui %s: use \"%s\"",
                  cscf->file_name, cscf->line, setting, addr,
                  exposed->file_name, exposed->line, what, fix);
}


void
check_addresses(ngx_conf_t *cf, ngx_http_core_main_conf_t *cmcf, bool audit)
{
    if (cmcf->ports == nullptr) {
        return;
    }

    auto *ports = static_cast<ngx_http_conf_port_t *>(cmcf->ports->elts);

    for (ngx_uint_t p = 0; p < cmcf->ports->nelts; p++) {
        auto *addrs = static_cast<ngx_http_conf_addr_t *>(
            ports[p].addrs.elts);

        for (ngx_uint_t a = 0; a < ports[p].addrs.nelts; a++) {
            auto **servers = static_cast<ngx_http_core_srv_conf_t **>(
                addrs[a].servers.elts);
            ngx_http_core_srv_conf_t  *exposed = nullptr;
            const char                *what = nullptr;

            for (ngx_uint_t i = 0; i < addrs[a].servers.nelts; i++) {
                what = exposure(static_cast<srv_conf_t *>(
                    servers[i]->ctx->srv_conf[
                        ngx_http_mtls_identity_module.ctx_index]), audit);

                if (what != nullptr) {
                    exposed = servers[i];
                    break;
                }
            }

            if (exposed == nullptr) {
                continue;
            }

            for (ngx_uint_t i = 0; i < addrs[a].servers.nelts; i++) {
                ngx_http_core_srv_conf_t *cscf = servers[i];

                if (cscf->underscores_in_headers) {
                    warn_header_parsing(cf, cscf, "underscores_in_headers on",
                                        "underscores_in_headers off",
                                        &addrs[a].opt.addr_text, exposed,
                                        what);
                }

                if (!cscf->ignore_invalid_headers) {
                    warn_header_parsing(cf, cscf, "ignore_invalid_headers off",
                                        "ignore_invalid_headers on",
                                        &addrs[a].opt.addr_text, exposed,
                                        what);
                }
            }
        }
    }
}


ngx_int_t
check_configuration(ngx_conf_t *cf, ngx_http_core_main_conf_t *cmcf)
{
    const char *env = std::getenv("MTLS_IDENTITY_AUDIT");
    bool        audit = env != nullptr && ngx_strcmp(env, "1") == 0;
    ngx_uint_t  errors = 0;

    try {
        std::set<std::string>  seen;
        auto **servers = static_cast<ngx_http_core_srv_conf_t **>(
            cmcf->servers.elts);

        for (ngx_uint_t i = 0; i < cmcf->servers.nelts; i++) {
            errors += check_server(cf, servers[i], audit, seen);
        }

    } catch (const std::bad_alloc &) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "mtls identity: out of memory");
        return NGX_ERROR;
    }

    check_addresses(cf, cmcf, audit);

    return errors > 0 ? NGX_ERROR : NGX_OK;
}


ngx_int_t
postconfiguration(ngx_conf_t *cf)
{
    auto *mcf = conf_main(cf);
    auto *cmcf = static_cast<ngx_http_core_main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module));

    for (own_header_t &h : own_headers) {
        h.hash = ngx_hash_key(h.lowcase.data, h.lowcase.len);
    }

    if (check_configuration(cf, cmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    auto *h = static_cast<ngx_http_handler_pt *>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_POST_READ_PHASE].handlers));
    if (h == nullptr) {
        return NGX_ERROR;
    }

    *h = strip_handler;

    h = static_cast<ngx_http_handler_pt *>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers));
    if (h == nullptr) {
        return NGX_ERROR;
    }

    *h = strip_again_handler;

    h = static_cast<ngx_http_handler_pt *>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers));
    if (h == nullptr) {
        return NGX_ERROR;
    }

    *h = access_handler;

    h = static_cast<ngx_http_handler_pt *>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers));
    if (h == nullptr) {
        return NGX_ERROR;
    }

    *h = subrequest_handler;

    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == nullptr) {
        return NGX_ERROR;
    }

    /*
     * One slot per configuration cycle, released with the cycle's pool, so
     * a reload that drops the module leaves no callback into unloaded code.
     */

    mcf->ex_index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr,
                                         free_identity);
    if (mcf->ex_index == -1) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "mtls identity: SSL_get_ex_new_index() failed");
        return NGX_ERROR;
    }

    cln->handler = free_ex_index;
    cln->data = mcf;

    return NGX_OK;
}


/* ---------------------------------------------------------------------
 * Worker processes: each has its own database connections
 */

/* a database link of the worker, not yet connected */

std::unique_ptr<link_t>
new_link(ngx_cycle_t *cycle, main_conf_t *mcf)
{
    auto link = std::make_unique<link_t>();

    link->log = *cycle->log;
    link->log.handler = link_log_handler;
    link->log.data = nullptr;
    link->log.action = nullptr;

    link->timer.handler = link_timer_handler;
    link->timer.data = link.get();
    link->timer.log = &link->log;
    link->timer.cancelable = 1;

    /*
     * the server gives up a little before the module does, so a slow
     * statement ends with an error and the connection stays; it is set
     * first, so that a PREPARE waiting on a lock gives up too
     */

    link->pg.setup("SET statement_timeout = "
                   + std::to_string(mcf->timeout * 9 / 10 + 1));
    link->pg.setup(mtls::store::check_version);

    return link;
}


ngx_int_t
init_process(ngx_cycle_t *cycle)
{
    auto *mcf = static_cast<main_conf_t *>(
        ngx_http_cycle_get_module_main_conf(cycle,
                                            ngx_http_mtls_identity_module));

    if (mcf == nullptr || mcf->db == nullptr) {
        return NGX_OK;
    }

    try {
        worker = new worker_t();
        worker->mcf = mcf;
        worker->log = cycle->log;
        ngx_queue_init(&worker->waiting);

        for (ngx_uint_t i = 0; i < mcf->connections; i++) {
            auto link = new_link(cycle, mcf);

            link->pg.prepare(mtls::store::lookup.name,
                             mtls::store::lookup.sql,
                             mtls::store::lookup.params);

            worker->links.push_back(std::move(link));
        }

        if (mcf->cache != nullptr) {
            auto link = new_link(cycle, mcf);

            link->listener = true;
            link->pg.setup("SET application_name = "
                           "'nginx mtls_identity listener'");
            link->pg.prepare(mtls::store::version.name,
                             mtls::store::version.sql,
                             mtls::store::version.params);
            link->pg.prepare(mtls::store::changes.name,
                             mtls::store::changes.sql,
                             mtls::store::changes.params);
            link->pg.setup(std::string("LISTEN ")
                           + mtls::store::channel);

            worker->listener = std::move(link);

            worker->poll.handler = poll_handler;
            worker->poll.data = worker;
            worker->poll.log = cycle->log;
            worker->poll.cancelable = 1;
        }

    } catch (const std::bad_alloc &) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "mtls identity: out of memory");
        return NGX_ERROR;
    }

    for (auto &link : worker->links) {
        link_connect(link.get());
    }

    if (worker->listener) {
        link_connect(worker->listener.get());
        ngx_add_timer(&worker->poll, mcf->poll);
    }

    return NGX_OK;
}


void
close_link(link_t *link)
{
    link_release_socket(link);
    link->pg.close();

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }
}


void
exit_process(ngx_cycle_t *cycle)
{
    if (worker == nullptr) {
        return;
    }

    worker->exiting = true;

    for (auto &link : worker->links) {
        close_link(link.get());
    }

    if (worker->listener) {
        close_link(worker->listener.get());
    }

    if (worker->poll.timer_set) {
        ngx_del_timer(&worker->poll);
    }

    delete worker;
    worker = nullptr;
}

}  // namespace


ngx_module_t  ngx_http_mtls_identity_module = {
    NGX_MODULE_V1,
    &module_ctx,                       /* module context */
    commands,                          /* module directives */
    NGX_HTTP_MODULE,                   /* module type */
    nullptr,                           /* init master */
    nullptr,                           /* init module */
    init_process,                      /* init process */
    nullptr,                           /* init thread */
    nullptr,                           /* exit thread */
    exit_process,                      /* exit process */
    nullptr,                           /* exit master */
    NGX_MODULE_V1_PADDING
};
