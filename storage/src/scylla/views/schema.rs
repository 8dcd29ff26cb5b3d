//! The keyspace and its tables, created or migrated at start-up.
//!
//! Migrations are numbered and applied in order; `schema_version` records each
//! one applied, so a later release adds migration 2 and every node that starts
//! applies what it lacks. Every statement is `IF NOT EXISTS` (or otherwise
//! idempotent), so nodes starting together, or a start interrupted halfway,
//! converge on the same schema.

use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use tracing::info;

use super::config::ScyllaConfig;
use super::{now_micros, storage};
use emosation_core::ports::{CORE_VIEWS, StoreError};
use emosation_core::view::{ACTIVITY_VIEWS, ADMIN_VIEWS};

/// Tables of migration 1; `{ks}` is replaced by the keyspace. See
/// docs/architecture.md ("The Scylla data model") for the query each serves.
const MIGRATION_1: &[&str] = &[
    // Point reads by id.
    "CREATE TABLE IF NOT EXISTS {ks}.users (user_id text PRIMARY KEY, entity blob)",
    "CREATE TABLE IF NOT EXISTS {ks}.usernames (username text PRIMARY KEY, entity blob)",
    "CREATE TABLE IF NOT EXISTS {ks}.rooms (room_id text PRIMARY KEY, entity blob)",
    // Room listing in id order, one partition (shard 0) clustered by id.
    "CREATE TABLE IF NOT EXISTS {ks}.rooms_by_id (shard int, room_id text, PRIMARY KEY (shard, room_id)) \
     WITH CLUSTERING ORDER BY (room_id ASC)",
    // Memberships both ways.
    "CREATE TABLE IF NOT EXISTS {ks}.members (room_id text, user_id text, entity blob, PRIMARY KEY (room_id, user_id)) \
     WITH CLUSTERING ORDER BY (user_id ASC)",
    "CREATE TABLE IF NOT EXISTS {ks}.user_rooms (user_id text, room_id text, PRIMARY KEY (user_id, room_id)) \
     WITH CLUSTERING ORDER BY (room_id ASC)",
    // History and emotions: (room, bucket) partitions, newest first, and the
    // directory of a room's non-empty buckets.
    "CREATE TABLE IF NOT EXISTS {ks}.messages (room_id text, bucket bigint, message_id text, entity blob, \
     PRIMARY KEY ((room_id, bucket), message_id)) WITH CLUSTERING ORDER BY (message_id DESC)",
    "CREATE TABLE IF NOT EXISTS {ks}.emotions (room_id text, bucket bigint, message_id text, entity blob, \
     PRIMARY KEY ((room_id, bucket), message_id)) WITH CLUSTERING ORDER BY (message_id DESC)",
    "CREATE TABLE IF NOT EXISTS {ks}.room_buckets (room_id text, kind text, bucket bigint, \
     PRIMARY KEY (room_id, kind, bucket)) WITH CLUSTERING ORDER BY (kind ASC, bucket DESC)",
    // Idempotency keys, sessions, membership events: point reads.
    "CREATE TABLE IF NOT EXISTS {ks}.client_msgs (room_id text, user_id text, client_msg_id text, entity blob, \
     PRIMARY KEY ((room_id, user_id, client_msg_id)))",
    "CREATE TABLE IF NOT EXISTS {ks}.sessions (username text, session_id text, entity blob, \
     PRIMARY KEY (username, session_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.room_events (room_id text, position text, entity blob, \
     PRIMARY KEY (room_id, position))",
    // Per consumer: the current generation (bumped by `clear`) and the rebuilding mark.
    "CREATE TABLE IF NOT EXISTS {ks}.consumers (consumer text PRIMARY KEY, generation bigint, rebuilding boolean)",
    // Positions of a consumer, one partition, so a batch's positions commit together.
    "CREATE TABLE IF NOT EXISTS {ks}.positions (consumer text, generation bigint, topic text, part int, \
     next_offset bigint, redo_attempt bigint, redo_chunks int, redo_ts bigint, \
     PRIMARY KEY (consumer, generation, topic, part))",
    // The redo record of the last committed batch of each (consumer, topic,
    // partition). `attempt` keeps the chunks of an attempt that crashed before
    // committing apart from a later batch ending at the same offset.
    "CREATE TABLE IF NOT EXISTS {ks}.redo (consumer text, generation bigint, topic text, part int, \
     next_offset bigint, attempt bigint, chunk int, data blob, \
     PRIMARY KEY ((consumer, generation, topic, part), next_offset, attempt, chunk)) WITH gc_grace_seconds = 3600",
];

