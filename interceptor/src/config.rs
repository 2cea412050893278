//! The config file: TOML -> typed [`Config`], validated with line numbers.
//!
//! Parsing happens in two layers. Serde deserializes the text into private
//! `Raw*` structs whose values are [`toml::Spanned`], with
//! `deny_unknown_fields` on every table, so a typo is reported where it is.
//! Validation then turns them into the public, span-free types the daemon
//! uses, and every semantic error still points at the offending value:
//! `FILE:LINE:COL: message`, the source line with a caret, and a hint that
//! says what to write instead. `docs/config.md` is the user-facing reference;
//! keep it in step with this file.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt, fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::identity::CI_ENV_VARS;

/// Where the proxy listens when `daemon.listen` is absent.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 915);
pub const DEFAULT_STATE_DIR: &str = "/var/lib/interceptor";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/interceptor/control.sock";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/interceptor";
/// "ICPT": the SO_MARK the daemon puts on its own upstream sockets so the
/// connect hooks leave them alone.
pub const DEFAULT_UPSTREAM_MARK: u32 = 0x4943_5054;
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Value detectors a `[[mask]]` may name in `detectors`.
pub const KNOWN_DETECTORS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "private_key",
    "github_token",
    "slack_token",
    "jwt",
    "password_in_url",
    "generic_api_key",
];

/// PostgreSQL command keywords a `sql.statements` entry may start with. An
/// entry is a keyword optionally narrowed by more words (`drop`, `alter
/// system`, `create extension`, `copy program`, `copy file`). Checked so that a typo such
/// as "dorp" is an error instead of a rule that silently never matches.
pub const SQL_STATEMENTS: &[&str] = &[
    "abort",
    "alter",
    "analyze",
    "begin",
    "call",
    "checkpoint",
    "close",
    "cluster",
    "comment",
    "commit",
    "copy",
    "create",
    "deallocate",
    "declare",
    "delete",
    "discard",
    "do",
    "drop",
    "end",
    "execute",
    "explain",
    "fetch",
    "grant",
    "import",
    "insert",
    "listen",
    "load",
    "lock",
    "merge",
    "move",
    "notify",
    "prepare",
    "reassign",
    "refresh",
    "reindex",
    "release",
    "reset",
    "revoke",
    "rollback",
    "savepoint",
    "security",
    "select",
    "set",
    "show",
    "start",
    "table",
    "truncate",
    "unlisten",
    "update",
    "vacuum",
    "values",
    "with",
];

/// Statements for which `sql.without_where` is meaningful.
const WITHOUT_WHERE_STATEMENTS: &[&str] = &["delete", "update"];

/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

// ---------------------------------------------------------------------------
// Public, validated types
// ---------------------------------------------------------------------------

/// A validated config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub audit: AuditConfig,
    pub stores: Vec<StoreConfig>,
    pub rules: Vec<RuleConfig>,
    pub masks: Vec<MaskConfig>,
    /// The file this config was read from (for messages and `reload`).
    pub path: PathBuf,
}

/// `[daemon]`: where the daemon attaches, listens and keeps its state.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// The cgroup v2 directory whose tasks are intercepted: an absolute path,
    /// or a name relative to the cgroup2 mount (created by the daemon).
    pub cgroup: String,
    /// The proxy listener every intercepted connect is redirected to.
    pub listen: SocketAddr,
    pub allow_unprivileged_listen_port: bool,
    pub state_dir: PathBuf,
    pub audit_dir: PathBuf,
    pub control_socket: PathBuf,
    pub bpffs: PathBuf,
    pub upstream_mark: u32,
    /// How often hostname targets are re-resolved.
    pub resolve_interval: Duration,
}

/// `[audit]`: how the recorder trades latency for durability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub durability: Durability,
    pub flush_interval: Duration,
    pub on_failure: OnFailure,
    pub statements: StatementMode,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            durability: Durability::Batched,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            on_failure: OnFailure::Block,
            statements: StatementMode::Normalized,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Journal writes are batched; a crash may lose the last instants.
    Batched,
    /// The journal is fsynced before a command is forwarded.
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop forwarding while the recorder cannot write.
    Block,
    /// Keep forwarding unrecorded traffic.
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementMode {
    /// Literals replaced by `$n` before anything is recorded.
    Normalized,
    /// Statements recorded as sent (may contain secrets).
    Raw,
}

/// The wire protocol a store speaks, which picks the session handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    Redis,
    Http,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Redis => "redis",
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS from the proxy to the real store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl UpstreamTls {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamTls::Disable => "disable",
            UpstreamTls::Prefer => "prefer",
            UpstreamTls::Require => "require",
            UpstreamTls::VerifyFull => "verify-full",
        }
    }

    /// The default when a store omits `upstream_tls`: PostgreSQL negotiates
    /// TLS in-band, so trying it costs nothing; the other protocols have no
    /// negotiation, and attempting a handshake on a plaintext Redis or HTTP
    /// port (or an opaque TCP stream) would break the session.
    pub fn default_for(protocol: Protocol) -> UpstreamTls {
        match protocol {
            Protocol::Postgres => UpstreamTls::Prefer,
            Protocol::Redis | Protocol::Http | Protocol::Tcp => UpstreamTls::Disable,
        }
    }
}

impl fmt::Display for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[store]]`: a secret store whose connections are intercepted.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub name: String,
    pub protocol: Protocol,
    pub targets: Vec<Target>,
    pub upstream_tls: UpstreamTls,
    pub upstream_ca: Option<PathBuf>,
}

/// The address part of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    /// `*`: any address on the port.
    Any,
    Ip(IpAddr),
    /// A hostname, lower-cased; re-resolved every `resolve_interval`.
    Name(String),
}

impl fmt::Display for TargetHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetHost::Any => f.write_str("*"),
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            TargetHost::Ip(ip) => write!(f, "{ip}"),
            TargetHost::Name(name) => f.write_str(name),
        }
    }
}

/// One `HOST:PORT` a task may dial to reach a store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: TargetHost,
    pub port: u16,
    /// As written in the config, for messages.
    pub raw: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Why a target string was rejected, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid target `{input}`: {reason}")]
pub struct TargetParseError {
    pub input: String,
    pub reason: String,
    pub hint: String,
}

impl FromStr for Target {
    type Err = TargetParseError;

    fn from_str(s: &str) -> Result<Target, TargetParseError> {
        let fail = |reason: String, hint: String| TargetParseError {
            input: s.to_string(),
            reason,
            hint,
        };
        let usage = || {
            "write HOST:PORT, e.g. \"10.0.0.5:5432\", \"db.internal:5432\", \"[::1]:5432\" or \"*:5432\"".to_string()
        };
        if s.is_empty() {
            return Err(fail("it is empty".into(), usage()));
        }
        if s.contains(char::is_whitespace) {
            return Err(fail("it contains whitespace".into(), usage()));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some(close) = rest.find(']') else {
                return Err(fail("`[` without a closing `]`".into(), usage()));
            };
            let (inside, after) = (&rest[..close], &rest[close + 1..]);
            let ip: std::net::Ipv6Addr = inside.parse().map_err(|_| {
                fail(
                    format!("`{inside}` is not an IPv6 address"),
                    "brackets are only for IPv6 addresses: \"[::1]:5432\"; write IPv4 addresses and hostnames without them".into(),
                )
            })?;
            if after.is_empty() {
                return Err(fail(
                    "it has no port".into(),
                    format!("append the port: \"[{inside}]:5432\""),
                ));
            }
            let Some(port) = after.strip_prefix(':') else {
                return Err(fail(
                    format!("unexpected `{after}` after `]`"),
                    format!("write \"[{inside}]:PORT\""),
                ));
            };
            (TargetHost::Ip(IpAddr::V6(ip)), port)
        } else {
            let colons = s.matches(':').count();
            if colons == 0 {
                return Err(fail(
                    "it has no port".into(),
                    format!("targets are HOST:PORT: \"{s}:PORT\", or \"*:{s}\" if `{s}` is a port on any address"),
                ));
            }
            if colons > 1 {
                return Err(fail(
                    "an IPv6 address without brackets".into(),
"write IPv6 addresses in brackets, followed by the port: \"[::1]:5432\" or \"[::ffff:10.0.0.5]:5432\"".into(),
                ));
            }
            let (host, port) = s.split_once(':').unwrap_or((s, ""));
            (
                parse_target_host(host).map_err(|(reason, hint)| fail(reason, hint))?,
                port,
            )
        };
        let port = parse_port(port).map_err(|(reason, hint)| fail(reason, hint))?;
        Ok(Target {
            host,
            port,
            raw: s.to_string(),
        })
    }
}

fn parse_target_host(host: &str) -> Result<TargetHost, (String, String)> {
    if host == "*" {
        return Ok(TargetHost::Any);
    }
    if host.is_empty() {
        return Err((
            "it has no host".into(),
            "use \"*:PORT\" to match any address on the port".into(),
        ));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(TargetHost::Ip(IpAddr::V4(ip)));
    }
    if host.contains('*') {
        return Err((
            format!("`{host}` is not a valid host: `*` may only stand alone"),
            "\"*:PORT\" matches any address; hostname wildcards are not supported, list the hosts"
                .into(),
        ));
    }
    check_hostname(host)?;
    Ok(TargetHost::Name(host.to_ascii_lowercase()))
}

fn check_hostname(host: &str) -> Result<(), (String, String)> {
    let hint = || "hostnames use letters, digits, '-' and '.', e.g. \"db.internal\"".to_string();
    if host.len() > 253 {
        return Err((
            format!("hostname `{host}` is longer than 253 characters"),
            hint(),
        ));
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err((format!("hostname `{host}` has an empty label"), hint()));
        }
        if label.len() > 63 {
            return Err((
                format!("hostname label `{label}` is longer than 63 characters"),
                hint(),
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err((format!("hostname `{host}` contains `{c}`"), hint()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err((
                format!("hostname label `{label}` starts or ends with '-'"),
                hint(),
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err((
            format!("`{host}` is neither an IPv4 address nor a hostname"),
            "IPv4 addresses have four decimal parts 0-255 without leading zeros, e.g. \"10.0.0.5\""
                .into(),
        ));
    }
    Ok(())
}

fn parse_port(port: &str) -> Result<u16, (String, String)> {
    if port.is_empty() {
        return Err((
            "it has no port after `:`".into(),
            "append the port, e.g. \":5432\"".into(),
        ));
    }
    if !port.chars().all(|c| c.is_ascii_digit()) {
        return Err((
            format!("port `{port}` is not a number"),
            "ports are decimal numbers 1-65535".into(),
        ));
    }
    match port.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err((
            format!("port {port} is out of range"),
            "ports are 1-65535".into(),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Deny,
    Approve,
    Allow,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Approve => "approve",
            Action::Allow => "allow",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[rule]]`: what to do with matching commands.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    pub name: String,
    /// `None`: every store.
    pub stores: Option<Vec<String>>,
    pub action: Action,
    pub message: Option<String>,
    pub identity: Option<IdentityMatch>,
    pub sql: Option<SqlMatch>,
    pub redis: Option<RedisMatch>,
    pub http: Option<HttpMatch>,
}

