//! Pure SQL builders for the PostgreSQL backend: schema DDL, row-level-security policies,
//! tenant login roles and the statement texts the store runs. Everything here returns strings;
//! nothing here talks to a database. Identifiers are validated before they are quoted, so no
//! builder can be fed an injection.
//!
//! Layout of one schema (one per EventStore; one more per siloed tenant):
//! `tenants(tenant, next_position, events, bytes, streams)` — one counter row per tenant, updated
//! in the append transaction: positions are gap-free and commit-ordered (the row lock serializes
//! a tenant's appends); `streams(tenant, stream, last_version, start_version, deleted)`;
//! `events(tenant, stream, version, position, event_id, ...)` with primary key
//! (tenant, stream, version), unique (tenant, position) for `read_all` and unique
//! (tenant, stream, event_id) for idempotency; `snapshots(tenant, stream, ...)`; and
//! `tenant_roles(role, tenant)`, owned by the admin, mapping a login role to its tenant.
//! Row-level security, enabled and forced, on every tenant table compares `tenant` with
//! `tenant_of(current_user)`, a SECURITY DEFINER lookup in `tenant_roles`: a tenant role has no
//! privilege on `tenant_roles` and no setting it could change to see another tenant's rows. A
//! second policy keeps every row visible to the tables' owner (the admin), which forced RLS
//! would otherwise confine too. A login role is never shared: its name carries a hash of store
//! schema and tenant, and `tenant_role_ddl` refuses a role mapped to another tenant.

use allsource_core::error::StoreError;

/// Tables that carry a `tenant` column and get the isolation policy.
pub const TENANT_TABLES: [&str; 4] = ["tenants", "streams", "events", "snapshots"];

/// Name of the row-level-security policy on every tenant table.
pub const POLICY: &str = "allsource_tenant_isolation";

/// Name of the policy that lets the tables' owner (the admin) see every row under
/// `FORCE ROW LEVEL SECURITY`.
pub const OWNER_POLICY: &str = "allsource_owner";

/// SQLSTATE raised by [`tenant_role_ddl`] when the login role is mapped to another tenant or
/// exists without being a login role of this schema's tenants (never shared, never adopted).
pub const ROLE_CONFLICT: &str = "AS001";

/// Checks a PostgreSQL identifier we create (schema or role): `[a-z_][a-z0-9_]{0,62}`.
pub fn ident(name: &str) -> Result<String, StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(format!("\"{name}\""))
    } else {
        Err(StoreError::invalid(
            "schema",
            format!("{name:?} is not a valid identifier ([a-z_][a-z0-9_]*, at most 63 bytes)"),
        ))
    }
}

