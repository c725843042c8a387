//! Configuration, in two stages (ripgrep's `LowArgs` → `HiArgs`):
//!
//! 1. [`RawConfig`]: exactly what the YAML file says, with every key optional and unknown keys
//!    rejected. Sources are layered: the file, then `BERTH_*` environment variables, then
//!    command-line flags.
//! 2. [`Config`]: validated and resolved (defaults filled in, paths derived from `data_dir`,
//!    durations and sizes parsed). Nothing downstream sees the raw form.
//!
//! Environment mapping rule: a key path becomes `BERTH_` followed by its segments upper-cased and
//! joined by a double underscore, because keys themselves contain single underscores:
//! `http.addr` → `BERTH_HTTP__ADDR`, `storage.delete.enabled` → `BERTH_STORAGE__DELETE__ENABLED`,
//! `data_dir` → `BERTH_DATA_DIR`. Values are read as YAML scalars (`true`, `42`, `24h`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

mod access;
mod retention;
mod tls;

pub use access::{AuthMode, AuthSettings};
pub use tls::load_tls;

/// The file's shape. Every field is optional; defaults are applied in [`RawConfig::resolve`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Directory for everything berth stores on the embedded default.
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub uploads: RawUploads,
    #[serde(default)]
    pub manifests: RawManifests,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub notifications: RawNotifications,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub gc: RawGc,
    #[serde(default)]
    pub policies: RawPolicies,
    #[serde(default)]
    pub retention: retention::RawRetention,
    #[serde(default)]
    pub auth: access::RawAuth,
}