/// Migration 2: the activity consumer's view, a room's hours clustered in
/// time order, so `activity(room, from, to)` is one slice of one partition.
const MIGRATION_2: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.activity (room_id text, hour bigint, entity blob, \
     PRIMARY KEY (room_id, hour)) WITH CLUSTERING ORDER BY (hour ASC)",
];

/// Migration 3: each consumer generation's timestamp base (`clear` sets it
/// above every earlier write, so rebuilds do not depend on how TRUNCATE
/// removes data); the `materialized` watermark of each position (written
/// after a batch's entities, read by other processes as "written"); and
/// tombstones of spent redo records collected after `gc_grace_seconds`
/// even where the keyspace's default is repair-based collection (tablets).
const MIGRATION_3: &[&str] = &[
    "ALTER TABLE {ks}.consumers ADD base_ts bigint",
    "ALTER TABLE {ks}.positions ADD materialized bigint",
    "ALTER TABLE {ks}.redo WITH tombstone_gc = {'mode': 'timeout'} AND gc_grace_seconds = 3600",
];

/// Migration 4: `rooms_by_id` is sharded by the room id's first byte
/// (`rows::room_shard`); this is the directory of the shards in use, one
/// small partition, so a listing walks only populated shards.
const MIGRATION_4: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.room_shards (k int, shard int, PRIMARY KEY (k, shard)) \
     WITH CLUSTERING ORDER BY (shard ASC)",
];

/// Migration 5: what edits and deletes did to a room's messages, one
/// partition per room clustered by message id (the reserved id `*` holds
/// the room's count of changes), read by point reads.
const MIGRATION_5: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.message_edits (room_id text, message_id text, entity blob, \
     PRIMARY KEY (room_id, message_id)) WITH CLUSTERING ORDER BY (message_id ASC)",
];

/// Migration 6: where each user stands with others (friends, requests,
/// blocks), one partition per user clustered by the other's id, so a
/// user's list is one slice.
const MIGRATION_6: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.friends (user_id text, other_id text, entity blob, \
     PRIMARY KEY (user_id, other_id)) WITH CLUSTERING ORDER BY (other_id ASC)",
];

/// Migration 7: the admin consumer's counters and audit pages, one small
/// partition per scope (a partition's days, totals or audit) clustered by
/// bucket, read by point reads.
const MIGRATION_7: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.admin (scope text, bucket bigint, entity blob, \
     PRIMARY KEY (scope, bucket)) WITH CLUSTERING ORDER BY (bucket ASC)",
];

/// Migration 8: attachments, one partition per room clustered by
/// attachment id (the reserved id `*` holds the room's unsent uploads),
/// read by point reads.
const MIGRATION_8: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.attachments (room_id text, attachment_id text, entity blob, \
     PRIMARY KEY (room_id, attachment_id)) WITH CLUSTERING ORDER BY (attachment_id ASC)",
];

/// All migrations, in order; the position in this list + 1 is the version.
const MIGRATIONS: &[&[&str]] = &[
    MIGRATION_1,
    MIGRATION_2,
    MIGRATION_3,
    MIGRATION_4,
    MIGRATION_5,
    MIGRATION_6,
    MIGRATION_7,
    MIGRATION_8,
];

