//! The `[mysql]` config section (lives here so the sync module owns its keys;
//! `config::Config` only embeds it).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the media ids of the GC safety-belt query go.
pub const IDS_PLACEHOLDER: &str = "{ids}";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    /// `mysql://user:pass@host:3306/db` or, over a unix socket,
    /// `mysql://user@localhost/db?socket=/run/mysqld/mysqld.sock`. Empty: no mirror.
    pub url: String,
    /// Outbox entries sent to MySQL per transaction.
    pub batch_size: usize,
    /// Longest wait between reconnect attempts while MySQL is down (ms).
    pub backoff_max_ms: u64,
    /// How often the idle worker looks for new outbox entries (ms).
    pub poll_interval_ms: u64,
    /// TCP connect timeout (ms).
    pub connect_timeout_ms: u64,
    /// Read/write timeout of one MySQL round trip (ms); a hung server counts as down.
    pub io_timeout_ms: u64,
    /// Apply `migrations/mysql/` when the worker connects (else run `media-store migrate --mysql`).
    pub auto_migrate: bool,
    /// Ids compared per step by reconcile.
    pub reconcile_chunk: usize,
    /// How often the worker runs a full reconcile on its own ("0s": only when
    /// owed). Repairs rows changed behind the mirror's back, e.g. acknowledged
    /// by a MySQL primary that then failed over to a replica that lacked them.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// GC safety belt: returns the ids still referenced; `{ids}` becomes the id list.
    pub references_query: String,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        MysqlConfig {
            url: String::new(),
            batch_size: 1000,
            backoff_max_ms: 30_000,
            poll_interval_ms: 50,
            connect_timeout_ms: 5_000,
            io_timeout_ms: 30_000,
            auto_migrate: true,
            reconcile_chunk: 10_000,
            reconcile_interval: Duration::from_secs(24 * 3600),
            references_query: "SELECT media_id FROM messages WHERE media_id IN ({ids})".into(),
        }
    }
}

impl MysqlConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks what serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.batch_size > 5000 {
            return Err("mysql.batch_size must be between 1 and 5000".into());
        }
        if self.reconcile_chunk == 0 {
            return Err("mysql.reconcile_chunk must be positive".into());
        }
        if self.poll_interval_ms == 0 || self.backoff_max_ms == 0 {
            return Err("mysql.poll_interval_ms and mysql.backoff_max_ms must be positive".into());
        }
        if !self.references_query.contains(IDS_PLACEHOLDER) {
            return Err(format!(
                "mysql.references_query must contain {IDS_PLACEHOLDER} where the id list goes"
            ));
        }
        if self.enabled() {
            mysql::Opts::from_url(&self.url)
                .map_err(|e| format!("mysql.url is not a valid MySQL URL: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_disabled() {
        let c = MysqlConfig::default();
        assert!(!c.enabled());
        c.validate().unwrap();
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let bad_query = MysqlConfig {
            references_query: "SELECT media_id FROM messages".into(),
            ..Default::default()
        };
        assert!(
            bad_query
                .validate()
                .unwrap_err()
                .contains("references_query")
        );
        let bad_url = MysqlConfig {
            url: "postgres://x/y".into(),
            ..Default::default()
        };
        assert!(bad_url.validate().unwrap_err().contains("mysql.url"));
        let bad_batch = MysqlConfig {
            batch_size: 0,
            ..Default::default()
        };
        assert!(bad_batch.validate().unwrap_err().contains("batch_size"));
        let socket = MysqlConfig {
            url: "mysql://root@localhost/chat?socket=/run/mysqld/mysqld.sock".into(),
            ..Default::default()
        };
        socket.validate().unwrap();
    }
}