/// Who opened the connection. Every present field must match; within a
/// field, any entry may match. Strings are globs (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityMatch {
    pub uid: Option<Vec<u32>>,
    pub gid: Option<Vec<u32>>,
    pub unit: Option<Vec<String>>,
    pub exe: Option<Vec<String>>,
    pub comm: Option<Vec<String>>,
    /// CI variable name (one of [`CI_ENV_VARS`]) -> glob on its value.
    pub env: Option<BTreeMap<String, String>>,
}

/// PostgreSQL statements. `statements` and `without_where` are lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SqlMatch {
    pub statements: Option<Vec<String>>,
    pub functions: Option<Vec<String>>,
    pub relations: Option<Vec<String>>,
    pub unparsable: Option<bool>,
    pub without_where: Option<Vec<String>>,
    /// Configuration parameters (globs) that `SET` and `set_config` must not
    /// change: `role`, `session_authorization`, `app.*`.
    pub settings: Option<Vec<String>>,
}

/// Redis commands, upper-cased (`CONFIG SET`, `EVAL*`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisMatch {
    pub commands: Option<Vec<String>>,
}

/// HTTP requests; `methods` upper-cased, `paths` globs starting with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpMatch {
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskStrategy {
    Redact,
    Partial,
    Hash,
    Null,
}

impl MaskStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            MaskStrategy::Redact => "redact",
            MaskStrategy::Partial => "partial",
            MaskStrategy::Hash => "hash",
            MaskStrategy::Null => "null",
        }
    }
}

impl fmt::Display for MaskStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[mask]]`: values rewritten in replies before the client sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskConfig {
    pub name: String,
    pub stores: Option<Vec<String>>,
    pub columns: Option<Vec<String>>,
    pub keys: Option<Vec<String>>,
    pub json: Option<Vec<String>>,
    pub detectors: Option<Vec<String>>,
    pub strategy: MaskStrategy,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}: check the path and permissions", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}\n{snippet}hint: {hint}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        hint: String,
        /// The offending source line and a caret under the value, each line
        /// ending in a newline; empty when there is no source to show.
        snippet: String,
    },
    #[error("refusing config {}: {reason}", path.display())]
    Insecure { path: PathBuf, reason: String },
}

/// The text being validated, to turn byte spans into positioned errors.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> ConfigError {
        let (line, column, snippet) = locate(self.text, span);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
            hint: hint.into(),
            snippet,
        }
    }

    fn at<T>(
        &self,
        value: &Spanned<T>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> ConfigError {
        self.error(value.span(), message, hint)
    }

    /// The end of the file: where a missing table would be added.
    fn end(&self) -> Range<usize> {
        let end = self.text.trim_end().len();
        end..end
    }

    fn toml_error(&self, e: &toml::de::Error, syntax: bool) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        // toml puts "expected ..." on a second line; keep the message on one.
        let message = e
            .message()
            .trim()
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(": ");
        let hint = if syntax {
            syntax_hint(&message)
        } else {
            schema_hint(&message)
        };
        self.error(span, message, hint)
    }
}

/// 1-based line and column (in characters) of `span.start`, and the source
/// line with a caret under the span.
fn locate(text: &str, span: Range<usize>) -> (usize, usize, String) {
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..start].matches('\n').count() + 1;
    let source_line = text[line_start..line_end].trim_end_matches('\r');
    let prefix = &text[line_start..start];
    let column = prefix.chars().count() + 1;
    let mut end = span.end.clamp(start, line_end);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let width = text[start..end].chars().count().max(1);
    let pad: String = prefix
        .chars()
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let gutter = " ".repeat(line_no.to_string().len());
    let snippet = format!(
        "{gutter} |\n{line_no} | {source_line}\n{gutter} | {pad}{}\n",
        "^".repeat(width)
    );
    (line_no, column, snippet)
}

fn syntax_hint(message: &str) -> String {
    if message.starts_with("duplicate key") {
        "each key may appear once per table; remove or rename one of them".into()
    } else if message.contains("invalid table header") || message.contains("duplicate") {
        "a [table] may be defined once; repeated sections are written [[store]], [[rule]], [[mask]]"
            .into()
    } else {
        "fix the TOML syntax at the marked position: strings in double quotes, lists in [ ], one `key = value` per line (https://toml.io)".into()
    }
}

fn schema_hint(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let got = rest.split('`').next().unwrap_or_default();
        let allowed = backticked_after_expected(message);
        if allowed.is_empty() {
            return format!("remove `{got}`; this table takes no keys");
        }
        let list = allowed
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return match did_you_mean(got, &allowed) {
            Some(s) => {
                format!("did you mean `{s}`? the keys allowed here are {list} (see docs/config.md)")
            }
            None => {
                format!("remove `{got}`; the keys allowed here are {list} (see docs/config.md)")
            }
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let got = rest.split('`').next().unwrap_or_default();
        let allowed = backticked_after_expected(message);
        let list = allowed
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ");
        return match did_you_mean(got, &allowed) {
            Some(s) => format!("did you mean \"{s}\"? use one of {list}"),
            None => format!("use one of {list}"),
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return match field {
            "daemon" => "add a [daemon] table with at least `cgroup = \"...\"` (the cgroup whose tasks are intercepted)".into(),
            "cgroup" => "add `cgroup = \"...\"` to [daemon]: the runner's cgroup v2 path, or a name created under the cgroup2 mount".into(),
            "name" => "every [[store]], [[rule]] and [[mask]] needs `name = \"...\"`".into(),
            "protocol" => "add `protocol = \"postgres\"` (or \"redis\", \"http\", \"tcp\") to the [[store]]".into(),
            "targets" => "add `targets = [\"HOST:PORT\", ...]` to the [[store]]".into(),
            "action" => "add `action = \"deny\"` (or \"approve\", \"allow\") to the [[rule]]".into(),
            _ => format!("add `{field} = ...` to this table"),
        };
    }
    if message.contains("expected a sequence") {
        return "this key takes a list: write [\"a\", \"b\"]; repeated sections are written [[store]], [[rule]], [[mask]]".into();
    }
    if message.contains("expected a string") {
        return "this key takes a string in double quotes, e.g. \"60s\" or \"/var/lib/interceptor\"".into();
    }
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        return "check the type of this value against docs/config.md".into();
    }
    "see docs/config.md for the accepted keys and values".into()
}

/// The `a`, `b` in serde's "..., expected one of `a`, `b`".
fn backticked_after_expected(message: &str) -> Vec<String> {
    let Some((_, tail)) = message.split_once("expected") else {
        return Vec::new();
    };
    tail.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The closest candidate within a small edit distance, for typos.
fn did_you_mean<S: AsRef<str>>(got: &str, candidates: &[S]) -> Option<String> {
    let got_lower = got.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| {
            (
                edit_distance(&got_lower, &c.as_ref().to_ascii_lowercase()),
                c.as_ref(),
            )
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < got.len().max(c.len()))
        .min_by_key(|(d, c)| (*d, c.len().abs_diff(got.len())))
        .map(|(_, c)| c.to_string())
}

/// Edit distance counting an adjacent transposition ("dorp") as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

/// Parses durations such as "30s", "5m", "100ms", "1h", "1h30m" or "2d".
/// Zero is rejected: every duration in the config is an interval or a limit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{}` is too large", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            "" => return Err(format!("`{n}` has no unit")),
            other => return Err(format!("unknown unit `{other}`")),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("`{s}` is too large"))?;
    }
    if total.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(total)
}

const DURATION_HINT: &str = "write a number and a unit: \"100ms\", \"30s\", \"5m\", \"1h\", \"1d\" (or combined: \"1h30m\")";

// ---------------------------------------------------------------------------
// Raw (as written) structs
// ---------------------------------------------------------------------------

type S<T> = Spanned<T>;
type StrList = Option<S<Vec<S<String>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: RawDaemon,
    audit: Option<RawAudit>,
    #[serde(default)]
    store: Vec<RawStore>,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    mask: Vec<RawMask>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    cgroup: S<String>,
    listen: Option<S<String>>,
    allow_unprivileged_listen_port: Option<bool>,
    state_dir: Option<S<String>>,
    audit_dir: Option<S<String>>,
    control_socket: Option<S<String>>,
    bpffs: Option<S<String>>,
    upstream_mark: Option<S<i64>>,
    resolve_interval: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    durability: Option<Durability>,
    flush_interval: Option<S<String>>,
    on_failure: Option<OnFailure>,
    statements: Option<StatementMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    name: S<String>,
    protocol: Protocol,
    targets: S<Vec<S<String>>>,
    upstream_tls: Option<S<UpstreamTls>>,
    upstream_ca: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: S<String>,
    stores: StrList,
    action: Action,
    message: Option<S<String>>,
    identity: Option<RawIdentity>,
    sql: Option<S<RawSql>>,
    redis: Option<S<RawRedis>>,
    http: Option<S<RawHttp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    uid: Option<S<Vec<u32>>>,
    gid: Option<S<Vec<u32>>>,
    unit: StrList,
    exe: StrList,
    comm: StrList,
    env: Option<S<BTreeMap<S<String>, S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSql {
    statements: StrList,
    functions: StrList,
    relations: StrList,
    unparsable: Option<bool>,
    without_where: StrList,
    settings: StrList,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    commands: StrList,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    methods: StrList,
    paths: StrList,
    namespaces: StrList,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMask {
    name: S<String>,
    stores: StrList,
    columns: StrList,
    keys: StrList,
    json: StrList,
    detectors: StrList,
    strategy: Option<MaskStrategy>,
}

// ---------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------

impl Config {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = fs::read_to_string(path).map_err(io)?;
        let meta = fs::metadata(path).map_err(io)?;
        check_permissions(path, &meta)?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let src = Source { path, text };
        // Syntax first, so a broken file gets a syntax hint rather than a
        // schema one.
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(src.toml_error(&e, true));
        }
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e, false))?;
        raw.validate(&src)
    }
}

