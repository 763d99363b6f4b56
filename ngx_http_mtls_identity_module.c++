/*
 * ngx_http_mtls_identity_module: turns the TLS client certificate that
 * nginx verified into identity keys and nginx variables.
 *
 * This file is the nginx glue.  The certificate logic lives in src/, in
 * plain C++ without nginx headers.  Everything here but the module symbol
 * has internal linkage; no C++ exception leaves a function nginx calls.
 */

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include <new>
#include <type_traits>

#include "cert_identity.hpp"


extern "C" {
extern ngx_module_t  ngx_http_mtls_identity_module;
}


namespace {

struct main_conf_t {
    int  ex_index;         /* SSL ex_data slot of the derived identity */
};

static_assert(std::is_trivially_destructible<main_conf_t>::value,
              "pool memory never runs destructors");


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
    san_dns
};


ngx_int_t add_variables(ngx_conf_t *cf);
ngx_int_t postconfiguration(ngx_conf_t *cf);
void *create_main_conf(ngx_conf_t *cf);


ngx_http_module_t  module_ctx = {
    add_variables,                     /* preconfiguration */
    postconfiguration,                 /* postconfiguration */

    create_main_conf,                  /* create main configuration */
    nullptr,                           /* init main configuration */

    nullptr,                           /* create server configuration */
    nullptr,                           /* merge server configuration */

    nullptr,                           /* create location configuration */
    nullptr                            /* merge location configuration */
};


ngx_command_t  commands[] = {
    ngx_null_command
};


/*
 * The identity of a connection's peer certificate, derived on first use
 * and kept on the SSL object: a resumed session keeps the peer's leaf, and
 * every HTTP/2 stream of the connection shares it.  Returns nullptr when
 * the connection has no certificate that nginx verified.
 */

const mtls::cert_identity *
connection_identity(ngx_http_request_t *r)
{
    ngx_connection_t  *c = r->connection;
    main_conf_t       *mcf;
    const char        *ocsp;

    if (c->ssl == nullptr) {
        return nullptr;
    }

    mcf = static_cast<main_conf_t *>(
        ngx_http_get_module_main_conf(r, ngx_http_mtls_identity_module));

    SSL *ssl = c->ssl->connection;

    auto *id = static_cast<mtls::cert_identity *>(
        SSL_get_ex_data(ssl, mcf->ex_index));

    if (id != nullptr) {
        return id;
    }

    /* what nginx itself calls SUCCESS in $ssl_client_verify */

    if (SSL_get_verify_result(ssl) != X509_V_OK
        || ngx_ssl_ocsp_get_status(c, &ocsp) != NGX_OK)
    {
        return nullptr;
    }

    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (cert == nullptr) {
        return nullptr;
    }

    log_action  action(c->log, "deriving the client certificate identity");

    try {
        id = new mtls::cert_identity(mtls::derive_identity(cert));

    } catch (const std::bad_alloc &) {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "mtls identity: out of memory");
        return nullptr;
    }

    if (SSL_set_ex_data(ssl, mcf->ex_index, id) != 1) {
        delete id;
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "mtls identity: SSL_set_ex_data() failed");
        return nullptr;
    }

    if (!id->ok()) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "mtls identity: certificate %s yields no identity: %s",
                      id->fingerprint.c_str(), id->error.c_str());
    }

    return id;
}


void
free_identity(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
    long argl, void *argp)
{
    delete static_cast<mtls::cert_identity *>(ptr);
}


void
free_ex_index(void *data)
{
    CRYPTO_free_ex_index(CRYPTO_EX_INDEX_SSL,
                         static_cast<main_conf_t *>(data)->ex_index);
}


/* copies a value into the request pool; std::string never lives there */

ngx_int_t
set_value(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    const std::string &s)
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
identity_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    static const std::string  empty;

    try {
        const mtls::cert_identity *id = connection_identity(r);

        if (id == nullptr) {
            return set_value(r, v, empty);
        }

        if (static_cast<field_t>(data) == field_t::fingerprint) {
            return set_value(r, v, id->fingerprint);
        }

        if (!id->ok()) {
            return set_value(r, v, empty);
        }

        switch (static_cast<field_t>(data)) {
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

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "mtls identity: %s", e.what());
        return NGX_ERROR;
    }

    ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                  "mtls identity: unknown variable field %ui", data);
    return NGX_ERROR;
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
};


ngx_int_t
add_variables(ngx_conf_t *cf)
{
    for (variable_def_t &def : variables) {
        ngx_http_variable_t *var = ngx_http_add_variable(cf, &def.name,
                                                         NGX_HTTP_VAR_NOHASH);
        if (var == nullptr) {
            return NGX_ERROR;
        }

        var->get_handler = identity_variable;
        var->data = static_cast<uintptr_t>(def.field);
    }

    return NGX_OK;
}


void *
create_main_conf(ngx_conf_t *cf)
{
    auto *mcf = static_cast<main_conf_t *>(
        ngx_pcalloc(cf->pool, sizeof(main_conf_t)));
    if (mcf == nullptr) {
        return nullptr;
    }

    mcf->ex_index = -1;

    return mcf;
}


ngx_int_t
postconfiguration(ngx_conf_t *cf)
{
    auto *mcf = static_cast<main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf,
                                           ngx_http_mtls_identity_module));

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

}  // namespace


ngx_module_t  ngx_http_mtls_identity_module = {
    NGX_MODULE_V1,
    &module_ctx,                       /* module context */
    commands,                          /* module directives */
    NGX_HTTP_MODULE,                   /* module type */
    nullptr,                           /* init master */
    nullptr,                           /* init module */
    nullptr,                           /* init process */
    nullptr,                           /* init thread */
    nullptr,                           /* exit thread */
    nullptr,                           /* exit process */
    nullptr,                           /* exit master */
    NGX_MODULE_V1_PADDING
};