/// Immutable tags and quotas (parsed into `registry::Policies` by [`resolve_policies`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicies {
    #[serde(default)]
    pub immutable_tags: Vec<RawImmutableRule>,
    #[serde(default)]
    pub quotas: Vec<RawQuota>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImmutableRule {
    pub repositories: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub namespace: Option<String>,
    pub limit: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGc {
    /// Collect garbage in the background (`berth gc` works either way).
    pub enabled: Option<bool>,
    pub interval: Option<Value>,
    pub grace: Option<Value>,
    #[serde(default)]
    pub untagged: RawGcUntagged,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGcUntagged {
    /// Collect untagged manifests too (default false).
    pub enabled: Option<bool>,
    pub older_than: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    /// A separate listener for /metrics, the health probes and the admin API.
    pub listen: Option<String>,
    pub storage_refresh: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `off`, `stdout`, or a file path.
    pub output: Option<Value>,
    pub pulls: Option<bool>,
    pub retention: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifications {
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub name: Option<String>,
    pub url: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    pub timeout: Option<Value>,
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub repositories: Vec<String>,
    pub format: Option<String>,
    #[serde(default)]
    pub backoff: RawBackoff,
    pub batch: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub initial: Option<Value>,
    pub max: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub addr: Option<String>,
    pub shutdown_grace: Option<Value>,
    #[serde(default)]
    pub tls: tls::RawTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// `filesystem` (the default) or `s3`.
    pub driver: Option<String>,
    #[serde(default)]
    pub filesystem: RawFilesystem,
    #[serde(default)]
    pub s3: RawS3,
    #[serde(default)]
    pub redirect: RawRedirect,
    #[serde(default)]
    pub delete: RawDelete,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesystem {
    pub root: Option<PathBuf>,
    pub fsync: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3 {
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub prefix: Option<String>,
    pub part_size: Option<Value>,
    pub max_retries: Option<u32>,
    pub retry_timeout: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub enabled: Option<bool>,
    pub expiry: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelete {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// `sqlite` (the default) or `postgres`.
    pub driver: Option<String>,
    #[serde(default)]
    pub sqlite: RawSqlite,
    #[serde(default)]
    pub postgres: RawPostgres,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    pub url: Option<String>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlite {
    pub path: Option<PathBuf>,
    pub synchronous: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUploads {
    pub expiry: Option<Value>,
    pub sweep_interval: Option<Value>,
    /// Upload requests in progress at once on a node, per user and in total (0 or absent: no
    /// limit); beyond them clients get 429 with `Retry-After`.
    pub max_concurrent_per_user: Option<u64>,
    pub max_concurrent: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifests {
    pub max_size: Option<Value>,
    pub cache_size: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Value>,
    pub format: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub shutdown_grace: Duration,
    /// TLS on the main listener (`None`: plain HTTP). Its files are read by [`load_tls`].
    pub tls: Option<server::tls::TlsOptions>,
    pub data_dir: PathBuf,
    pub blob_root: PathBuf,
    pub fsync: bool,
    pub sqlite_path: PathBuf,
    pub sqlite_full_sync: bool,
    pub storage: StorageDriver,
    pub database: DatabaseDriver,
    pub registry: registry::RegistryConfig,
    pub log_level: String,
    pub log_format: LogFormat,
    pub events: registry::EventsConfig,
    pub metrics: MetricsSettings,
    pub retention: registry::RetentionConfig,
    pub auth: AuthSettings,
}

/// Where blob bytes live.
#[derive(Debug, Clone)]
pub enum StorageDriver {
    /// Under `blob_root` (the embedded default).
    Filesystem,
    S3(Box<storage::s3::S3Options>),
}

/// Where metadata lives.
#[derive(Debug, Clone)]
pub enum DatabaseDriver {
    /// `sqlite_path` (the embedded default).
    Sqlite,
    Postgres { url: String, max_connections: u32 },
}

impl DatabaseDriver {
    /// Whether several nodes may share this database.
    pub fn shared(&self) -> bool {
        matches!(self, DatabaseDriver::Postgres { .. })
    }
}

/// Metrics and the operations listener.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// Serve /metrics (and /healthz, /readyz, /admin) here instead of on the main listener.
    pub listen: Option<SocketAddr>,
    /// How long usage figures are reused between scrapes.
    pub storage_refresh: Duration,
}

/// A configuration error, naming the key path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

fn err(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { path: path.to_owned(), message: message.into() }
}

/// Parse `30s`, `10m`, `24h`, `7d`, `500ms` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// A duration given as a YAML string (`24h`) or a bare number of seconds.
fn duration_value(v: &Value) -> Option<Duration> {
    match v {
        Value::String(s) => parse_duration(s),
        Value::Number(n) => n.as_f64().and_then(|f| Duration::try_from_secs_f64(f).ok()),
        _ => None,
    }
}

/// Drop keys whose value is null, so a section whose keys are all commented out (`http:`)
/// means "defaults", as a reader of the file would expect.
fn drop_nulls(v: &mut Value) {
    if let Value::Object(map) = v {
        map.retain(|_, x| !x.is_null());
        map.values_mut().for_each(drop_nulls);
    }
}

/// Parse a size: a number of bytes, or `512KiB`, `4MiB`, `1GiB`, `10MB`.
pub fn parse_size(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Read a YAML file into a tree (an empty file is an empty config).
pub fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| err("(file)", e.to_string()))?;
    if text.trim().is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    let v: Value = serde_saphyr::from_str(&text).map_err(|e| err("(file)", format!("invalid YAML: {e}")))?;
    match v {
        Value::Null => Ok(Value::Object(serde_json::Map::new())),
        Value::Object(_) => Ok(v),
        _ => Err(err("(root)", "the configuration must be a mapping of keys")),
    }
}

/// Overlay `BERTH_*` variables (see the module docs for the mapping rule). Returns which key
/// path each variable set, so errors can name the variable.
pub fn apply_env(tree: &mut Value, vars: impl IntoIterator<Item = (String, String)>) -> Result<Vec<(String, String)>, ConfigError> {
    let mut set = Vec::new();
    for (key, value) in vars {
        let Some(rest) = key.strip_prefix("BERTH_") else { continue };
        let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(err(&key, "empty key segment in environment variable name"));
        }
        let parsed: Value = serde_saphyr::from_str(&value).unwrap_or(Value::String(value.clone()));
        let parsed = if parsed.is_null() { Value::String(value) } else { parsed };
        set_path(tree, &path, parsed).map_err(|m| err(&key, m))?;
        set.push((path.join("."), key));
    }
    Ok(set)
}

fn set_path(tree: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let mut node = tree;
    for (i, seg) in path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = node else { return Err(format!("{} is not a section", path[..i].join("."))) };
        if i == path.len() - 1 {
            map.insert(seg.clone(), value);
            return Ok(());
        }
        node = map.entry(seg.clone()).or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
    Ok(())
}

impl RawConfig {
    /// Deserialize a tree, naming the key path of the first problem.
    pub fn from_tree(tree: Value) -> Result<RawConfig, ConfigError> {
        let mut tree = tree;
        drop_nulls(&mut tree);
        serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            err(if path == "." { "(root)" } else { &path }, e.into_inner().to_string())
        })
    }

    /// Validate and fill in defaults.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let addr_text = self.http.addr.unwrap_or_else(|| "127.0.0.1:5000".into());
        let addr: SocketAddr = addr_text.parse().map_err(|_| err("http.addr", format!("{addr_text:?} is not an address like 127.0.0.1:5000")))?;
        let duration = |path: &str, v: Option<Value>, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(v) => duration_value(&v).ok_or_else(|| err(path, format!("{v} is not a duration like 30s, 10m, 24h or a number of seconds"))),
            }
        };
        let size = |path: &str, v: Option<Value>, default: u64| -> Result<u64, ConfigError> {
            match v {
                None => Ok(default),
                Some(v) => parse_size(&v).ok_or_else(|| err(path, format!("{v} is not a size like 4MiB or 1048576"))),
            }
        };
        let defaults = registry::RegistryConfig::default();
        let shutdown_grace = duration("http.shutdown_grace", self.http.shutdown_grace, Duration::from_secs(30))?;
        let upload_expiry = duration("uploads.expiry", self.uploads.expiry, defaults.upload_expiry)?;
        let janitor_interval = duration("uploads.sweep_interval", self.uploads.sweep_interval, defaults.janitor_interval)?;
        if janitor_interval.is_zero() {
            return Err(err("uploads.sweep_interval", "must be greater than zero"));
        }
        // The idle clock restarts only when a request on the session ends, so an expiry shorter
        // than a slow chunk would drop sessions that are still in use.
        if upload_expiry < Duration::from_secs(60) {
            return Err(err("uploads.expiry", "must be at least 1m"));
        }
        let manifest_max_size = size("manifests.max_size", self.manifests.max_size, defaults.manifest_max_size as u64)?;
        if !(1024..=(64 << 20)).contains(&manifest_max_size) {
            return Err(err("manifests.max_size", "must be between 1KiB and 64MiB"));
        }
        let database = match self.database.driver.as_deref() {
            None | Some("sqlite") => DatabaseDriver::Sqlite,
            Some("postgres") => {
                let url = self.database.postgres.url.filter(|u| !u.is_empty()).ok_or_else(|| err("database.postgres.url", "required with database.driver postgres"))?;
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(err("database.postgres.url", "must be a URL like postgres://user:password@host:5432/berth"));
                }
                let max_connections = self.database.postgres.max_connections.unwrap_or(32);
                if max_connections < 2 {
                    return Err(err("database.postgres.max_connections", "must be at least 2"));
                }
                DatabaseDriver::Postgres { url, max_connections }
            }
            Some(other) => return Err(err("database.driver", format!("{other:?} must be sqlite or postgres"))),
        };
        // Nodes sharing a database would each cache tags the others move: the cache is per node.
        let cache_default = if database.shared() { 0 } else { defaults.manifest_cache_bytes as u64 };
        let cache = size("manifests.cache_size", self.manifests.cache_size, cache_default)?;
        if database.shared() && cache > 0 {
            return Err(err("manifests.cache_size", "must be 0 with database.driver postgres: a per-node cache would serve tags other nodes have moved"));
        }
        let storage = match self.storage.driver.as_deref() {
            None | Some("filesystem") => StorageDriver::Filesystem,
            Some("s3") => {
                let s3 = self.storage.s3;
                let bucket = s3.bucket.filter(|b| !b.is_empty()).ok_or_else(|| err("storage.s3.bucket", "required with storage.driver s3"))?;
                let mut o = storage::s3::S3Options::new(bucket, s3.region.unwrap_or_else(|| "us-east-1".into()));
                if let Some(e) = s3.endpoint {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        return Err(err("storage.s3.endpoint", format!("{e:?} must be an http:// or https:// URL")));
                    }
                    o.endpoint = Some(e);
                }
                o.path_style = s3.path_style.unwrap_or(false);
                if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
                    return Err(err("storage.s3", "access_key_id and secret_access_key go together (leave both out for the AWS credential chain)"));
                }
                o.access_key_id = s3.access_key_id;
                o.secret_access_key = s3.secret_access_key;
                o.session_token = s3.session_token;
                o.prefix = s3.prefix.unwrap_or_default();
                o.part_size = size("storage.s3.part_size", s3.part_size, o.part_size)?;
                if !(storage::s3::MIN_PART_SIZE..=(5 << 30)).contains(&o.part_size) {
                    return Err(err("storage.s3.part_size", "must be between 5MiB and 5GiB (S3's part limits)"));
                }
                o.max_retries = s3.max_retries.unwrap_or(10) as usize;
                o.retry_timeout = duration("storage.s3.retry_timeout", s3.retry_timeout, o.retry_timeout)?;
                StorageDriver::S3(Box::new(o))
            }
            Some(other) => return Err(err("storage.driver", format!("{other:?} must be filesystem or s3"))),
        };
        let policies = resolve_policies(self.policies)?;
        let gc_grace = duration("gc.grace", self.gc.grace, defaults.gc_grace)?;
        // A push links each layer when it arrives and references it when its manifest does,
        // which for a large image can be many minutes later: a short grace period would make
        // such pushes fail (cleanly, but fail).
        if gc_grace < Duration::from_secs(600) {
            return Err(err("gc.grace", "must be at least 10m (pushes in flight need their layers to outlive the wait for their manifest)"));
        }
        let gc_interval = duration("gc.interval", self.gc.interval, Duration::from_secs(3600))?;
        if gc_interval < Duration::from_secs(1) {
            return Err(err("gc.interval", "must be at least 1s"));
        }
        let gc_interval = self.gc.enabled.unwrap_or(true).then_some(gc_interval);
        let gc_untagged = duration("gc.untagged.older_than", self.gc.untagged.older_than, Duration::from_secs(7 * 86_400))?;
        if gc_untagged < Duration::from_secs(3600) {
            return Err(err("gc.untagged.older_than", "must be at least 1h (a manifest pushed by digest before its tag or index needs to outlive the wait for them)"));
        }
        let gc_untagged = self.gc.untagged.enabled.unwrap_or(false).then_some(gc_untagged);
        let blob_redirect = if self.storage.redirect.enabled.unwrap_or(false) {
            if !matches!(storage, StorageDriver::S3(_)) {
                return Err(err("storage.redirect.enabled", "needs storage.driver s3 (the filesystem driver cannot issue URLs)"));
            }
            let expiry = duration("storage.redirect.expiry", self.storage.redirect.expiry, Duration::from_secs(20 * 60))?;
            if !(Duration::from_secs(10)..=Duration::from_secs(7 * 86_400)).contains(&expiry) {
                return Err(err("storage.redirect.expiry", "must be between 10s and 7 days (S3's presigned URL limit)"));
            }
            Some(expiry)
        } else {
            None
        };
        let sqlite_full_sync = match self.database.sqlite.synchronous.as_deref() {
            None | Some("full") => true,
            Some("normal") => false,
            Some(other) => return Err(err("database.sqlite.synchronous", format!("{other:?} must be \"full\" or \"normal\""))),
        };
        let log_format = match self.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(err("log.format", format!("{other:?} must be \"text\" or \"json\""))),
        };
        let log_level = match self.log.level {
            None => "info".to_owned(),
            // YAML reads a bare `off` as false.
            Some(Value::Bool(false)) => "off".to_owned(),
            Some(Value::String(s)) => s,
            Some(other) => return Err(err("log.level", format!("{other} is not a level"))),
        };
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        let plain_ok = log_level.contains(['=', ',']) || LEVELS.contains(&log_level.as_str());
        if !plain_ok || tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(err("log.level", format!("{log_level:?} is not a level (off, error, warn, info, debug, trace) or a filter like info,berth=debug")));
        }
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("berth-data"));
        let audit = match self.audit.output {
            None | Some(Value::Bool(false)) => registry::AuditSink::Off,
            Some(Value::String(s)) if s == "off" => registry::AuditSink::Off,
            Some(Value::String(s)) if s == "stdout" => registry::AuditSink::Stdout,
            Some(Value::String(s)) if !s.is_empty() => registry::AuditSink::File(PathBuf::from(s)),
            Some(other) => return Err(err("audit.output", format!("{other} must be off, stdout or a file path"))),
        };
        let mut endpoints = Vec::new();
        for (i, e) in self.notifications.endpoints.into_iter().enumerate() {
            let at = |k: &str| format!("notifications.endpoints[{i}].{k}");
            let name = e.name.filter(|n| !n.is_empty()).ok_or_else(|| err(&at("name"), "every endpoint needs a name"))?;
            if endpoints.iter().any(|x: &registry::WebhookEndpoint| x.name == name) {
                return Err(err(&at("name"), format!("{name:?} is used twice")));
            }
            let url = e.url.ok_or_else(|| err(&at("url"), "every endpoint needs a url"))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(err(&at("url"), format!("{url:?} must be an http:// or https:// URL")));
            }
            for a in &e.actions {
                if !EVENT_ACTIONS.contains(&a.as_str()) {
                    return Err(err(&at("actions"), format!("{a:?} is not one of {}", EVENT_ACTIONS.join(", "))));
                }
            }
            for r in &e.repositories {
                if r.is_empty() || r.contains(char::is_whitespace) {
                    return Err(err(&at("repositories"), format!("{r:?} is not a repository pattern")));
                }
            }
            let format = match e.format.as_deref() {
                None | Some("distribution") => registry::WebhookFormat::Distribution,
                Some("cloudevents") => registry::WebhookFormat::CloudEvents,
                Some(other) => return Err(err(&at("format"), format!("{other:?} must be distribution or cloudevents"))),
            };
            let backoff_initial = duration(&at("backoff.initial"), e.backoff.initial, Duration::from_secs(1))?;
            let backoff_max = duration(&at("backoff.max"), e.backoff.max, Duration::from_secs(300))?;
            if backoff_initial.is_zero() || backoff_max < backoff_initial {
                return Err(err(&at("backoff"), "initial must be above zero and max at least initial"));
            }
            endpoints.push(registry::WebhookEndpoint {
                name,
                url,
                headers: e.headers.into_iter().collect(),
                timeout: duration(&at("timeout"), e.timeout, Duration::from_secs(10))?,
                actions: e.actions,
                repositories: e.repositories,
                format,
                backoff_initial,
                backoff_max,
                batch: e.batch.unwrap_or(100).clamp(1, 1000),
            });
        }
        let metrics_listen = match self.metrics.listen {
            None => None,
            Some(l) => {
                let a: SocketAddr = l.parse().map_err(|_| err("metrics.listen", format!("{l:?} is not an address like 127.0.0.1:5001")))?;
                if a == addr {
                    return Err(err("metrics.listen", "must differ from http.addr (leave it unset to serve /metrics on the main listener)"));
                }
                Some(a)
            }
        };
        let metrics = MetricsSettings {
            enabled: self.metrics.enabled.unwrap_or(true),
            listen: metrics_listen,
            storage_refresh: duration("metrics.storage_refresh", self.metrics.storage_refresh, Duration::from_secs(30))?,
        };
        let events = registry::EventsConfig {
            audit,
            record_pulls: self.audit.pulls.unwrap_or(false),
            retention: duration("audit.retention", self.audit.retention, Duration::from_secs(90 * 86_400))?,
            endpoints,
            source: addr.to_string(),
            ..Default::default()
        };
        let auth = access::resolve(self.auth, &data_dir, self.uploads.max_concurrent_per_user, self.uploads.max_concurrent)?;
        Ok(Config {
            addr,
            shutdown_grace,
            tls: tls::resolve(self.http.tls)?,
            blob_root: self.storage.filesystem.root.unwrap_or_else(|| data_dir.clone()),
            fsync: self.storage.filesystem.fsync.unwrap_or(true),
            sqlite_path: self.database.sqlite.path.unwrap_or_else(|| data_dir.join("meta.db")),
            sqlite_full_sync,
            storage,
            database,
            data_dir,
            registry: registry::RegistryConfig {
                blob_redirect,
                gc_grace,
                gc_interval,
                gc_untagged,
                delete_enabled: self.storage.delete.enabled.unwrap_or(true),
                upload_expiry,
                janitor_interval,
                manifest_max_size: usize::try_from(manifest_max_size).unwrap_or(usize::MAX),
                manifest_cache_bytes: usize::try_from(cache).unwrap_or(usize::MAX),
                policies,
            },
            log_level,
            log_format,
            events,
            metrics,
            retention: retention::resolve(self.retention)?,
            auth,
        })
    }
}