/// Whether a schema statement failed only because it had been applied
/// already (`ALTER TABLE … ADD` has no `IF NOT EXISTS`): nodes migrating
/// together, or a migration interrupted halfway, then converge.
pub(crate) fn already_applied(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("conflicts with an existing column") || e.contains("already exists")
}

/// The tables `clear(consumer)` truncates.
pub(crate) fn tables_of(consumer: &str) -> &'static [&'static str] {
    match consumer {
        CORE_VIEWS => &CORE_TABLES,
        ACTIVITY_VIEWS => &["activity"],
        ADMIN_VIEWS => &["admin"],
        _ => &[],
    }
}

/// The core views' tables, truncated by `clear(CORE_VIEWS)`.
const CORE_TABLES: [&str; 16] = [
    "users",
    "usernames",
    "rooms",
    "rooms_by_id",
    "room_shards",
    "members",
    "user_rooms",
    "messages",
    "emotions",
    "room_buckets",
    "client_msgs",
    "sessions",
    "room_events",
    "message_edits",
    "friends",
    "attachments",
];

/// The component name under which `schema_version` records this store's migrations.
const COMPONENT: &str = "views";

async fn ddl(session: &Session, cql: String) -> Result<QueryResult, StoreError> {
    session
        .query_unpaged(cql.as_str(), &[])
        .await
        .map_err(|e| StoreError::Storage(format!("schema statement failed ({cql}): {e}")))
}

/// Creates the keyspace if missing and applies the migrations it lacks.
pub(crate) async fn migrate(session: &Session, config: &ScyllaConfig) -> Result<(), StoreError> {
    let ks = &config.keyspace;
    ddl(
        session,
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
            config.replication.to_cql()
        ),
    )
    .await?;
    ddl(
        session,
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schema_version \
             (component text, version int, applied_at_us bigint, PRIMARY KEY (component, version))"
        ),
    )
    .await?;
    let applied = session
        .query_unpaged(
            format!("SELECT version FROM {ks}.schema_version WHERE component = ?"),
            (COMPONENT,),
        )
        .await
        .map_err(storage)?
        .into_rows_result()
        .map_err(storage)?;
    let mut current = 0i32;
    for row in applied.rows::<(i32,)>().map_err(storage)? {
        current = current.max(row.map_err(storage)?.0);
    }
    for (i, statements) in MIGRATIONS.iter().enumerate() {
        let version = i as i32 + 1;
        if version <= current {
            continue;
        }
        for s in *statements {
            match ddl(session, s.replace("{ks}", ks)).await {
                Err(StoreError::Storage(e)) if already_applied(&e) => {}
                r => {
                    r?;
                }
            }
        }
        session
            .query_unpaged(
                format!("INSERT INTO {ks}.schema_version (component, version, applied_at_us) VALUES (?, ?, ?)"),
                (COMPONENT, version, now_micros()),
            )
            .await
            .map_err(storage)?;
        info!(keyspace = %ks, version, "applied view store migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_added_twice_is_already_applied() {
        // What Scylla answers to a repeated `ALTER TABLE … ADD`.
        assert!(already_applied(
            "schema statement failed (ALTER TABLE ks.consumers ADD base_ts bigint): Database returned an error: \
             The query is syntactically correct but invalid, Error message: Invalid column name base_ts because it \
             conflicts with an existing column"
        ));
        assert!(!already_applied("Database returned an error: Unauthorized"));
        // Every migration after the first only adds to what exists.
        for statement in MIGRATION_3 {
            assert!(statement.starts_with("ALTER TABLE {ks}."), "{statement}");
        }
        for statement in MIGRATION_4 {
            assert!(statement.starts_with("CREATE TABLE IF NOT EXISTS {ks}."), "{statement}");
        }
        assert!(
            tables_of(CORE_VIEWS).contains(&"room_shards"),
            "a clear empties the directory too"
        );
    }
}