/// Login role name of a pooled tenant: `<prefix>_<tenant id>` (every byte other than `[a-z0-9_]`
/// as `_`) cut to 54 bytes, then `_` and 8 hex digits of SHA-256 of `<prefix>/<tenant>/pooled`:
/// 63 bytes at most, and two tenants whose names agree up to the cut (a long shared prefix, a
/// long store schema) still get different roles. The `/pooled` domain keeps the hash apart from
/// the operator's silo schema names (`<schema>__<tenant>_<hash of schema/tenant>`), which are
/// login roles too. A collision of the 32-bit suffix is not a shared role either: the mapping in
/// `tenant_roles` is checked by [`tenant_role_ddl`], which refuses a role of another tenant.
pub fn tenant_role(prefix: &str, tenant: &str) -> String {
    use sha2::Digest;
    let mut r: String = format!("{prefix}_{tenant}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    r.truncate(63 - 9);
    let digest = sha2::Sha256::digest(format!("{prefix}/{tenant}/pooled").as_bytes());
    r.push('_');
    r.push_str(&hex::encode(&digest[..4]));
    r
}

/// The role name [`tenant_role`] gave before it carried a hash (`<prefix>_<tenant with '-' as
/// '_'>` cut to 63 bytes, which two tenants could share). Only used to find and retire such a
/// role when its tenant moves to its new name; never created.
pub fn legacy_tenant_role(prefix: &str, tenant: &str) -> String {
    let mut r = format!("{prefix}_{}", tenant.replace('-', "_"));
    r.truncate(63);
    r
}

/// Schema of a siloed tenant: `<base>_t_<tenant with '-' as '_'>`, cut to 63 bytes.
pub fn silo_schema(base: &str, tenant: &str) -> String {
    let mut s = format!("{base}_t_{}", tenant.replace('-', "_"));
    s.truncate(63);
    s
}

/// Escapes a string literal (for passwords in CREATE ROLE, which takes no parameters).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// DDL creating (idempotently) every table, index, the role map and the RLS policies of a schema.
pub fn schema_ddl(schema: &str) -> Result<Vec<String>, StoreError> {
    let s = ident(schema)?;
    let mut v = vec![
        format!("CREATE SCHEMA IF NOT EXISTS {s}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.tenants (
                tenant text PRIMARY KEY,
                next_position bigint NOT NULL DEFAULT 0,
                events bigint NOT NULL DEFAULT 0,
                bytes bigint NOT NULL DEFAULT 0,
                streams bigint NOT NULL DEFAULT 0)"
        ),
        // Positions below were archived and trimmed (added after the first release: stores made
        // before it get the column here).
        format!(
            "ALTER TABLE {s}.tenants ADD COLUMN IF NOT EXISTS trimmed_before bigint NOT NULL DEFAULT 0"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.streams (
                tenant text NOT NULL,
                stream text COLLATE \"C\" NOT NULL,
                last_version bigint NOT NULL,
                start_version bigint NOT NULL DEFAULT 0,
                deleted boolean NOT NULL DEFAULT false,
                PRIMARY KEY (tenant, stream))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.events (
                tenant text NOT NULL,
                stream text COLLATE \"C\" NOT NULL,
                version bigint NOT NULL,
                position bigint NOT NULL,
                event_id uuid NOT NULL,
                event_type text NOT NULL,
                payload bytea NOT NULL,
                metadata jsonb NOT NULL,
                created_ms bigint NOT NULL,
                size_bytes bigint NOT NULL,
                PRIMARY KEY (tenant, stream, version))"
        ),
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS events_tenant_position ON {s}.events (tenant, position)"
        ),
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS events_tenant_stream_event_id ON {s}.events (tenant, stream, event_id)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.snapshots (
                tenant text NOT NULL,
                stream text COLLATE \"C\" NOT NULL,
                version bigint NOT NULL,
                payload bytea NOT NULL,
                metadata jsonb NOT NULL,
                created_ms bigint NOT NULL,
                PRIMARY KEY (tenant, stream))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.tenant_roles (role name PRIMARY KEY, tenant text NOT NULL)"
        ),
        format!("REVOKE ALL ON {s}.tenant_roles FROM PUBLIC"),
        format!(
            "CREATE OR REPLACE FUNCTION {s}.tenant_of(r name) RETURNS text
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
             AS $f$ SELECT tenant FROM {s}.tenant_roles WHERE role = r $f$"
        ),
    ];
    for t in TENANT_TABLES {
        v.push(format!("ALTER TABLE {s}.{t} ENABLE ROW LEVEL SECURITY"));
        v.push(format!("ALTER TABLE {s}.{t} FORCE ROW LEVEL SECURITY"));
        v.push(format!("DROP POLICY IF EXISTS {POLICY} ON {s}.{t}"));
        v.push(format!(
            "CREATE POLICY {POLICY} ON {s}.{t} USING (tenant = {s}.tenant_of(current_user)) \
             WITH CHECK (tenant = {s}.tenant_of(current_user))"
        ));
        // Forced RLS applies to the table's owner too: the owner (the admin the gateway and the
        // operator connect as, or a member of it) keeps every row through its own policy, looked
        // up from the catalog so an ALTER ... OWNER cannot leave a stale name behind.
        v.push(format!("DROP POLICY IF EXISTS {OWNER_POLICY} ON {s}.{t}"));
        v.push(format!(
            "CREATE POLICY {OWNER_POLICY} ON {s}.{t} USING (pg_catalog.pg_has_role(current_user, \
             (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = {reg}::regclass), 'USAGE'))",
            reg = literal(&format!("{s}.{t}"))
        ));
    }
    Ok(v)
}