/// The event actions a webhook endpoint may ask for (`tag`: every event naming a tag).
const EVENT_ACTIONS: [&str; 15] = [
    "push",
    "pull",
    "delete",
    "mount",
    "tag",
    "gc",
    "quota_exceeded",
    "login",
    "login_failed",
    "denied_pull",
    "denied_push",
    "denied_delete",
    "denied_catalog",
    "denied_admin",
    "denied_login",
];

/// Parse the policy rules, naming the key path of the first bad one.
fn resolve_policies(raw: RawPolicies) -> Result<registry::Policies, ConfigError> {
    let mut immutable_tags = Vec::new();
    for (i, r) in raw.immutable_tags.into_iter().enumerate() {
        let at = |k: &str| format!("policies.immutable_tags[{i}].{k}");
        let text = r.repositories.ok_or_else(|| err(&at("repositories"), "every rule needs a repository pattern (\"**\" for all)"))?;
        let repositories = text.parse().map_err(|e: oci::PatternError| err(&at("repositories"), e.to_string()))?;
        if r.tags.is_empty() {
            return Err(err(&at("tags"), "every rule needs at least one tag pattern"));
        }
        let tags = r.tags.iter().enumerate().map(|(j, t)| t.parse().map_err(|e: oci::PatternError| err(&at(&format!("tags[{j}]")), e.to_string()))).collect::<Result<_, _>>()?;
        immutable_tags.push(registry::ImmutableRule { repositories, tags });
    }
    let mut quotas: Vec<meta::Quota> = Vec::new();
    for (i, q) in raw.quotas.into_iter().enumerate() {
        let at = |k: &str| format!("policies.quotas[{i}].{k}");
        let text = q.namespace.ok_or_else(|| err(&at("namespace"), "every quota needs a namespace (a repository pattern like team-a/**)"))?;
        let namespace: oci::RepoPattern = text.parse().map_err(|e: oci::PatternError| err(&at("namespace"), e.to_string()))?;
        if quotas.iter().any(|x| x.namespace == namespace) {
            return Err(err(&at("namespace"), format!("{namespace} has a quota already")));
        }
        let limit = q.limit.ok_or_else(|| err(&at("limit"), "every quota needs a limit (a size like 10GiB)"))?;
        let limit = parse_size(&limit).filter(|n| *n > 0).ok_or_else(|| err(&at("limit"), format!("{limit} is not a size above zero like 10GiB or 500MB")))?;
        quotas.push(meta::Quota { namespace, limit });
    }
    Ok(registry::Policies { immutable_tags, quotas })
}

