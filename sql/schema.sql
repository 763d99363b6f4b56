-- The allowlist and revocation list that ngx_http_mtls_identity_module
-- reads, version 2.  Apply with:
--
--     psql -v ON_ERROR_STOP=1 -f sql/schema.sql DBNAME
--
-- Applying it again is safe, and brings a database made by an earlier
-- version up to this one; the module checks the version when it
-- connects.
--
-- Every key is stored in the canonical text form the module derives from
-- the certificate (README.md, "Identity keys"); constraints refuse any
-- other form, so a badly written row fails at INSERT instead of silently
-- never matching.  The module only reads; grant it SELECT and nothing
-- more (see the end of this file).

BEGIN;

CREATE SCHEMA IF NOT EXISTS mtls_identity;

CREATE TABLE IF NOT EXISTS mtls_identity.schema_version (
    version     integer     PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);


-- canonical forms -------------------------------------------------------

-- 64 lowercase hex digits: a SHA-256 fingerprint or SPKI hash
CREATE OR REPLACE FUNCTION mtls_identity.is_sha256_hex(v text)
RETURNS boolean LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT v ~ '^[0-9a-f]{64}$' $$;

-- lowercase hex without leading zeros, "0", or "-" and the magnitude
CREATE OR REPLACE FUNCTION mtls_identity.is_serial(v text)
RETURNS boolean LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT v ~ '^(0|-?[1-9a-f][0-9a-f]*)$' $$;

-- a key identifier: lowercase hex bytes, no colons
CREATE OR REPLACE FUNCTION mtls_identity.is_key_id(v text)
RETURNS boolean LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT v ~ '^([0-9a-f]{2})+$' $$;

-- non-empty text with no control character (C0 or DEL)
CREATE OR REPLACE FUNCTION mtls_identity.is_clean(v text)
RETURNS boolean LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT v <> '' AND v !~ '[\x01-\x1f\x7f]' $$;

-- an RFC 4514 distinguished name as the module renders it: most specific
-- RDN first, "type=value" pairs; never the slash-separated legacy form
-- nor OpenSSL's "type = value" one-line form
CREATE OR REPLACE FUNCTION mtls_identity.is_dn(v text)
RETURNS boolean LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT mtls_identity.is_clean(v)
          AND v ~ '^[A-Za-z][A-Za-z0-9.-]*='
          AND v !~ '^[A-Za-z][A-Za-z0-9.-]* = ' $$;

-- a SAN value: printable ASCII, as an IA5String in a certificate holds
CREATE OR REPLACE FUNCTION mtls_identity.is_san(v text)
RETURNS boolean LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT v ~ '^[\x20-\x7e]+$' $$;

-- group names: clean, no surrounding spaces, no comma, quote or backslash
-- (the module would encode them, but no application should need to)
CREATE OR REPLACE FUNCTION mtls_identity.are_groups(v text[])
RETURNS boolean LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT coalesce(bool_and(g IS NOT NULL
                            AND mtls_identity.is_clean(g)
                            AND g !~ '[,"\\%]' AND g = btrim(g)
                            AND length(g) <= 128), true)
   FROM unnest(v) AS g $$;


-- identities ------------------------------------------------------------

CREATE TABLE IF NOT EXISTS mtls_identity.identity (
    id              bigserial   PRIMARY KEY,
    username        text        NOT NULL,
    groups          text[]      NOT NULL DEFAULT '{}',
    key_kind        text        NOT NULL,
    key_value       text        NOT NULL,
    -- the CA that must have issued the certificate, read from the leaf
    -- itself: its issuer name and its authority key identifier.  Both are
    -- required for every kind but the two hashes, so the same name from
    -- another trusted CA (even one with the same DN) never matches.
    issuer_dn       text,
    issuer_key_id   text,
    enabled         boolean     NOT NULL DEFAULT true,
    -- the grant window, compared with nginx's clock; NULL is open-ended
    valid_from      timestamptz,
    valid_until     timestamptz,
    note            text,
    created_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT identity_username_clean
        CHECK (mtls_identity.is_clean(username) AND username = btrim(username)
               AND length(username) <= 150),
    CONSTRAINT identity_groups_clean
        CHECK (mtls_identity.are_groups(groups)),
    CONSTRAINT identity_key_kind
        CHECK (key_kind IN ('fingerprint', 'spki', 'subject',
                            'issuer_serial', 'san_uri', 'san_email',
                            'san_dns')),
    CONSTRAINT identity_key_canonical
        CHECK (CASE key_kind
                   WHEN 'fingerprint' THEN mtls_identity.is_sha256_hex(key_value)
                   WHEN 'spki' THEN mtls_identity.is_sha256_hex(key_value)
                   WHEN 'issuer_serial' THEN mtls_identity.is_serial(key_value)
                   WHEN 'subject' THEN mtls_identity.is_dn(key_value)
                   ELSE mtls_identity.is_san(key_value)
               END),
    CONSTRAINT identity_issuer_bound
        CHECK (key_kind IN ('fingerprint', 'spki')
               OR (issuer_dn IS NOT NULL AND issuer_key_id IS NOT NULL)),
    CONSTRAINT identity_issuer_dn
        CHECK (issuer_dn IS NULL OR mtls_identity.is_dn(issuer_dn)),
    CONSTRAINT identity_issuer_key_id
        CHECK (issuer_key_id IS NULL OR mtls_identity.is_key_id(issuer_key_id)),
    CONSTRAINT identity_window
        CHECK ((valid_from IS NULL OR isfinite(valid_from))
               AND (valid_until IS NULL OR isfinite(valid_until))
               AND (valid_from IS NULL OR valid_until IS NULL
                    OR valid_from < valid_until))
);