/// The policy decides what an unprivileged task may do with secrets: a
/// config anyone can rewrite is no policy at all.
fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        return Err(ConfigError::Insecure {
            path: path.to_path_buf(),
            reason: format!(
                "it is writable by every user (mode {:o}), so any task could rewrite the policy: run `chmod o-w {}`",
                mode & 0o7777,
                path.display()
            ),
        });
    }
    Ok(())
}

impl RawConfig {
    fn validate(self, src: &Source<'_>) -> Result<Config, ConfigError> {
        let daemon = validate_daemon(src, self.daemon)?;
        let audit = validate_audit(src, self.audit)?;
        let stores = validate_stores(src, &daemon, self.store)?;
        let protocols: HashMap<String, Protocol> = stores
            .iter()
            .map(|s| (s.name.clone(), s.protocol))
            .collect();
        let mut rules = Vec::new();
        let mut rule_names = HashSet::new();
        for raw in self.rule {
            check_name(src, "rule", &raw.name, &mut rule_names)?;
            rules.push(validate_rule(src, &protocols, raw)?);
        }
        let mut masks = Vec::new();
        let mut mask_names = HashSet::new();
        for raw in self.mask {
            check_name(src, "mask", &raw.name, &mut mask_names)?;
            masks.push(validate_mask(src, &protocols, raw)?);
        }
        Ok(Config {
            daemon,
            audit,
            stores,
            rules,
            masks,
            path: src.path.to_path_buf(),
        })
    }
}

fn validate_daemon(src: &Source<'_>, raw: RawDaemon) -> Result<DaemonConfig, ConfigError> {
    let cgroup = validate_cgroup(src, &raw.cgroup)?;
    let allow_unprivileged_listen_port = raw.allow_unprivileged_listen_port.unwrap_or(false);
    let listen = match &raw.listen {
        None => DEFAULT_LISTEN,
        Some(l) => validate_listen(src, l, allow_unprivileged_listen_port)?,
    };
    let state_dir = path_or(src, "state_dir", raw.state_dir.as_ref(), DEFAULT_STATE_DIR)?;
    let audit_dir = match &raw.audit_dir {
        Some(p) => non_empty_path(src, "audit_dir", p)?,
        None => state_dir.join("audit"),
    };
    let control_socket = path_or(
        src,
        "control_socket",
        raw.control_socket.as_ref(),
        DEFAULT_CONTROL_SOCKET,
    )?;
    if let Some(p) = &raw.control_socket {
        if p.get_ref().len() > MAX_SOCKET_PATH {
            return Err(src.at(
                p,
                format!("control_socket path is {} bytes long; unix socket paths are limited to {MAX_SOCKET_PATH}", p.get_ref().len()),
                "choose a shorter path, e.g. \"/run/interceptor/control.sock\"",
            ));
        }
    }
    let bpffs = path_or(src, "bpffs", raw.bpffs.as_ref(), DEFAULT_BPFFS)?;
    if let Some(p) = &raw.bpffs {
        if !Path::new(p.get_ref()).is_absolute() {
            return Err(src.at(
                p,
                format!("bpffs `{}` is not an absolute path", p.get_ref()),
                "pins live on the BPF filesystem: use a directory under it, e.g. \"/sys/fs/bpf/interceptor\"",
            ));
        }
    }
    let upstream_mark = match &raw.upstream_mark {
        None => DEFAULT_UPSTREAM_MARK,
        Some(m) => match u32::try_from(*m.get_ref()) {
            Ok(v) if v != 0 => v,
            _ => {
                return Err(src.at(
                    m,
                    format!("upstream_mark {} is not a non-zero 32-bit mark", m.get_ref()),
                    "use a non-zero value in 1..=0xFFFF_FFFF that no other software uses for SO_MARK/fwmark rules (default 0x4943_5054)",
                ))
            }
        },
    };
    let resolve_interval = duration_or(
        src,
        "resolve_interval",
        raw.resolve_interval.as_ref(),
        DEFAULT_RESOLVE_INTERVAL,
    )?;
    Ok(DaemonConfig {
        cgroup,
        listen,
        allow_unprivileged_listen_port,
        state_dir,
        audit_dir,
        control_socket,
        bpffs,
        upstream_mark,
        resolve_interval,
    })
}

fn validate_cgroup(src: &Source<'_>, raw: &S<String>) -> Result<String, ConfigError> {
    let value = raw.get_ref();
    let hint = "give the runner's cgroup v2 directory, e.g. \"/sys/fs/cgroup/system.slice/gitlab-runner.service\", or a name such as \"interceptor-ci\" that the daemon creates under the cgroup2 mount";
    if value.trim().is_empty() {
        return Err(src.at(raw, "daemon.cgroup is empty", hint));
    }
    if value.contains('\0') {
        return Err(src.at(raw, "daemon.cgroup contains a NUL byte", hint));
    }
    let parts: Vec<&str> = value
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let normalized = format!(
        "{}{}",
        if value.starts_with('/') { "/" } else { "" },
        parts.join("/")
    );
    if parts.is_empty() || normalized == "/sys/fs/cgroup" || normalized == "/sys/fs/cgroup/unified"
    {
        return Err(src.at(
            raw,
            format!("daemon.cgroup `{value}` is the root cgroup: every process on the host would be intercepted"),
            hint,
        ));
    }
    if value.split('/').any(|c| c == "..") {
        return Err(src.at(
            raw,
            format!("daemon.cgroup `{value}` contains a `..` component"),
            hint,
        ));
    }
    Ok(value.clone())
}

fn validate_listen(
    src: &Source<'_>,
    raw: &S<String>,
    allow_unprivileged: bool,
) -> Result<SocketAddr, ConfigError> {
    let addr: SocketAddr = raw.get_ref().parse().map_err(|_| {
        src.at(
            raw,
            format!("listen `{}` is not an IP:PORT socket address", raw.get_ref()),
            "write a loopback address and a port below 1024, e.g. \"127.0.0.1:915\" or \"[::1]:915\"",
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(src.at(
            raw,
            format!("listen address {} is not a loopback address", addr.ip()),
            "the proxy must only be reachable from this host: use 127.0.0.1 (or another 127.0.0.0/8 address) or [::1]",
        ));
    }
    if addr.port() == 0 {
        return Err(src.at(
            raw,
            "listen port 0 is not allowed",
            "redirected connects need a fixed port, e.g. 915",
        ));
    }
    if addr.port() >= 1024 && !allow_unprivileged {
        return Err(src.at(
            raw,
            format!("listen port {} is not a privileged port", addr.port()),
            "ports below 1024 cannot be bound by unprivileged tasks while the daemon is down; \
             use one (e.g. 915), or set `allow_unprivileged_listen_port = true` in [daemon] to accept the risk",
        ));
    }
    Ok(addr)
}

fn non_empty_path(src: &Source<'_>, key: &str, raw: &S<String>) -> Result<PathBuf, ConfigError> {
    if raw.get_ref().trim().is_empty() {
        return Err(src.at(
            raw,
            format!("{key} is empty"),
            format!("give a path or remove `{key}` to use the default"),
        ));
    }
    Ok(PathBuf::from(raw.get_ref()))
}

fn path_or(
    src: &Source<'_>,
    key: &str,
    raw: Option<&S<String>>,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    match raw {
        Some(p) => non_empty_path(src, key, p),
        None => Ok(PathBuf::from(default)),
    }
}

fn duration_or(
    src: &Source<'_>,
    key: &str,
    raw: Option<&S<String>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match raw {
        None => Ok(default),
        Some(d) => parse_duration(d.get_ref()).map_err(|e| {
            src.at(
                d,
                format!("{key} \"{}\" is not a valid duration: {e}", d.get_ref()),
                DURATION_HINT,
            )
        }),
    }
}

fn validate_audit(src: &Source<'_>, raw: Option<RawAudit>) -> Result<AuditConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(AuditConfig::default());
    };
    let d = AuditConfig::default();
    Ok(AuditConfig {
        durability: raw.durability.unwrap_or(d.durability),
        flush_interval: duration_or(
            src,
            "flush_interval",
            raw.flush_interval.as_ref(),
            d.flush_interval,
        )?,
        on_failure: raw.on_failure.unwrap_or(d.on_failure),
        statements: raw.statements.unwrap_or(d.statements),
    })
}

/// Names appear in audit rows, messages and the control API: keep them to a
/// charset that needs no quoting anywhere.
fn check_name(
    src: &Source<'_>,
    kind: &str,
    name: &S<String>,
    seen: &mut HashSet<String>,
) -> Result<(), ConfigError> {
    let value = name.get_ref();
    if value.is_empty() {
        return Err(src.at(
            name,
            format!("{kind} name is empty"),
            format!("give every [[{kind}]] a short unique name, e.g. \"ci-db\""),
        ));
    }
    if value.len() > 64
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(src.at(
            name,
            format!("{kind} name `{value}` is not a simple name"),
            "names use at most 64 letters, digits, '-', '_' and '.'",
        ));
    }
    if !seen.insert(value.clone()) {
        return Err(src.at(
            name,
            format!("duplicate {kind} name `{value}`"),
            format!("every [[{kind}]] needs a unique name; rename this one"),
        ));
    }
    Ok(())
}

/// How two targets collide in the kernel's STORES map. Every local address
/// (127.0.0.0/8, ::1, 0.0.0.0, ::, and `localhost`) reaches the same
/// listeners, and the redirect layer folds them into one "local" key per
/// port, so two stores must not split them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TargetKey {
    Any,
    Local,
    Ip(IpAddr),
    Name(String),
}

fn is_local_ip(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified()
}

fn is_local_host(host: &TargetHost) -> bool {
    match host {
        TargetHost::Any => true,
        TargetHost::Ip(ip) => is_local_ip(*ip),
        TargetHost::Name(n) => n == "localhost" || n.ends_with(".localhost"),
    }
}

fn target_key(host: &TargetHost) -> TargetKey {
    match host {
        TargetHost::Any => TargetKey::Any,
        h if is_local_host(h) => TargetKey::Local,
        TargetHost::Ip(ip) => TargetKey::Ip(ip.to_canonical()),
        TargetHost::Name(n) => TargetKey::Name(n.clone()),
    }
}