/// Command-line overrides, applied last.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// Load the configuration: the file (if any), then the environment, then flags.
pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>, flags: &Overrides) -> Result<Config, ConfigError> {
    let mut tree = match file {
        Some(p) => read_file(p)?,
        None => Value::Object(serde_json::Map::new()),
    };
    let from_env = apply_env(&mut tree, env)?;
    if let Some(l) = &flags.listen {
        set_path(&mut tree, &["http".into(), "addr".into()], Value::String(l.clone())).map_err(|m| err("--listen", m))?;
    }
    if let Some(d) = &flags.data_dir {
        set_path(&mut tree, &["data_dir".into()], Value::String(d.display().to_string())).map_err(|m| err("--data-dir", m))?;
    }
    RawConfig::from_tree(tree).and_then(RawConfig::resolve).map_err(|mut e| {
        // Say which variable it was: a stray BERTH_* variable is a common surprise.
        if let Some((_, var)) = from_env.iter().find(|(path, _)| e.path == *path || e.path.starts_with(&format!("{path}.")) || path.starts_with(&format!("{}.", e.path)) || (e.path == "(root)" && e.message.contains(&format!("`{path}`")))) {
            e.message = format!("{} (set by the environment variable {var})", e.message);
        }
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(yaml: &str) -> Value {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults() {
        let c = load(None, [], &Overrides::default()).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:5000");
        assert_eq!(c.data_dir, PathBuf::from("berth-data"));
        assert_eq!(c.sqlite_path, PathBuf::from("berth-data/meta.db"));
        assert!(c.registry.delete_enabled && c.fsync && c.sqlite_full_sync);
        assert_eq!(c.registry.upload_expiry, Duration::from_secs(86400));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = RawConfig::from_tree(tree("http:\n  adr: x\n")).unwrap_err();
        assert_eq!(e.path, "http.adr");
        assert!(e.message.contains("adr"), "{e}");
        let e = RawConfig::from_tree(tree("storage:\n  delete:\n    enabled: maybe\n")).unwrap_err();
        assert_eq!(e.path, "storage.delete.enabled");
    }

    #[test]
    fn bad_values_are_named() {
        let e = RawConfig::from_tree(tree("uploads:\n  expiry: soon\n")).unwrap().resolve().unwrap_err();
        assert_eq!(e.path, "uploads.expiry");
        let e = RawConfig::from_tree(tree("http:\n  addr: localhost\n")).unwrap().resolve().unwrap_err();
        assert_eq!(e.path, "http.addr");
        let e = RawConfig::from_tree(tree("manifests:\n  max_size: 10\n")).unwrap().resolve().unwrap_err();
        assert_eq!(e.path, "manifests.max_size");
    }

    #[test]
    fn layering_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yml");
        std::fs::write(&f, "http:\n  addr: 127.0.0.1:1111\nstorage:\n  delete:\n    enabled: true\nmanifests:\n  max_size: 8MiB\n").unwrap();
        let env = [
            ("BERTH_HTTP__ADDR".to_string(), "127.0.0.1:2222".to_string()),
            ("BERTH_STORAGE__DELETE__ENABLED".to_string(), "false".to_string()),
            ("BERTH_UPLOADS__EXPIRY".to_string(), "2h".to_string()),
            ("OTHER".to_string(), "ignored".to_string()),
        ];
        let c = load(Some(&f), env.clone(), &Overrides::default()).unwrap();
        assert_eq!(c.addr.port(), 2222);
        assert!(!c.registry.delete_enabled);
        assert_eq!(c.registry.upload_expiry, Duration::from_secs(7200));
        assert_eq!(c.registry.manifest_max_size, 8 << 20);
        let flags = Overrides { listen: Some("127.0.0.1:3333".into()), data_dir: Some("/tmp/x".into()) };
        let c = load(Some(&f), env, &flags).unwrap();
        assert_eq!(c.addr.port(), 3333);
        assert_eq!(c.sqlite_path, PathBuf::from("/tmp/x/meta.db"));
        let e = load(None, [("BERTH_NOPE".to_string(), "1".to_string())], &Overrides::default()).unwrap_err();
        assert!(e.message.contains("nope"), "{e}");
    }

    #[test]
    fn empty_sections_and_levels() {
        let c = RawConfig::from_tree(tree("http:\nlog:\n  level: off\n")).unwrap().resolve().unwrap();
        assert_eq!(c.log_level, "off");
        let e = RawConfig::from_tree(tree("log:\n  level: warning\n")).unwrap().resolve().unwrap_err();
        assert_eq!(e.path, "log.level");
        let e = RawConfig::from_tree(tree("uploads:\n  expiry: 5s\n")).unwrap().resolve().unwrap_err();
        assert_eq!(e.path, "uploads.expiry");
        let mut t = tree("http:\n");
        apply_env(&mut t, [("BERTH_HTTP__ADDR".to_string(), "127.0.0.1:9".to_string())]).unwrap();
        assert_eq!(RawConfig::from_tree(t).unwrap().resolve().unwrap().addr.port(), 9);
    }

    #[test]
    fn gc_settings() {
        let c = RawConfig::from_tree(tree("gc: {interval: 30m, grace: 12h}")).unwrap().resolve().unwrap();
        assert_eq!((c.registry.gc_interval, c.registry.gc_grace), (Some(Duration::from_secs(1800)), Duration::from_secs(12 * 3600)));
        let c = RawConfig::from_tree(tree("gc: {enabled: false}")).unwrap().resolve().unwrap();
        assert_eq!(c.registry.gc_interval, None);
        let e = RawConfig::from_tree(tree("gc: {grace: 1m}")).unwrap().resolve().unwrap_err();
        assert_eq!(e.path, "gc.grace");
        let e = RawConfig::from_tree(tree("gc: {every: 1h}")).unwrap_err();
        assert_eq!(e.path, "gc.every");
        assert_eq!(c.registry.gc_untagged, None, "untagged manifests are kept by default");
        let c = RawConfig::from_tree(tree("gc: {untagged: {enabled: true}}")).unwrap().resolve().unwrap();
        assert_eq!(c.registry.gc_untagged, Some(Duration::from_secs(7 * 86_400)));
        let c = RawConfig::from_tree(tree("gc: {untagged: {enabled: true, older_than: 36h}}")).unwrap().resolve().unwrap();
        assert_eq!(c.registry.gc_untagged, Some(Duration::from_secs(36 * 3600)));
        let e = RawConfig::from_tree(tree("gc: {untagged: {enabled: true, older_than: 5m}}")).unwrap().resolve().unwrap_err();
        assert_eq!(e.path, "gc.untagged.older_than");
    }

    #[test]
    fn policy_settings() {
        let c = RawConfig::from_tree(tree(
            "policies:\n  immutable_tags:\n    - repositories: prod/**\n      tags: [\"v*\", release-*]\n  quotas:\n    - {namespace: team-a/**, limit: 10GiB}\n    - {namespace: lib, limit: 1000}\n",
        ))
        .unwrap()
        .resolve()
        .unwrap();
        let p = &c.registry.policies;
        assert_eq!(p.immutable_tags.len(), 1);
        assert_eq!(p.immutable_tags[0].repositories.as_str(), "prod/**");
        assert_eq!(p.immutable_tags[0].tags.iter().map(oci::TagPattern::as_str).collect::<Vec<_>>(), ["v*", "release-*"]);
        assert_eq!(p.quotas.iter().map(|q| (q.namespace.as_str(), q.limit)).collect::<Vec<_>>(), [("team-a/**", 10 << 30), ("lib", 1000)]);
        assert!(RawConfig::from_tree(tree("{}")).unwrap().resolve().unwrap().registry.policies.quotas.is_empty());
        // Unknown keys, bad patterns and bad limits are named by their key path.
        for (yaml, path) in [
            ("policies: {immutable: []}", "policies.immutable"),
            ("policies: {immutable_tags: [{repositories: a, tag: [x]}]}", "policies.immutable_tags[0].tag"),
            ("policies: {quotas: [{namespace: a, limit: 1GiB, soft: true}]}", "policies.quotas[0].soft"),
        ] {
            assert_eq!(RawConfig::from_tree(tree(yaml)).unwrap_err().path, path, "{yaml}");
        }
        for (yaml, path, says) in [
            ("policies: {immutable_tags: [{repositories: Prod/**, tags: [v*]}]}", "policies.immutable_tags[0].repositories", "'P'"),
            ("policies: {immutable_tags: [{repositories: prod/**, tags: [v*, \"a/b\"]}]}", "policies.immutable_tags[0].tags[1]", "'/'"),
            ("policies: {immutable_tags: [{repositories: prod/**}]}", "policies.immutable_tags[0].tags", "at least one"),
            ("policies: {immutable_tags: [{tags: [v*]}]}", "policies.immutable_tags[0].repositories", "pattern"),
            ("policies: {quotas: [{namespace: team/a**, limit: 1GiB}]}", "policies.quotas[0].namespace", "whole path segment"),
            ("policies: {quotas: [{namespace: a, limit: 1GiB}, {namespace: a, limit: 2GiB}]}", "policies.quotas[1].namespace", "already"),
            ("policies: {quotas: [{namespace: a, limit: lots}]}", "policies.quotas[0].limit", "lots"),
            ("policies: {quotas: [{namespace: a, limit: 0}]}", "policies.quotas[0].limit", "above zero"),
            ("policies: {quotas: [{namespace: a}]}", "policies.quotas[0].limit", "needs a limit"),
        ] {
            let e = RawConfig::from_tree(tree(yaml)).unwrap().resolve().unwrap_err();
            assert_eq!(e.path, path, "{yaml}: {e}");
            assert!(e.message.contains(says), "{yaml}: {e}");
        }
        // A list can come from one environment variable, as YAML.
        let mut t = tree("{}");
        apply_env(&mut t, [("BERTH_POLICIES__QUOTAS".to_string(), "[{namespace: \"ci/**\", limit: 5GiB}]".to_string())]).unwrap();
        assert_eq!(RawConfig::from_tree(t).unwrap().resolve().unwrap().registry.policies.quotas[0].limit, 5 << 30);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("999999999999999d"), None, "overflow is an error, not a panic");
        assert_eq!(duration_value(&Value::from(90)), Some(Duration::from_secs(90)));
        assert_eq!(parse_size(&Value::from("4MiB")), Some(4 << 20));
        assert_eq!(parse_size(&Value::from(1024)), Some(1024));
        assert_eq!(parse_size(&Value::from("4 parsecs")), None);
    }
}