/// Statements creating (or updating the password of) a pooled tenant's login role and mapping it
/// to the tenant. The role gets data privileges on the tenant tables only; RLS restricts rows.
pub fn tenant_role_ddl(
    schema: &str,
    role: &str,
    tenant: &str,
    password: &str,
) -> Result<Vec<String>, StoreError> {
    let s = ident(schema)?;
    let r = ident(role)?;
    let tables = TENANT_TABLES
        .iter()
        .map(|t| format!("{s}.{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (rl, tl) = (literal(role), literal(tenant));
    Ok(vec![
        // Never share a role: refuse one mapped to another tenant, or one that exists without
        // being mapped here (another database's store, a hand-made role), instead of resetting
        // its password and mapping under the sessions already open with it.
        format!(
            "DO $d$ BEGIN \
             IF EXISTS (SELECT 1 FROM {s}.tenant_roles WHERE role = {rl} AND tenant <> {tl}) THEN \
             RAISE EXCEPTION 'login role % is mapped to another tenant (%) in schema %; refusing to share it', \
             {rl}, (SELECT tenant FROM {s}.tenant_roles WHERE role = {rl}), {sl} USING ERRCODE = '{ROLE_CONFLICT}'; END IF; \
             IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {rl}) THEN \
             IF NOT EXISTS (SELECT 1 FROM {s}.tenant_roles WHERE role = {rl}) THEN \
             RAISE EXCEPTION 'role % exists but is no login role of schema %; refusing to adopt it (drop it or rename it)', \
             {rl}, {sl} USING ERRCODE = '{ROLE_CONFLICT}'; END IF; \
             ELSE CREATE ROLE {r} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE; END IF; END $d$",
            sl = literal(schema)
        ),
        format!("ALTER ROLE {r} LOGIN NOBYPASSRLS PASSWORD {}", literal(password)),
        format!("GRANT USAGE ON SCHEMA {s} TO {r}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO {r}"),
        format!("GRANT EXECUTE ON FUNCTION {s}.tenant_of(name) TO {r}"),
        format!(
            "INSERT INTO {s}.tenant_roles (role, tenant) VALUES ({rl}, {tl}) \
             ON CONFLICT (role) DO NOTHING"
        ),
    ])
}

/// Statements removing a tenant role (its rows stay unless `drop_data`).
pub fn drop_tenant_role_ddl(
    schema: &str,
    role: &str,
    tenant: &str,
    drop_data: bool,
) -> Result<Vec<String>, StoreError> {
    let s = ident(schema)?;
    let r = ident(role)?;
    let mut v = Vec::new();
    if drop_data {
        for t in TENANT_TABLES {
            v.push(format!(
                "DELETE FROM {s}.{t} WHERE tenant = {}",
                literal(tenant)
            ));
        }
    }
    // Only a role mapped to this very tenant is ours to drop: a role of another tenant (a name
    // collision refused by `tenant_role_ddl`) or an unmapped one is left alone.
    v.push(format!(
        "DO $d$ BEGIN IF EXISTS (SELECT 1 FROM {s}.tenant_roles WHERE role = {rl} AND tenant = {tl}) THEN \
         DELETE FROM {s}.tenant_roles WHERE role = {rl}; \
         IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {rl}) THEN \
         EXECUTE 'REVOKE ALL ON ALL TABLES IN SCHEMA {sn} FROM {rn}'; \
         EXECUTE 'REVOKE ALL ON SCHEMA {sn} FROM {rn}'; \
         EXECUTE 'REVOKE ALL ON FUNCTION {sn}.tenant_of(name) FROM {rn}'; \
         EXECUTE 'DROP ROLE {rn}'; END IF; END IF; END $d$",
        rl = literal(role),
        tl = literal(tenant),
        sn = s.replace('\'', "''"),
        rn = r.replace('\'', "''"),
    ));
    Ok(v)
}

/// Statement texts of the data path for one schema.
#[derive(Debug, Clone)]
pub struct Queries {
    /// Locks a stream head: (tenant, stream) -> last_version, start_version, deleted.
    pub lock_stream: String,
    /// Reads a stream head without locking.
    pub get_stream: String,
    /// Finds stored event ids: (tenant, stream, ids[]) -> version, position.
    pub find_ids: String,
    /// Ensures the tenant counter row exists.
    pub ensure_tenant: String,
    /// Reserves `n` positions and adds usage: (tenant, n, bytes, new_streams) -> first position.
    pub reserve: String,
    /// Inserts a new stream head.
    pub insert_stream: String,
    /// Updates a stream head.
    pub update_stream: String,
    /// Inserts events from arrays (UNNEST).
    pub insert_events: String,
    /// Reads a version range ascending: (tenant, stream, lo, hi).
    pub read_forwards: String,
    /// Reads a version range descending: (tenant, stream, lo, hi).
    pub read_backwards: String,
    /// Reads a tenant from a position: (tenant, from, limit).
    pub read_all: String,
    /// Upserts a snapshot.
    pub save_snapshot: String,
    /// Loads a snapshot.
    pub load_snapshot: String,
    /// Lists streams after a stream id: (tenant, after, limit).
    pub list_streams: String,
    /// Tenant counters: (tenant) -> next_position, events, bytes, streams.
    pub tenant_row: String,
    /// Marks a stream deleted.
    pub delete_stream: String,
    /// Deletes a stream's events below a version, returning count and bytes.
    pub truncate: String,
    /// Deletes a tenant's events below a position, returning count and bytes.
    pub trim: String,
    /// Subtracts usage: (tenant, events, bytes, streams).
    pub sub_usage: String,
    /// Raises the tenant's trim watermark: (tenant, before).
    pub set_trimmed: String,
    /// Moves a stream's first readable version up to a truncation point: (tenant, stream, before).
    pub set_start: String,
    /// The tenant's trim watermark: (tenant).
    pub trimmed_before: String,
}

impl Queries {
    /// Builds the statement texts for a schema.
    pub fn new(schema: &str) -> Result<Self, StoreError> {
        let s = ident(schema)?;
        let cols = "tenant, stream, version, position, event_id, event_type, payload, metadata::text, created_ms";
        Ok(Self {
            lock_stream: format!(
                "SELECT last_version, start_version, deleted FROM {s}.streams WHERE tenant = $1 AND stream = $2 FOR UPDATE"
            ),
            get_stream: format!(
                "SELECT last_version, start_version, deleted FROM {s}.streams WHERE tenant = $1 AND stream = $2"
            ),
            find_ids: format!(
                "SELECT version, position FROM {s}.events WHERE tenant = $1 AND stream = $2 AND event_id = ANY($3)"
            ),
            ensure_tenant: format!(
                "INSERT INTO {s}.tenants (tenant) VALUES ($1) ON CONFLICT (tenant) DO NOTHING"
            ),
            reserve: format!(
                "UPDATE {s}.tenants SET next_position = next_position + $2, events = events + $2, \
                 bytes = bytes + $3, streams = streams + $4 WHERE tenant = $1 RETURNING next_position - $2"
            ),
            insert_stream: format!(
                "INSERT INTO {s}.streams (tenant, stream, last_version, start_version, deleted) \
                 VALUES ($1, $2, $3, $4, false) ON CONFLICT (tenant, stream) DO NOTHING"
            ),
            update_stream: format!(
                "UPDATE {s}.streams SET last_version = $3, start_version = $4, deleted = false \
                 WHERE tenant = $1 AND stream = $2"
            ),
            insert_events: format!(
                "INSERT INTO {s}.events (tenant, stream, version, position, event_id, event_type, payload, metadata, created_ms, size_bytes) \
                 SELECT $1, $2, v, p, i, t, d, m::jsonb, $3, z \
                 FROM UNNEST($4::bigint[], $5::bigint[], $6::uuid[], $7::text[], $8::bytea[], $9::text[], $10::bigint[]) AS x(v, p, i, t, d, m, z)"
            ),
            read_forwards: format!(
                "SELECT {cols} FROM {s}.events WHERE tenant = $1 AND stream = $2 AND version BETWEEN $3 AND $4 ORDER BY version ASC"
            ),
            read_backwards: format!(
                "SELECT {cols} FROM {s}.events WHERE tenant = $1 AND stream = $2 AND version BETWEEN $3 AND $4 ORDER BY version DESC"
            ),
            read_all: format!(
                "SELECT {cols} FROM {s}.events WHERE tenant = $1 AND position >= $2 ORDER BY position ASC LIMIT $3"
            ),
            save_snapshot: format!(
                "INSERT INTO {s}.snapshots (tenant, stream, version, payload, metadata, created_ms) \
                 VALUES ($1, $2, $3, $4, $5::text::jsonb, $6) ON CONFLICT (tenant, stream) DO UPDATE SET \
                 version = EXCLUDED.version, payload = EXCLUDED.payload, metadata = EXCLUDED.metadata, created_ms = EXCLUDED.created_ms"
            ),
            load_snapshot: format!(
                "SELECT version, payload, metadata::text, created_ms FROM {s}.snapshots WHERE tenant = $1 AND stream = $2"
            ),
            list_streams: format!(
                "SELECT stream, last_version, deleted FROM {s}.streams WHERE tenant = $1 AND stream > $2 ORDER BY stream LIMIT $3"
            ),
            tenant_row: format!(
                "SELECT next_position, events, bytes, streams, trimmed_before FROM {s}.tenants WHERE tenant = $1"
            ),
            delete_stream: format!(
                "UPDATE {s}.streams SET deleted = true WHERE tenant = $1 AND stream = $2 AND NOT deleted"
            ),
            truncate: format!(
                "WITH d AS (DELETE FROM {s}.events WHERE tenant = $1 AND stream = $2 AND version < $3 RETURNING size_bytes) \
                 SELECT count(*)::bigint, coalesce(sum(size_bytes), 0)::bigint FROM d"
            ),
            trim: format!(
                "WITH d AS (DELETE FROM {s}.events WHERE tenant = $1 AND position < $2 RETURNING size_bytes) \
                 SELECT count(*)::bigint, coalesce(sum(size_bytes), 0)::bigint FROM d"
            ),
            set_trimmed: format!(
                "UPDATE {s}.tenants SET trimmed_before = greatest(trimmed_before, least($2, next_position)) \
                 WHERE tenant = $1"
            ),
            set_start: format!(
                "UPDATE {s}.streams SET start_version = greatest(start_version, least($3, last_version + 1)) \
                 WHERE tenant = $1 AND stream = $2"
            ),
            trimmed_before: format!("SELECT trimmed_before FROM {s}.tenants WHERE tenant = $1"),
            sub_usage: format!(
                "UPDATE {s}.tenants SET events = events - $2, bytes = bytes - $3, streams = streams - $4 WHERE tenant = $1"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        assert_eq!(ident("allsource").ok(), Some("\"allsource\"".to_string()));
        for bad in ["", "A", "a-b", "a\"b", "1a", "a;drop", &"a".repeat(64)] {
            assert!(ident(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_tenant_table_gets_a_policy() {
        let ddl = schema_ddl("es1").unwrap_or_default();
        for t in TENANT_TABLES {
            assert!(ddl.iter().any(|s| s.contains(&format!(
                "ALTER TABLE \"es1\".{t} ENABLE ROW LEVEL SECURITY"
            ))));
            assert!(ddl.iter().any(|s| s
                .contains(&format!("CREATE POLICY {POLICY} ON \"es1\".{t}"))
                && s.contains("tenant_of(current_user)")));
        }
        // The role map is never readable by tenants.
        assert!(ddl
            .iter()
            .any(|s| s == "REVOKE ALL ON \"es1\".tenant_roles FROM PUBLIC"));
    }

    #[test]
    fn role_names_and_passwords_are_escaped() {
        let r = tenant_role("as", "acme-1");
        assert!(
            r.starts_with("as_acme_1_") && r.len() == "as_acme_1_".len() + 8,
            "{r}"
        );
        assert_eq!(legacy_tenant_role("as", "acme-1"), "as_acme_1");
        assert_eq!(silo_schema("es", "acme-1"), "es_t_acme_1");
        let ddl = tenant_role_ddl("es", "as_acme", "acme", "p'w").unwrap_or_default();
        assert!(ddl.iter().any(|s| s.contains("PASSWORD 'p''w'")));
        assert!(tenant_role_ddl("es", "bad-role", "acme", "x").is_err());
    }

    #[test]
    fn role_names_never_collide_at_the_cut() {
        // A 50-character store name (default schema of 63 bytes) and tenant ids sharing a
        // 40-character prefix: the old names were equal, these are not.
        let schema = format!("allsource_shop_{}_1a2b3c4d", "s".repeat(38));
        let prefix = "t".repeat(40);
        let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
        assert_eq!(
            legacy_tenant_role(&schema, &a),
            legacy_tenant_role(&schema, &b)
        );
        let (ra, rb) = (tenant_role(&schema, &a), tenant_role(&schema, &b));
        assert_ne!(ra, rb);
        for r in [&ra, &rb] {
            assert!(ident(r).is_ok(), "{r}");
        }
        // Stable, and different per store.
        assert_eq!(ra, tenant_role(&schema, &a));
        assert_ne!(tenant_role("s1", "t"), tenant_role("s2", "t"));
    }

    #[test]
    fn role_ddl_refuses_a_role_of_another_tenant_and_forces_rls() {
        let ddl = tenant_role_ddl("es", "es_acme", "acme", "x").unwrap_or_default();
        assert!(ddl[0].contains("tenant <> 'acme'") && ddl[0].contains(ROLE_CONFLICT));
        assert!(
            !ddl.iter().any(|s| s.contains("DO UPDATE")),
            "mapping is never rewritten"
        );
        let schema = schema_ddl("es").unwrap_or_default();
        for t in TENANT_TABLES {
            assert!(schema.contains(&format!("ALTER TABLE \"es\".{t} FORCE ROW LEVEL SECURITY")));
        }
        let drop = drop_tenant_role_ddl("es", "es_acme", "acme", false).unwrap_or_default();
        assert!(drop
            .iter()
            .all(|s| !s.starts_with("DELETE FROM \"es\".tenant_roles")));
        assert!(drop.iter().any(|s| s.contains("AND tenant = 'acme'")));
    }
}