fn validate_stores(
    src: &Source<'_>,
    daemon: &DaemonConfig,
    raws: Vec<RawStore>,
) -> Result<Vec<StoreConfig>, ConfigError> {
    if raws.is_empty() {
        return Err(src.error(
            src.end(),
            "no [[store]] is configured: nothing would be intercepted",
            "add at least one [[store]] with `name`, `protocol` and `targets`, e.g. name = \"ci-db\", protocol = \"postgres\", targets = [\"*:5432\"]",
        ));
    }
    let mut names = HashSet::new();
    // (key, port) -> (store name, target as written)
    let mut claimed: HashMap<(TargetKey, u16), (String, String)> = HashMap::new();
    let mut stores = Vec::new();
    for raw in raws {
        check_name(src, "store", &raw.name, &mut names)?;
        let name = raw.name.get_ref().clone();
        if raw.targets.get_ref().is_empty() {
            return Err(src.at(
                &raw.targets,
                format!("store `{name}` has no targets"),
                "list the HOST:PORT addresses tasks dial to reach it, e.g. [\"10.0.0.5:5432\", \"*:5432\"]",
            ));
        }
        let mut targets = Vec::new();
        let mut own: HashSet<(TargetHost, u16)> = HashSet::new();
        for t in raw.targets.get_ref() {
            let target: Target = t
                .get_ref()
                .parse()
                .map_err(|e: TargetParseError| src.at(t, e.to_string(), e.hint))?;
            if target.port == daemon.listen.port() && is_local_host(&target.host) {
                return Err(src.at(
                    t,
                    format!("target `{target}` is the proxy's own port on a local address: intercepted connections would loop back into the proxy"),
                    format!("the proxy listens on {}; give the store a different port, or move daemon.listen", daemon.listen),
                ));
            }
            let key = (target_key(&target.host), target.port);
            if let Some((owner, other)) = claimed.get(&key).filter(|(owner, _)| *owner != name) {
                let local = if key.0 == TargetKey::Local {
                    " (local addresses 127.0.0.0/8, ::1, 0.0.0.0, :: and localhost all reach the same listeners)"
                } else {
                    ""
                };
                return Err(src.at(
                    t,
                    format!("target `{target}` is already claimed by store `{owner}` (`{other}`){local}"),
                    "a connection can be routed to only one store: remove the target from one of them",
                ));
            }
            let canonical = match &target.host {
                TargetHost::Ip(ip) => TargetHost::Ip(ip.to_canonical()),
                h => h.clone(),
            };
            if !own.insert((canonical, target.port)) {
                return Err(src.at(
                    t,
                    format!("target `{target}` is listed twice in store `{name}`"),
                    "remove the duplicate",
                ));
            }
            claimed
                .entry(key)
                .or_insert_with(|| (name.clone(), target.raw.clone()));
            targets.push(target);
        }
        let upstream_tls = raw
            .upstream_tls
            .as_ref()
            .map_or(UpstreamTls::default_for(raw.protocol), |t| *t.get_ref());
        let upstream_ca = match &raw.upstream_ca {
            None => None,
            Some(ca) => {
                if upstream_tls == UpstreamTls::Disable {
                    let at = raw.upstream_tls.as_ref().map_or(ca.span(), |t| t.span());
                    return Err(src.error(
                        at,
                        format!("store `{name}` sets upstream_ca but upstream TLS is disabled"),
                        "set upstream_tls = \"verify-full\" (or \"require\"/\"prefer\") to use the CA, or remove upstream_ca",
                    ));
                }
                Some(non_empty_path(src, "upstream_ca", ca)?)
            }
        };
        stores.push(StoreConfig {
            name,
            protocol: raw.protocol,
            targets,
            upstream_tls,
            upstream_ca,
        });
    }
    Ok(stores)
}

/// Checks a list of strings: present lists are non-empty and hold no empty
/// entries; `check` sees every entry and may normalize it.
fn list(
    src: &Source<'_>,
    key: &str,
    raw: &StrList,
    mut check: impl FnMut(&S<String>) -> Result<String, ConfigError>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.get_ref().is_empty() {
        return Err(src.at(
            raw,
            format!("`{key}` is an empty list"),
            format!("list at least one value, or remove `{key}`"),
        ));
    }
    let mut out = Vec::with_capacity(raw.get_ref().len());
    for item in raw.get_ref() {
        if item.get_ref().trim().is_empty() {
            return Err(src.at(
                item,
                format!("`{key}` contains an empty string"),
                "remove it or give a value",
            ));
        }
        out.push(check(item)?);
    }
    Ok(Some(out))
}

fn as_is(item: &S<String>) -> Result<String, ConfigError> {
    Ok(item.get_ref().clone())
}

fn store_refs(
    src: &Source<'_>,
    kind: &str,
    raw: &StrList,
    protocols: &HashMap<String, Protocol>,
) -> Result<Option<Vec<String>>, ConfigError> {
    list(src, "stores", raw, |s| {
        if protocols.contains_key(s.get_ref()) {
            return Ok(s.get_ref().clone());
        }
        let mut known: Vec<&String> = protocols.keys().collect();
        known.sort();
        let suggestion = did_you_mean(s.get_ref(), &known)
            .map(|k| format!("did you mean `{k}`? "))
            .unwrap_or_default();
        let known = known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(src.at(
            s,
            format!("{kind} refers to unknown store `{}`", s.get_ref()),
            format!("{suggestion}the [[store]] names are {known}; omit `stores` to apply to every store"),
        ))
    })
}