-- one row per key and issuer: two users never claim the same key
CREATE UNIQUE INDEX IF NOT EXISTS identity_key
    ON mtls_identity.identity (key_kind, key_value,
                               coalesce(issuer_dn, ''),
                               coalesce(issuer_key_id, ''));


-- revocations -----------------------------------------------------------

CREATE TABLE IF NOT EXISTS mtls_identity.revocation (
    id              bigserial   PRIMARY KEY,
    fingerprint     text,
    -- by issuer and serial: the leaf's issuer DN and serial, and, when
    -- given, its authority key identifier (NULL revokes that serial from
    -- every CA with that DN)
    issuer_dn       text,
    issuer_key_id   text,
    serial          text,
    reason          text,
    revoked_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT revocation_target
        CHECK (fingerprint IS NOT NULL
               OR (issuer_dn IS NOT NULL AND serial IS NOT NULL)),
    CONSTRAINT revocation_fingerprint
        CHECK (fingerprint IS NULL OR mtls_identity.is_sha256_hex(fingerprint)),
    CONSTRAINT revocation_issuer_dn
        CHECK (issuer_dn IS NULL OR mtls_identity.is_dn(issuer_dn)),
    CONSTRAINT revocation_issuer_key_id
        CHECK (issuer_key_id IS NULL
               OR mtls_identity.is_key_id(issuer_key_id)),
    CONSTRAINT revocation_serial
        CHECK (serial IS NULL OR mtls_identity.is_serial(serial)),
    CONSTRAINT revocation_pair
        CHECK ((issuer_dn IS NULL) = (serial IS NULL)
               AND (issuer_key_id IS NULL OR serial IS NOT NULL))
);

CREATE INDEX IF NOT EXISTS revocation_fingerprint_idx
    ON mtls_identity.revocation (fingerprint)
    WHERE fingerprint IS NOT NULL;

CREATE INDEX IF NOT EXISTS revocation_serial_idx
    ON mtls_identity.revocation (serial, issuer_dn)
    WHERE serial IS NOT NULL;


-- change tracking -------------------------------------------------------
--
-- Every statement that changes an identity or a revocation takes the next
-- version from the one row of mtls_identity.state, records the keys it
-- touched in mtls_identity.change and sends them with NOTIFY on the
-- channel "mtls_identity".  The row lock on mtls_identity.state is held
-- until COMMIT, so versions become visible in commit order: a listener
-- that has seen version N and then reads every change above N has missed
-- nothing (a sequence would not give that: its values are handed out
-- before commit, in any order).
--
-- A change names its keys as tokens: the first 16 hex digits of
-- md5(kind || ':' || value), where kind is fingerprint, spki, subject,
-- serial, san_uri, san_email or san_dns.  The module evicts every cached
-- lookup of a certificate that has one of those keys; "*" evicts them all.

-- `epoch` names this copy of the schema: a cache that finds another
-- epoch (the schema was recreated, or nginx now reads another database)
-- starts over, whatever the versions say.
CREATE TABLE IF NOT EXISTS mtls_identity.state (
    one         boolean     PRIMARY KEY DEFAULT true CHECK (one),
    version     bigint      NOT NULL DEFAULT 0,
    epoch       text        NOT NULL DEFAULT gen_random_uuid()::text
);

-- version 1 had no epoch
ALTER TABLE mtls_identity.state
    ADD COLUMN IF NOT EXISTS epoch text NOT NULL
        DEFAULT gen_random_uuid()::text;

INSERT INTO mtls_identity.state (one, version) VALUES (true, 0)
    ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS mtls_identity.change (
    version     bigint      PRIMARY KEY,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    keys        text        NOT NULL
);

CREATE OR REPLACE FUNCTION mtls_identity.key_token(kind text, value text)
RETURNS text LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT left(md5(kind || ':' || value), 16) $$;

CREATE OR REPLACE FUNCTION mtls_identity.record_change()
RETURNS trigger LANGUAGE plpgsql AS
$$
DECLARE
    tokens  text[] := '{}';
    keys    text;
    v       bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        keys := '*';
    ELSE
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            IF TG_TABLE_NAME = 'identity' THEN
                tokens := tokens || ARRAY(
                    SELECT mtls_identity.key_token(
                               CASE key_kind WHEN 'issuer_serial'
                                    THEN 'serial' ELSE key_kind END,
                               key_value)
                    FROM new_rows);
            ELSE
                tokens := tokens || ARRAY(
                    SELECT t FROM new_rows,
                        LATERAL unnest(ARRAY[
                            mtls_identity.key_token('fingerprint',
                                                    fingerprint),
                            mtls_identity.key_token('serial', serial)]) t
                    WHERE t IS NOT NULL);
            END IF;
        END IF;

        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            IF TG_TABLE_NAME = 'identity' THEN
                tokens := tokens || ARRAY(
                    SELECT mtls_identity.key_token(
                               CASE key_kind WHEN 'issuer_serial'
                                    THEN 'serial' ELSE key_kind END,
                               key_value)
                    FROM old_rows);
            ELSE
                tokens := tokens || ARRAY(
                    SELECT t FROM old_rows,
                        LATERAL unnest(ARRAY[
                            mtls_identity.key_token('fingerprint',
                                                    fingerprint),
                            mtls_identity.key_token('serial', serial)]) t
                    WHERE t IS NOT NULL);
            END IF;
        END IF;

        IF cardinality(tokens) = 0 THEN
            RETURN NULL;
        END IF;

        SELECT string_agg(DISTINCT t, ' ') INTO keys FROM unnest(tokens) t;

        -- a NOTIFY payload holds less than 8000 bytes
        IF length(keys) > 4000 THEN
            keys := '*';
        END IF;
    END IF;

    UPDATE mtls_identity.state SET version = version + 1
        RETURNING version INTO v;

    INSERT INTO mtls_identity.change (version, keys) VALUES (v, keys);

    -- keep the recent past only: a listener that missed more starts over
    DELETE FROM mtls_identity.change WHERE version <= v - 10000;

    PERFORM pg_notify('mtls_identity', v || ' ' || keys);

    RETURN NULL;
END
$$;

DO $$
DECLARE
    t   text;
    op  text;
BEGIN
    FOREACH t IN ARRAY ARRAY['identity', 'revocation'] LOOP
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON mtls_identity.%I',
                           t || '_' || op, t);
        END LOOP;

        EXECUTE format(
            'CREATE TRIGGER %I AFTER INSERT ON mtls_identity.%I'
            ' REFERENCING NEW TABLE AS new_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION'
            ' mtls_identity.record_change()', t || '_insert', t);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER UPDATE ON mtls_identity.%I'
            ' REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION'
            ' mtls_identity.record_change()', t || '_update', t);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER DELETE ON mtls_identity.%I'
            ' REFERENCING OLD TABLE AS old_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION'
            ' mtls_identity.record_change()', t || '_delete', t);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON mtls_identity.%I',
                       t || '_truncate', t);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER TRUNCATE ON mtls_identity.%I'
            ' FOR EACH STATEMENT EXECUTE FUNCTION'
            ' mtls_identity.record_change()', t || '_truncate', t);
    END LOOP;
END
$$;


INSERT INTO mtls_identity.schema_version (version) VALUES (1), (2)
    ON CONFLICT DO NOTHING;

COMMIT;

-- A read-only role for nginx, for example:
--
--   CREATE ROLE nginx_mtls LOGIN;
--   GRANT USAGE ON SCHEMA mtls_identity TO nginx_mtls;
--   GRANT SELECT ON mtls_identity.identity, mtls_identity.revocation,
--       mtls_identity.state, mtls_identity.change TO nginx_mtls;