fn validate_rule(
    src: &Source<'_>,
    protocols: &HashMap<String, Protocol>,
    raw: RawRule,
) -> Result<RuleConfig, ConfigError> {
    let name = raw.name.get_ref().clone();
    let stores = store_refs(src, &format!("rule `{name}`"), &raw.stores, protocols)?;

    // A command is only ever checked against the matcher for its own
    // protocol, so a rule with protocol matchers never matches a store whose
    // protocol it has no matcher for. Naming such a store is a mistake.
    let matchers: Vec<(&str, Protocol)> = [
        raw.sql.as_ref().map(|_| ("sql", Protocol::Postgres)),
        raw.redis.as_ref().map(|_| ("redis", Protocol::Redis)),
        raw.http.as_ref().map(|_| ("http", Protocol::Http)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let (false, Some(stores), Some(raw_stores)) = (matchers.is_empty(), &stores, &raw.stores) {
        for (store, raw_store) in stores.iter().zip(raw_stores.get_ref()) {
            let Some(actual) = protocols.get(store).copied() else {
                continue;
            };
            if matchers.iter().any(|(_, p)| *p == actual) {
                continue;
            }
            let keys = matchers
                .iter()
                .map(|(k, p)| format!("`{k}` ({p})"))
                .collect::<Vec<_>>()
                .join(", ");
            let wanted = match actual {
                Protocol::Postgres => "a `sql` matcher",
                Protocol::Redis => "a `redis` matcher",
                Protocol::Http => "an `http` matcher",
                Protocol::Tcp => "only `identity` (tcp sessions carry no commands)",
            };
            return Err(src.at(
                raw_store,
                format!("rule `{name}` matches {keys} commands, but store `{store}` speaks {actual}: the rule could never match it"),
                format!("remove `{store}` from this rule's stores, or match {actual} commands with {wanted}"),
            ));
        }
    }

    if let Some(m) = &raw.message {
        if m.get_ref().trim().is_empty() {
            return Err(src.at(
                m,
                "rule message is empty",
                "say why the command is refused, or remove `message`",
            ));
        }
    }
    let identity = raw
        .identity
        .as_ref()
        .map(|i| validate_identity(src, i))
        .transpose()?;
    let sql = raw
        .sql
        .as_ref()
        .map(|m| validate_sql(src, m.get_ref()))
        .transpose()?;
    let redis = match &raw.redis {
        None => None,
        Some(m) => Some(RedisMatch {
            commands: list(src, "commands", &m.get_ref().commands, |c| {
                redis_command(src, c)
            })?,
        }),
    };
    let http = match &raw.http {
        None => None,
        Some(m) => {
            let m = m.get_ref();
            Some(HttpMatch {
                methods: list(src, "methods", &m.methods, |x| http_method(src, x))?,
                paths: list(src, "paths", &m.paths, |p| {
                    if p.get_ref().starts_with('/') || p.get_ref() == "*" {
                        Ok(p.get_ref().clone())
                    } else {
                        Err(src.at(
                            p,
                            format!("path `{}` does not start with '/'", p.get_ref()),
                            "paths are request paths such as \"/v1/sys/*\"",
                        ))
                    }
                })?,
                namespaces: list(src, "namespaces", &m.namespaces, as_is)?,
            })
        }
    };
    Ok(RuleConfig {
        name,
        stores,
        action: raw.action,
        message: raw.message.map(Spanned::into_inner),
        identity,
        sql,
        redis,
        http,
    })
}

fn validate_identity(src: &Source<'_>, raw: &RawIdentity) -> Result<IdentityMatch, ConfigError> {
    let ids = |key: &str, v: &Option<S<Vec<u32>>>| -> Result<Option<Vec<u32>>, ConfigError> {
        match v {
            Some(v) if v.get_ref().is_empty() => Err(src.at(
                v,
                format!("identity `{key}` is an empty list"),
                format!("list at least one id, or remove `{key}`"),
            )),
            v => Ok(v.as_ref().map(|v| v.get_ref().clone())),
        }
    };
    let unit = list(src, "unit", &raw.unit, |u| {
        let v = u.get_ref();
        if v.contains('*') || v.ends_with(".service") || v.ends_with(".scope") {
            Ok(v.clone())
        } else {
            Err(src.at(
                u,
                format!("unit `{v}` is not a systemd service or scope name"),
                format!("units are matched against names like \"{v}.service\" or \"run-u42.scope\"; add the suffix or use a glob"),
            ))
        }
    })?;
    let exe = list(src, "exe", &raw.exe, |e| {
        let v = e.get_ref();
        if v.starts_with('/') || v.starts_with('*') {
            Ok(v.clone())
        } else {
            Err(src.at(
                e,
                format!("exe `{v}` is not an absolute path"),
                format!("exe is the executable's absolute path, e.g. \"/usr/bin/{v}\", or a glob such as \"*/{v}\"; use `comm` for the bare process name"),
            ))
        }
    })?;
    let comm = list(src, "comm", &raw.comm, |c| {
        let v = c.get_ref();
        if v.len() > 15 && !v.contains('*') {
            Err(src.at(
                c,
                format!("comm `{v}` is longer than 15 bytes and would never match"),
                format!(
                    "the kernel truncates process names to 15 bytes: write \"{}\" or use `exe`",
                    truncate_bytes(v, 15)
                ),
            ))
        } else {
            Ok(v.clone())
        }
    })?;
    let env = match &raw.env {
        None => None,
        Some(env) if env.get_ref().is_empty() => {
            return Err(src.at(
                env,
                "identity `env` is an empty table",
                "match at least one CI variable, or remove `env`",
            ))
        }
        Some(env) => {
            let mut out = BTreeMap::new();
            for (k, v) in env.get_ref() {
                if !CI_ENV_VARS.contains(&k.get_ref().as_str()) {
                    let suggestion = did_you_mean(k.get_ref(), CI_ENV_VARS)
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    return Err(src.at(
                        k,
                        format!("`{}` is not a CI variable the daemon collects", k.get_ref()),
                        format!(
                            "{suggestion}only these variables are read from a task's environment (the rest may hold secrets): {}",
                            CI_ENV_VARS.join(", ")
                        ),
                    ));
                }
                out.insert(k.get_ref().clone(), v.get_ref().clone());
            }
            Some(out)
        }
    };
    Ok(IdentityMatch {
        uid: ids("uid", &raw.uid)?,
        gid: ids("gid", &raw.gid)?,
        unit,
        exe,
        comm,
        env,
    })
}

fn truncate_bytes(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn validate_sql(src: &Source<'_>, raw: &RawSql) -> Result<SqlMatch, ConfigError> {
    let statements = list(src, "statements", &raw.statements, |s| {
        let v = s.get_ref().trim().to_ascii_lowercase();
        let words: Vec<&str> = v.split_whitespace().collect();
        let first = words.first().copied().unwrap_or_default();
        if !SQL_STATEMENTS.contains(&first) {
            let suggestion = did_you_mean(first, SQL_STATEMENTS)
                .map(|k| format!("did you mean \"{k}\"? "))
                .unwrap_or_default();
            return Err(src.at(
                s,
                format!("`{}` does not start with a SQL command keyword", s.get_ref()),
                format!("{suggestion}statements are command keywords such as \"drop\", \"truncate\", \"alter system\" or \"copy program\""),
            ));
        }
        if let Some(w) = words
            .iter()
            .find(|w| !w.chars().all(|c| c.is_ascii_alphabetic() || c == '_'))
        {
            return Err(src.at(
                s,
                format!("`{w}` in `{}` is not a keyword", s.get_ref()),
                "statements are keywords only, e.g. \"create extension\"",
            ));
        }
        Ok(words.join(" "))
    })?;
    let without_where = list(src, "without_where", &raw.without_where, |s| {
        let v = s.get_ref().trim().to_ascii_lowercase();
        if WITHOUT_WHERE_STATEMENTS.contains(&v.as_str()) {
            Ok(v)
        } else {
            Err(src.at(
                s,
                format!("without_where `{}` is not delete or update", s.get_ref()),
                "without_where takes \"delete\" and/or \"update\"",
            ))
        }
    })?;
    let settings = list(src, "settings", &raw.settings, |s| {
        let v = s.get_ref().trim().to_ascii_lowercase();
        if v.is_empty()
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*'))
        {
            return Err(src.at(
                s,
                format!("`{}` is not a setting name", s.get_ref()),
                "settings are configuration parameter names (globs allowed), e.g. \"role\", \"session_authorization\", \"app.*\"",
            ));
        }
        Ok(v)
    })?;
    Ok(SqlMatch {
        statements,
        functions: list(src, "functions", &raw.functions, as_is)?,
        relations: list(src, "relations", &raw.relations, as_is)?,
        unparsable: raw.unparsable,
        without_where,
        settings,
    })
}

fn redis_command(src: &Source<'_>, c: &S<String>) -> Result<String, ConfigError> {
    let v = c.get_ref();
    if let Some(cat) = v.strip_prefix('@') {
        return match crate::policy::redis_http::category(cat) {
            Some(_) => Ok(format!("@{}", cat.to_ascii_lowercase())),
            None => Err(src.at(
                c,
                format!("`{v}` is not a Redis ACL category this build knows"),
                format!(
                    "categories are {}",
                    crate::policy::redis_http::CATEGORIES
                        .iter()
                        .map(|(n, _)| format!("\"@{n}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        };
    }
    let words: Vec<String> = v.split_whitespace().map(str::to_ascii_uppercase).collect();
    if !words.is_empty()
        && words.iter().all(|w| {
            w.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '*' | '|' | '.'))
        })
    {
        Ok(words.join(" "))
    } else {
        Err(src.at(
            c,
            format!("`{v}` is not a Redis command"),
            "commands are names such as \"FLUSHALL\", \"CONFIG SET\", \"EVAL*\", \"CLIENT REPLY OFF|SKIP\" or a category such as \"@dangerous\"",
        ))
    }
}

fn http_method(src: &Source<'_>, m: &S<String>) -> Result<String, ConfigError> {
    let v = m.get_ref();
    if v == "*" || v.chars().all(|c| c.is_ascii_alphabetic()) {
        Ok(v.to_ascii_uppercase())
    } else {
        Err(src.at(
            m,
            format!("`{v}` is not an HTTP method"),
            "methods are names such as \"GET\", \"PUT\" or \"DELETE\"",
        ))
    }
}

fn validate_mask(
    src: &Source<'_>,
    protocols: &HashMap<String, Protocol>,
    raw: RawMask,
) -> Result<MaskConfig, ConfigError> {
    let name = raw.name.get_ref().clone();
    let stores = store_refs(src, &format!("mask `{name}`"), &raw.stores, protocols)?;
    let json = list(src, "json", &raw.json, |j| {
        let v = j.get_ref();
        if v.starts_with('.') || v.ends_with('.') || v.contains("..") {
            Err(src.at(
                j,
                format!("json path `{v}` has an empty segment"),
                "paths are dot-separated field names, e.g. \"data.data.*\"",
            ))
        } else {
            Ok(v.clone())
        }
    })?;
    let detectors = list(src, "detectors", &raw.detectors, |d| {
        if KNOWN_DETECTORS.contains(&d.get_ref().as_str()) {
            return Ok(d.get_ref().clone());
        }
        let suggestion = did_you_mean(d.get_ref(), KNOWN_DETECTORS)
            .map(|k| format!("did you mean \"{k}\"? "))
            .unwrap_or_default();
        Err(src.at(
            d,
            format!("unknown detector `{}`", d.get_ref()),
            format!(
                "{suggestion}the detectors are {}",
                KNOWN_DETECTORS.join(", ")
            ),
        ))
    })?;
    let mask = MaskConfig {
        name,
        stores,
        columns: list(src, "columns", &raw.columns, as_is)?,
        keys: list(src, "keys", &raw.keys, as_is)?,
        json,
        detectors,
        strategy: raw.strategy.unwrap_or(MaskStrategy::Redact),
    };
    let selectors =
        "`columns` (postgres), `keys` (redis), `json` (http) or `detectors` (any store)";
    if mask.columns.is_none()
        && mask.keys.is_none()
        && mask.json.is_none()
        && mask.detectors.is_none()
    {
        return Err(src.at(
            &raw.name,
            format!("mask `{}` selects nothing", mask.name),
            format!("add at least one of {selectors}"),
        ));
    }
    if let (Some(stores), Some(raw_stores)) = (&mask.stores, &raw.stores) {
        for (store, raw_store) in stores.iter().zip(raw_stores.get_ref()) {
            let Some(protocol) = protocols.get(store).copied() else {
                continue;
            };
            let applies = mask.detectors.is_some()
                || match protocol {
                    Protocol::Postgres => mask.columns.is_some(),
                    Protocol::Redis => mask.keys.is_some(),
                    Protocol::Http => mask.json.is_some(),
                    Protocol::Tcp => false,
                };
            if !applies {
                return Err(src.at(
                    raw_store,
                    format!("mask `{}` selects nothing on store `{store}`, which speaks {protocol}", mask.name),
                    format!("masks select by {selectors}: add the selector for {protocol}, or remove the store from this mask"),
                ));
            }
        }
    }
    Ok(mask)
}

/// The one-paragraph summary `interceptor check` prints for a valid config.
pub fn check_report(cfg: &Config) -> String {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let stores = cfg
        .stores
        .iter()
        .map(|s| {
            format!(
                "{}: {} {}",
                s.name,
                s.protocol,
                plural(s.targets.len(), "target", "targets")
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut report = format!(
        "config OK: {} ({stores}), {}, {}; cgroup {}; listen {}",
        plural(cfg.stores.len(), "store", "stores"),
        plural(cfg.rules.len(), "rule", "rules"),
        plural(cfg.masks.len(), "mask", "masks"),
        cfg.daemon.cgroup,
        cfg.daemon.listen,
    );
    for w in check_warnings(cfg) {
        report.push_str("\nwarning: ");
        report.push_str(&w);
    }
    report
}

/// What `interceptor check` points out in a valid config: things that work
/// but are rarely what an operator means.
pub fn check_warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for store in &cfg.stores {
        for t in store.targets.iter().filter(|t| t.host == TargetHost::Any) {
            out.push(format!(
                "store \"{}\": target \"{}\" catches every server on port {} that a job talks to, \
                 its own throwaway test database or cache included, not only the secret store; \
                 list the store's addresses or host names instead (e.g. \"{}.internal:{}\")",
                store.name, t.raw, t.port, store.name, t.port
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_warns_about_catch_all_targets() {
        let cfg = Config::parse(DESIGN_EXAMPLE, Path::new("design.toml")).expect("parses");
        let w = check_warnings(&cfg);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("\"*:5432\"") && w[0].contains("ci-db"),
            "{w:?}"
        );
        assert!(check_report(&cfg).contains("\nwarning: store \"ci-db\""));
        let listed = DESIGN_EXAMPLE.replace(", \"*:5432\"]", "]");
        let cfg = Config::parse(&listed, Path::new("design.toml")).expect("parses");
        assert!(check_warnings(&cfg).is_empty());
    }

    /// The example config from DESIGN.md, verbatim.
    const DESIGN_EXAMPLE: &str = r#"
[daemon]
cgroup = "/sys/fs/cgroup/system.slice/gitlab-runner.service" # cgroup v2 dir whose tasks are intercepted
listen = "127.0.0.1:915"             # redirect target; below 1024 so no unprivileged task can squat it
state_dir = "/var/lib/interceptor"   # CA, host key, journal
audit_dir = "/var/lib/interceptor/audit"
control_socket = "/run/interceptor/control.sock"
bpffs = "/sys/fs/bpf/interceptor"

[audit]
durability = "batched"               # batched | strict (fsync before forwarding)
flush_interval = "60s"               # journal -> Parquet
on_failure = "block"                 # block | allow: what to do when the recorder cannot write
statements = "normalized"            # normalized (literals -> $n) | raw

[[store]]
name = "ci-db"
protocol = "postgres"                # postgres | redis | http | tcp
targets = ["10.0.0.5:5432", "db.internal:5432", "*:5432"]   # "*" = any address on that port
upstream_tls = "prefer"              # disable | prefer | require | verify-full
upstream_ca = "/etc/ssl/certs/db-ca.pem"                    # optional

[[rule]]
name = "no-ddl"
stores = ["ci-db"]                   # omitted = every store
action = "deny"                      # deny | approve | allow
message = "DDL is not allowed from CI"
identity = { uid = [1001], unit = ["gitlab-runner.service"], exe = ["/usr/bin/psql"], env = { CI_PROJECT_PATH = "infra/*" } }
sql = { statements = ["drop", "truncate", "alter", "grant"], functions = ["pg_read_file", "dblink*"], relations = ["pg_authid"], unparsable = true, without_where = ["delete", "update"] }
redis = { commands = ["FLUSHALL", "CONFIG SET", "KEYS"] }
http = { methods = ["DELETE"], paths = ["/v1/sys/*"] }

[[mask]]
name = "secrets"
stores = ["ci-db"]
columns = ["password", "*_token", "users.api_key"]        # postgres result columns
keys = ["secret:*"]                                        # redis keys whose values are masked
json = ["data.data.*", "auth.client_token", "wrap_info.token"]  # http JSON field paths
detectors = ["aws_access_key_id", "private_key", "github_token", "jwt"]   # any value, any protocol
strategy = "redact"                  # redact | partial | hash | null
"#;

    const DAEMON: &str = "[daemon]\ncgroup = \"ci\"\n";
    const PG: &str = "[[store]]\nname = \"db\"\nprotocol = \"postgres\"\ntargets = [\"*:5432\"]\n";
    const REDIS: &str =
        "[[store]]\nname = \"cache\"\nprotocol = \"redis\"\ntargets = [\"*:6379\"]\n";
    const VAULT: &str =
        "[[store]]\nname = \"vault\"\nprotocol = \"http\"\ntargets = [\"*:8200\"]\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn ok(text: &str) -> Config {
        match parse(text) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    /// Asserts that `text` is rejected, on the line holding the last
    /// occurrence of `at`, with `hint` in the hint.
    #[track_caller]
    fn rejects(text: &str, at: &str, hint: &str) -> String {
        let err = match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        };
        let shown = err.to_string();
        let ConfigError::Invalid {
            line,
            hint: got_hint,
            ..
        } = &err
        else {
            panic!("expected ConfigError::Invalid, got {shown}");
        };
        let offset = text
            .rfind(at)
            .unwrap_or_else(|| panic!("`{at}` not in the config"));
        let want_line = text[..offset].matches('\n').count() + 1;
        assert_eq!(*line, want_line, "wrong line in:\n{shown}");
        assert!(
            shown.starts_with(&format!("test.toml:{want_line}:")),
            "no FILE:LINE: prefix in:\n{shown}"
        );
        assert!(
            got_hint.contains(hint),
            "hint `{got_hint}` lacks `{hint}`:\n{shown}"
        );
        assert!(
            shown.contains(&format!("hint: {got_hint}")),
            "hint not displayed:\n{shown}"
        );
        assert!(shown.contains('^'), "no caret in:\n{shown}");
        shown
    }

    #[test]
    fn design_example_parses() {
        let c = ok(DESIGN_EXAMPLE);
        assert_eq!(
            c.daemon.cgroup,
            "/sys/fs/cgroup/system.slice/gitlab-runner.service"
        );
        assert_eq!(
            c.daemon.audit_dir,
            PathBuf::from("/var/lib/interceptor/audit")
        );
        assert_eq!(c.stores.len(), 1);
        let s = &c.stores[0];
        assert_eq!(
            (s.name.as_str(), s.protocol, s.upstream_tls),
            ("ci-db", Protocol::Postgres, UpstreamTls::Prefer)
        );
        assert_eq!(
            s.upstream_ca,
            Some(PathBuf::from("/etc/ssl/certs/db-ca.pem"))
        );
        let hosts: Vec<&TargetHost> = s.targets.iter().map(|t| &t.host).collect();
        assert_eq!(
            hosts,
            [
                &TargetHost::Ip("10.0.0.5".parse().unwrap()),
                &TargetHost::Name("db.internal".into()),
                &TargetHost::Any
            ]
        );
        assert!(s.targets.iter().all(|t| t.port == 5432));
        let r = &c.rules[0];
        assert_eq!(r.action, Action::Deny);
        assert_eq!(r.stores, Some(vec!["ci-db".to_string()]));
        let id = r.identity.as_ref().unwrap();
        assert_eq!(id.uid, Some(vec![1001]));
        assert_eq!(id.env.as_ref().unwrap()["CI_PROJECT_PATH"], "infra/*");
        let sql = r.sql.as_ref().unwrap();
        assert_eq!(sql.unparsable, Some(true));
        assert_eq!(
            sql.without_where,
            Some(vec!["delete".into(), "update".into()])
        );
        assert_eq!(
            r.redis.as_ref().unwrap().commands,
            Some(vec!["FLUSHALL".into(), "CONFIG SET".into(), "KEYS".into()])
        );
        assert_eq!(
            r.http.as_ref().unwrap().methods,
            Some(vec!["DELETE".into()])
        );
        let m = &c.masks[0];
        assert_eq!(m.strategy, MaskStrategy::Redact);
        assert_eq!(m.detectors.as_ref().unwrap().len(), 4);
        assert_eq!(c.path, PathBuf::from("test.toml"));
    }

    #[test]
    fn defaults_apply() {
        let c = ok(&format!("{DAEMON}{PG}{REDIS}"));
        let d = &c.daemon;
        assert_eq!(d.listen, "127.0.0.1:915".parse().unwrap());
        assert!(!d.allow_unprivileged_listen_port);
        assert_eq!(d.state_dir, PathBuf::from("/var/lib/interceptor"));
        assert_eq!(d.audit_dir, PathBuf::from("/var/lib/interceptor/audit"));
        assert_eq!(
            d.control_socket,
            PathBuf::from("/run/interceptor/control.sock")
        );
        assert_eq!(d.bpffs, PathBuf::from("/sys/fs/bpf/interceptor"));
        assert_eq!(d.upstream_mark, 0x4943_5054);
        assert_eq!(d.resolve_interval, Duration::from_secs(30));
        assert_eq!(c.audit, AuditConfig::default());
        assert_eq!(c.audit.durability, Durability::Batched);
        assert_eq!(c.audit.flush_interval, Duration::from_secs(60));
        assert_eq!(c.audit.on_failure, OnFailure::Block);
        assert_eq!(c.audit.statements, StatementMode::Normalized);
        assert_eq!(c.stores[0].upstream_tls, UpstreamTls::Prefer);
        assert_eq!(c.stores[1].upstream_tls, UpstreamTls::Disable);
        assert!(c.rules.is_empty() && c.masks.is_empty());

        // audit_dir follows state_dir; an [audit] table may set only some keys.
        let c = ok(&format!(
            "[daemon]\ncgroup = \"ci\"\nstate_dir = \"/srv/icpt\"\nresolve_interval = \"5m\"\nupstream_mark = 7\n\
             [audit]\ndurability = \"strict\"\n{PG}"
        ));
        assert_eq!(c.daemon.audit_dir, PathBuf::from("/srv/icpt/audit"));
        assert_eq!(c.daemon.resolve_interval, Duration::from_secs(300));
        assert_eq!(c.daemon.upstream_mark, 7);
        assert_eq!(c.audit.durability, Durability::Strict);
        assert_eq!(c.audit.flush_interval, Duration::from_secs(60));
    }

    #[test]
    fn store_errors() {
        rejects(DAEMON, "cgroup", "add at least one [[store]]");
        rejects(&format!("{DAEMON}{PG}{PG}"), "name = \"db\"", "unique name");
        rejects(
            &format!("{DAEMON}[[store]]\nname = \"\"\nprotocol = \"tcp\"\ntargets = [\"*:1\"]\n"),
            "name = \"\"",
            "unique name",
        );
        rejects(
            &format!("{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = []\n"),
            "targets = []",
            "HOST:PORT",
        );
        rejects(
            &format!("{DAEMON}{PG}[[store]]\nname = \"b\"\nprotocol = \"tcp\"\ntargets = [\"10.0.0.1:1\", \"*:5432\"]\n"),
            "\"*:5432\"]",
            "only one store",
        );
        // Every local address reaches the same listeners.
        let e = rejects(
            &format!(
                "{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"127.0.0.1:7000\"]\n\
                 [[store]]\nname = \"b\"\nprotocol = \"tcp\"\ntargets = [\"[::1]:7000\"]\n"
            ),
            "[::1]:7000",
            "only one store",
        );
        assert!(e.contains("already claimed by store `a`"), "{e}");
        rejects(
            &format!("{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"db.internal:1\", \"DB.internal:1\"]\n"),
            "targets",
            "remove the duplicate",
        );
        rejects(
            &format!("{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"10.0.0.1:1\", \"*:915\"]\n"),
            "targets",
            "the proxy listens on 127.0.0.1:915",
        );
        rejects(
            &format!("{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"127.0.0.9:915\"]\n"),
            "targets",
            "different port",
        );
        rejects(
            &format!("{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"localhost:915\"]\n"),
            "targets",
            "different port",
        );
        rejects(
            &format!("{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"bad host!:1\"]\n"),
            "targets",
            "HOST:PORT",
        );
        rejects(
            &format!("{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"redis\"\ntargets = [\"*:1\"]\nupstream_ca = \"/ca.pem\"\n"),
            "upstream_ca",
            "verify-full",
        );
        rejects(
            &format!(
                "{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"postgres\"\ntargets = [\"*:1\"]\nupstream_tls = \"disable\"\nupstream_ca = \"/ca.pem\"\n"
            ),
            "upstream_tls",
            "remove upstream_ca",
        );
        rejects(
            &format!(
                "{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"mysql\"\ntargets = [\"*:1\"]\n"
            ),
            "mysql",
            "\"postgres\"",
        );
        rejects(
            &format!("{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"tcp\"\n"),
            "[[store]]",
            "targets = [",
        );
        rejects(
            &format!(
                "{DAEMON}[[store]]\nname = \"a b\"\nprotocol = \"tcp\"\ntargets = [\"*:1\"]\n"
            ),
            "a b",
            "letters, digits",
        );
        // Different stores may share a port on different hosts, and a store
        // may list several local addresses.
        ok(&format!(
            "{DAEMON}{PG}[[store]]\nname = \"b\"\nprotocol = \"tcp\"\ntargets = [\"10.0.0.1:5432\", \"127.0.0.1:7000\", \"[::1]:7000\"]\n"
        ));
        let c = ok(&format!("{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"redis\"\ntargets = [\"*:1\"]\nupstream_tls = \"verify-full\"\nupstream_ca = \"/ca.pem\"\n"));
        assert_eq!(c.stores[0].upstream_tls, UpstreamTls::VerifyFull);
    }

    #[test]
    fn daemon_errors() {
        let with = |daemon: &str| format!("[daemon]\n{daemon}\n{PG}");
        let cgroup_hint = "runner's cgroup v2 directory";
        rejects(&with("cgroup = \"\""), "cgroup", cgroup_hint);
        rejects(&with("cgroup = \"/\""), "cgroup", cgroup_hint);
        rejects(&with("cgroup = \"/sys/fs/cgroup/\""), "cgroup", cgroup_hint);
        rejects(&with("cgroup = \"./\""), "cgroup", cgroup_hint);
        rejects(
            &with("cgroup = \"/sys/fs//cgroup/./unified\""),
            "cgroup",
            cgroup_hint,
        );
        rejects(&with("cgroup = \"ci/../../etc\""), "cgroup", cgroup_hint);
        rejects(
            &with("cgroup = \"/sys/fs/cgroup/../x\""),
            "cgroup",
            cgroup_hint,
        );
        ok(&with("cgroup = \"ci/jobs\""));
        ok(&with(
            "cgroup = \"/sys/fs/cgroup/unified/interceptor-test-1\"",
        ));
        rejects(
            "[daemon]\nlisten = \"127.0.0.1:915\"\n",
            "[daemon]",
            "add `cgroup",
        );
        rejects(
            &with("cgroup = \"ci\"\nlisten = \"0.0.0.0:915\""),
            "listen",
            "127.0.0.1",
        );
        rejects(
            &with("cgroup = \"ci\"\nlisten = \"10.1.2.3:915\""),
            "listen",
            "127.0.0.1",
        );
        rejects(
            &with("cgroup = \"ci\"\nlisten = \"127.0.0.1:0\""),
            "listen",
            "fixed port",
        );
        rejects(
            &with("cgroup = \"ci\"\nlisten = \"localhost:915\""),
            "listen",
            "127.0.0.1:915",
        );
        rejects(
            &with("cgroup = \"ci\"\nbpffs = \"bpf/interceptor\""),
            "bpffs",
            "/sys/fs/bpf/interceptor",
        );
        rejects(
            &with("cgroup = \"ci\"\nupstream_mark = 0"),
            "upstream_mark",
            "non-zero",
        );
        rejects(
            &with("cgroup = \"ci\"\nupstream_mark = 4294967296"),
            "upstream_mark",
            "1..=0xFFFF_FFFF",
        );
        rejects(
            &with("cgroup = \"ci\"\nstate_dir = \"\""),
            "state_dir",
            "default",
        );
        rejects(
            &with(&format!(
                "cgroup = \"ci\"\ncontrol_socket = \"/{}\"",
                "x".repeat(120)
            )),
            "control_socket",
            "shorter path",
        );
        rejects(PG, "[[store]]", "add a [daemon] table");
    }

    #[test]
    fn listen_port_above_1023_needs_opt_in() {
        let hint =
            "ports below 1024 cannot be bound by unprivileged tasks while the daemon is down";
        rejects(
            &format!("[daemon]\ncgroup = \"ci\"\nlisten = \"127.0.0.1:15000\"\n{PG}"),
            "listen",
            hint,
        );
        rejects(
            &format!("[daemon]\ncgroup = \"ci\"\nlisten = \"[::1]:1024\"\nallow_unprivileged_listen_port = false\n{PG}"),
            "listen =",
            hint,
        );
        let c = ok(&format!("[daemon]\ncgroup = \"ci\"\nlisten = \"127.0.0.1:15000\"\nallow_unprivileged_listen_port = true\n{PG}"));
        assert_eq!(c.daemon.listen.port(), 15000);
        assert!(c.daemon.allow_unprivileged_listen_port);
        let c = ok(&format!(
            "[daemon]\ncgroup = \"ci\"\nlisten = \"[::1]:915\"\n{PG}"
        ));
        assert_eq!(c.daemon.listen, "[::1]:915".parse().unwrap());
        ok(&format!(
            "[daemon]\ncgroup = \"ci\"\nlisten = \"127.0.0.53:80\"\n{PG}"
        ));
    }

    #[test]
    fn bad_durations() {
        for bad in [
            "\"30\"",
            "\"0s\"",
            "\"5 parsecs\"",
            "\"-1s\"",
            "\"s\"",
            "\"\"",
            "\"99999999999999999999s\"",
        ] {
            rejects(
                &format!("[daemon]\ncgroup = \"ci\"\nresolve_interval = {bad}\n{PG}"),
                "resolve_interval",
                "\"30s\"",
            );
        }
        rejects(
            &format!("{DAEMON}[audit]\nflush_interval = \"1y\"\n{PG}"),
            "flush_interval",
            "\"5m\"",
        );
        rejects(
            &format!("{DAEMON}[audit]\nflush_interval = 60\n{PG}"),
            "flush_interval",
            "string in double quotes",
        );
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m 5s"), Ok(Duration::from_secs(5405)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("1.5s").is_err());
    }

    #[test]
    fn unknown_keys_are_reported_where_they_are() {
        let e = rejects(
            &format!("stores = 1\n{DAEMON}{PG}"),
            "stores = 1",
            "did you mean `store`?",
        );
        assert!(e.contains("unknown field `stores`"), "{e}");
        let e = rejects(
            &format!("[daemon]\ncgroup = \"ci\"\nlistne = \"127.0.0.1:915\"\n{PG}"),
            "listne",
            "did you mean `listen`?",
        );
        assert!(
            e.contains("`bpffs`") && e.contains("`resolve_interval`"),
            "allowed keys not listed:\n{e}"
        );
        assert!(e.contains("test.toml:3:1:"), "{e}");
        rejects(
            &format!("{DAEMON}[audit]\ndurabilty = \"strict\"\n{PG}"),
            "durabilty",
            "`durability`",
        );
        rejects(&format!("{DAEMON}{PG}[[rule]]\nname = \"r\"\naction = \"deny\"\nidentity = {{ uid = [1], user = \"x\" }}\n"), "user", "`uid`");
        rejects(&format!("{DAEMON}{PG}[[rule]]\nname = \"r\"\naction = \"deny\"\nsql = {{ statement = [\"drop\"] }}\n"), "statement", "`statements`");
        rejects(
            &format!("{DAEMON}{PG}[[rule]]\nname = \"r\"\naction = \"block\"\n"),
            "block",
            "\"deny\"",
        );
        rejects(
            &format!(
                "{DAEMON}{PG}[[mask]]\nname = \"m\"\ncolumns = [\"x\"]\nstrategy = \"shred\"\n"
            ),
            "shred",
            "\"redact\"",
        );
        rejects(
            &format!("{DAEMON}[store]\nname = \"a\"\n"),
            "[store]",
            "[[store]]",
        );
    }

    #[test]
    fn syntax_errors_point_at_the_source() {
        let e = rejects(&format!("{DAEMON}listen = \n{PG}"), "listen", "TOML syntax");
        let first = e.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("test.toml:3:10: ") && first.contains("expected"),
            "{e}"
        );
        let e = rejects(
            &format!("{DAEMON}{PG}[[rule]]\nname = \"r\naction = \"deny\"\n"),
            "name = \"r",
            "TOML syntax",
        );
        assert!(e.contains("name = \"r"), "source line not shown:\n{e}");
        rejects(
            "[daemon]\ncgroup = \"ci\"\ncgroup = \"x\"\n",
            "cgroup = \"x\"",
            "once per table",
        );
    }

    #[test]
    fn rule_errors() {
        let all = format!("{DAEMON}{PG}{REDIS}{VAULT}");
        let rule = |body: &str| format!("{all}[[rule]]\nname = \"r\"\naction = \"deny\"\n{body}\n");
        rejects(&rule("stores = [\"dbb\"]"), "dbb", "did you mean `db`?");
        rejects(&rule("stores = []"), "stores = []", "remove `stores`");
        rejects(
            &format!("{}[[rule]]\nname = \"r\"\naction = \"allow\"\n", rule("")),
            "name = \"r\"",
            "unique name",
        );
        rejects(
            &rule("stores = [\"cache\"]\nsql = { statements = [\"drop\"] }"),
            "\"cache\"",
            "with a `redis` matcher",
        );
        rejects(
            &rule("stores = [\"db\", \"vault\"]\nredis = { commands = [\"KEYS\"] }"),
            "\"db\"",
            "`sql` matcher",
        );
        rejects(
            &rule("stores = [\"db\"]\nhttp = { methods = [\"DELETE\"] }"),
            "\"db\"",
            "remove `db`",
        );
        rejects(
            &rule("stores = [\"cache\"]\nhttp = { paths = [\"/v1/*\"] }"),
            "\"cache\"",
            "remove `cache`",
        );
        rejects(
            &rule("sql = { statements = [\"dorp\"] }"),
            "dorp",
            "did you mean \"drop\"?",
        );
        rejects(
            &rule("sql = { statements = [] }"),
            "statements = []",
            "at least one value",
        );
        rejects(
            &rule("sql = { without_where = [\"select\"] }"),
            "select",
            "\"delete\"",
        );
        rejects(
            &rule("http = { paths = [\"v1/sys/*\"] }"),
            "v1/sys",
            "\"/v1/sys/*\"",
        );
        rejects(
            &rule("http = { methods = [\"DE LETE\"] }"),
            "DE LETE",
            "\"DELETE\"",
        );
        rejects(
            &rule("redis = { commands = [\"FLUSH;ALL\"] }"),
            "FLUSH;ALL",
            "\"FLUSHALL\"",
        );
        rejects(
            &rule("redis = { commands = [\"@dangerus\"] }"),
            "@dangerus",
            "\"@dangerous\"",
        );
        rejects(
            &rule("redis = { commands = [\"  \"] }"),
            "[\"  \"]",
            "remove it",
        );
        rejects(
            &rule("identity = { env = { SECRET_TOKEN = \"*\" } }"),
            "SECRET_TOKEN",
            "CI_JOB_ID",
        );
        rejects(
            &rule("identity = { env = { CI_PROJECT_PTH = \"*\" } }"),
            "CI_PROJECT_PTH",
            "did you mean `CI_PROJECT_PATH`?",
        );
        rejects(
            &rule("identity = { comm = [\"gitlab-runner-helper\"] }"),
            "gitlab-runner-helper",
            "\"gitlab-runner-h\"",
        );
        rejects(
            &rule("identity = { unit = [\"gitlab-runner\"] }"),
            "gitlab-runner",
            "gitlab-runner.service",
        );
        rejects(
            &rule("identity = { exe = [\"psql\"] }"),
            "psql",
            "/usr/bin/psql",
        );
        rejects(
            &rule("identity = { uid = [] }"),
            "uid = []",
            "at least one id",
        );
        rejects(
            &rule("identity = { uid = [-1] }"),
            "-1",
            "type of this value",
        );
        rejects(&rule("message = \"\""), "message", "say why");

        // A rule may carry matchers for several protocols; each store listed
        // needs the one for its protocol (as in DESIGN.md's example).
        let c = ok(&rule(
            "stores = [\"db\", \"cache\"]\nsql = { statements = [\"DROP\", \"alter  system\"] }\n\
             redis = { commands = [\"config set\", \"eval*\", \"@Dangerous\", \"client reply off|skip\"] }\nidentity = { comm = [\"psql\"], gid = [0] }",
        ));
        let r = &c.rules[0];
        assert_eq!(
            r.sql.as_ref().unwrap().statements,
            Some(vec!["drop".into(), "alter system".into()])
        );
        assert_eq!(
            r.redis.as_ref().unwrap().commands,
            Some(vec![
                "CONFIG SET".into(),
                "EVAL*".into(),
                "@dangerous".into(),
                "CLIENT REPLY OFF|SKIP".into()
            ])
        );
        assert_eq!(r.identity.as_ref().unwrap().gid, Some(vec![0]));
        // Without `stores`, the rule applies to every store it can match.
        ok(&rule("sql = { unparsable = true }"));
    }

    #[test]
    fn mask_errors() {
        let all = format!("{DAEMON}{PG}{REDIS}{VAULT}[[store]]\nname = \"raw\"\nprotocol = \"tcp\"\ntargets = [\"*:7000\"]\n");
        let mask = |body: &str| format!("{all}[[mask]]\nname = \"m\"\n{body}\n");
        rejects(
            &mask("detectors = [\"jwt\", \"aws_key\"]"),
            "aws_key",
            "aws_access_key_id",
        );
        rejects(
            &mask("detectors = [\"jwt\", \"password\"]"),
            "\"password\"",
            "password_in_url",
        );
        rejects(
            &mask("stores = [\"nope\"]\ncolumns = [\"password\"]"),
            "nope",
            "omit `stores`",
        );
        rejects(
            &mask("strategy = \"hash\""),
            "name = \"m\"",
            "at least one of",
        );
        rejects(
            &format!(
                "{}[[mask]]\nname = \"m\"\nkeys = [\"x\"]\n",
                mask("keys = [\"y\"]")
            ),
            "name = \"m\"",
            "unique name",
        );
        rejects(
            &mask("stores = [\"cache\"]\ncolumns = [\"password\"]"),
            "\"cache\"",
            "selector for redis",
        );
        rejects(
            &mask("stores = [\"raw\"]\njson = [\"data.password\"]"),
            "\"raw\"",
            "selector for tcp",
        );
        rejects(
            &mask("json = [\"data..password\"]"),
            "data..password",
            "\"data.data.*\"",
        );
        let c = ok(&mask(&format!(
            "detectors = [{}]\nstrategy = \"partial\"",
            KNOWN_DETECTORS
                .iter()
                .map(|d| format!("\"{d}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )));
        assert_eq!(c.masks[0].strategy, MaskStrategy::Partial);
        assert_eq!(
            c.masks[0].detectors.as_ref().unwrap().len(),
            KNOWN_DETECTORS.len()
        );
        ok(&mask("stores = [\"raw\", \"db\"]\ndetectors = [\"jwt\"]"));
    }

    #[test]
    fn bad_targets() {
        for (bad, hint) in [
            ("5432", "*:5432"),
            ("*:0", "1-65535"),
            ("*:99999", "1-65535"),
            ("*:", "append the port"),
            ("*:54x", "decimal"),
            ("[::1]", "[::1]:5432"),
            ("[::1]5432", "[::1]:PORT"),
            ("[10.0.0.1]:5432", "only for IPv6"),
            ("::1:5432", "in brackets"),
            ("::ffff:127.0.0.1", "in brackets"),
            ("bad host!:1", "HOST:PORT"),
            ("bad_host:1", "letters, digits"),
            ("db..internal:1", "letters, digits"),
            ("-db:1", "letters, digits"),
            ("999.1.1.1:1", "four decimal parts"),
            ("*.internal:1", "hostname wildcards"),
            (":5432", "*:PORT"),
            ("", "HOST:PORT"),
        ] {
            let e = bad.parse::<Target>().expect_err(bad);
            assert!(
                e.hint.contains(hint),
                "{bad}: hint `{}` lacks `{hint}` ({e})",
                e.hint
            );
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn good_targets() {
        let t = |s: &str| s.parse::<Target>().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(
            t("10.0.0.5:5432").host,
            TargetHost::Ip("10.0.0.5".parse().unwrap())
        );
        assert_eq!(t("*:1").host, TargetHost::Any);
        assert_eq!(t("*:65535").port, 65535);
        assert_eq!(t("[::1]:5432").host, TargetHost::Ip("::1".parse().unwrap()));
        assert_eq!(
            t("[2001:db8::7]:443").host,
            TargetHost::Ip("2001:db8::7".parse().unwrap())
        );
        let mapped = t("[::ffff:127.0.0.1]:6379");
        assert_eq!(
            mapped.host,
            TargetHost::Ip("::ffff:127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            (mapped.port, mapped.raw.as_str()),
            (6379, "[::ffff:127.0.0.1]:6379")
        );
        assert_eq!(
            t("DB.Internal:5432").host,
            TargetHost::Name("db.internal".into())
        );
        assert_eq!(
            t("db-1.ci.example.com:5432").to_string(),
            "db-1.ci.example.com:5432"
        );
        assert_eq!(t("localhost:1").host, TargetHost::Name("localhost".into()));
        assert_eq!(TargetHost::Ip("::1".parse().unwrap()).to_string(), "[::1]");
    }

    #[test]
    fn mapped_targets_count_as_local_and_as_their_ipv4() {
        let e = rejects(
            &format!("{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"[::ffff:127.0.0.1]:915\"]\n"),
            "targets",
            "different port",
        );
        assert!(e.contains("loop back"), "{e}");
        rejects(
            &format!(
                "{DAEMON}[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"10.0.0.5:1\"]\n\
                 [[store]]\nname = \"b\"\nprotocol = \"tcp\"\ntargets = [\"[::ffff:10.0.0.5]:1\"]\n"
            ),
            "[::ffff:10.0.0.5]:1",
            "only one store",
        );
    }

    #[test]
    fn error_display_is_a_complete_message() {
        let text =
            format!("{DAEMON}{PG}[[mask]]\nname = \"m\"\n\tdetectors = [\"jwt\", \"nope\"]\n");
        let e = parse(&text).unwrap_err().to_string();
        let expected = "test.toml:9:22: unknown detector `nope`\n  |\n9 | \tdetectors = [\"jwt\", \"nope\"]\n  | \t                    ^^^^^^\nhint: the detectors are ";
        assert!(
            e.starts_with(expected),
            "got:\n{e}\nwant prefix:\n{expected}"
        );
    }

    #[test]
    fn check_report_summarizes() {
        let c = ok(&format!("{DAEMON}{PG}[[store]]\nname = \"cache\"\nprotocol = \"redis\"\ntargets = [\"*:6379\", \"[::1]:6380\"]\n[[mask]]\nname = \"m\"\nkeys = [\"secret:*\"]\n"));
        assert_eq!(
            check_report(&c),
            "config OK: 2 stores (db: postgres 1 target, cache: redis 2 targets), 0 rules, 1 mask; cgroup ci; listen 127.0.0.1:915\n\
             warning: store \"db\": target \"*:5432\" catches every server on port 5432 that a job talks to, \
             its own throwaway test database or cache included, not only the secret store; list the store's \
             addresses or host names instead (e.g. \"db.internal:5432\")\n\
             warning: store \"cache\": target \"*:6379\" catches every server on port 6379 that a job talks to, \
             its own throwaway test database or cache included, not only the secret store; list the store's \
             addresses or host names instead (e.g. \"cache.internal:6379\")"
        );
    }

    #[test]
    fn load_reports_io_errors_and_refuses_world_writable_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = Config::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read config {}: ", missing.display())),
            "{e}"
        );
        assert!(e.ends_with("check the path and permissions"), "{e}");

        let path = dir.path().join("c.toml");
        fs::write(&path, format!("{DAEMON}{PG}")).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.path, path);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod o-w"), "{e}");
    }

    #[test]
    fn shipped_policies_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("policies");
        let default = Config::load(&root.join("default.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(default.daemon.cgroup, "interceptor-ci");
        assert_eq!(default.daemon.listen, DEFAULT_LISTEN);
        let protocols: Vec<Protocol> = default.stores.iter().map(|s| s.protocol).collect();
        assert_eq!(
            protocols,
            [Protocol::Postgres, Protocol::Redis, Protocol::Http]
        );
        assert!(!default.rules.is_empty());
        let detectors: HashSet<&str> = default
            .masks
            .iter()
            .flat_map(|m| m.detectors.iter().flatten())
            .map(String::as_str)
            .collect();
        assert_eq!(
            detectors,
            KNOWN_DETECTORS.iter().copied().collect(),
            "default.toml should enable every detector"
        );

        let mut examples = 0;
        for entry in fs::read_dir(root.join("examples")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                examples += 1;
            }
        }
        assert!(
            examples >= 2,
            "expected the worked examples in policies/examples"
        );
    }
}
