//! Needle's configuration: one list of settings, four layers.
//!
//! Every setting has a dotted name (`inbound.listen`), an environment
//! variable (`NEEDLE_INBOUND_LISTEN`: the name upper-cased, dots as
//! underscores) and a default in the embedded `default.toml`. Layers, each
//! overriding the one before:
//!
//! 1. the embedded defaults (so `needle` with no configuration runs);
//! 2. a TOML file (`--config FILE` or `NEEDLE_CONFIG`);
//! 3. `NEEDLE_*` environment variables (what a Kubernetes pod spec sets);
//! 4. flags: `--set NAME=VALUE`, and a few shortcuts (`--log`, ...).
//!
//! Values are kept as strings with their source until the typed
//! [`Config`] is built, so a bad value is refused at start with the
//! setting's name, the value, where it came from and what was expected.
//! An unknown name in the file or in `--set` is an error too: a typo must
//! not silently fall back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use needle_core::authz::{IdentityPattern, Policy, PortPolicies};

/// The embedded defaults.
pub(crate) const DEFAULTS: &str = include_str!("default.toml");

/// One setting: its name and what it means (for `docs/configuration.md`
/// and `--help`).
pub(crate) struct Setting {
    pub(crate) name: &'static str,
    pub(crate) doc: &'static str,
}

/// Every setting Needle reads.
pub(crate) const SETTINGS: &[Setting] = &[
    Setting {
        name: "outbound.listen",
        doc: "Address of the outbound proxy (the application's connections to other pods, redirected by iptables).",
    },
    Setting {
        name: "outbound.target",
        doc: "Where outbound connections go when they were not redirected (no SO_ORIGINAL_DST); empty: such connections are closed.",
    },
    Setting {
        name: "inbound.listen",
        doc: "Address of the inbound proxy (connections from other pods to this one).",
    },
    Setting {
        name: "inbound.target",
        doc: "Where plaintext inbound connections go when they were not redirected; empty: closed. Meshed connections go to inbound.app_ip and the port their transport header names.",
    },
    Setting {
        name: "inbound.app_ip",
        doc: "The address the local application listens on, for meshed inbound connections.",
    },
    Setting {
        name: "inbound.default_policy",
        doc: "Who may reach application ports without a policy of their own: `allow-all`, `require-mtls`, or a comma-separated list of identity patterns (`spiffe://td/ns/n/sa/s`, `spiffe://td/ns/n/*`, `spiffe://td/*`).",
    },
    Setting {
        name: "inbound.port_policies",
        doc: "Per-port policies, `PORT=POLICY` separated by `;` (e.g. `8080=require-mtls;9090=spiffe://cluster.local/ns/web/*`).",
    },
    Setting {
        name: "admin.listen",
        doc: "Address of the admin server (/metrics, /ready, /live, /config, /log-level, /shutdown).",
    },
    Setting {
        name: "admin.enable_shutdown",
        doc: "Whether POST /shutdown (from localhost only) stops the proxy.",
    },
    Setting {
        name: "identity.cert",
        doc: "PEM certificate chain of this workload (leaf first, SPIFFE ID in a URI SAN); empty: mTLS off.",
    },
    Setting {
        name: "identity.key",
        doc: "PEM private key of the certificate.",
    },
    Setting {
        name: "identity.trust_bundle",
        doc: "PEM trust bundle of the workload's trust domain.",
    },
    Setting {
        name: "identity.poll_interval",
        doc: "How often the identity files are checked for rotation.",
    },
    Setting {
        name: "discovery.file",
        doc: "A TOML file of services (endpoints, weights, identities, routes, DNS names), reloaded when it changes; empty: every destination is its own only endpoint.",
    },
    Setting {
        name: "discovery.poll_interval",
        doc: "How often the discovery file is checked for changes.",
    },
    Setting {
        name: "detect.timeout",
        doc: "How long a client may take to show its protocol before the connection is treated as opaque.",
    },
    Setting {
        name: "detect.peek_limit",
        doc: "Most bytes read before a connection is decided opaque.",
    },
    Setting {
        name: "proxy.connect_timeout",
        doc: "Time to establish a TCP connection to a destination or endpoint.",
    },
    Setting {
        name: "proxy.idle_timeout",
        doc: "An opaque connection that moves no byte for this long is closed.",
    },
    Setting {
        name: "proxy.request_timeout",
        doc: "Default deadline of an HTTP request (routes may set their own).",
    },
    Setting {
        name: "proxy.handshake_timeout",
        doc: "Time for the mTLS handshake and transport header between proxies.",
    },
    Setting {
        name: "shutdown.grace_period",
        doc: "After SIGTERM/SIGINT, how long in-flight requests and connections may take to finish.",
    },
    Setting {
        name: "runtime.threads",
        doc: "Threads that run the proxy: 1 is a single-threaded runtime (the measured default, docs/benchmarks.md); more is tokio's work-stealing runtime with that many workers.",
    },
    Setting {
        name: "log.filter",
        doc: "Log filter in RUST_LOG syntax (e.g. `info`, `needle_io=debug`); changeable at run time with PUT /log-level.",
    },
    Setting {
        name: "log.format",
        doc: "`plain` or `json`.",
    },
];

/// Where a value came from, for error messages and `/config`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag => f.write_str("--set"),
        }
    }
}

/// A configuration error, naming the setting, the value and the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("reading configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("unknown setting {name:?} (from {from}); docs/configuration.md lists the settings")]
    Unknown { name: String, from: Source },
    #[error("--set {0:?}: expected NAME=VALUE")]
    BadFlag(String),
    #[error("setting {name} = {value:?} (from {from}): expected {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        from: Source,
        expected: String,
    },
}

/// The raw layered values: name → (value, source).
#[derive(Clone, Debug)]
pub(crate) struct Layers {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl Layers {
    /// The defaults, overridden by `file` (if any), the environment (as
    /// `env` yields it) and `--set` flags.
    pub(crate) fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[String],
    ) -> Result<Layers, ConfigError> {
        let mut layers = Layers {
            values: BTreeMap::new(),
        };
        let defaults = flatten_toml(DEFAULTS, std::path::Path::new("default.toml"))?;
        for (name, value) in defaults {
            let setting = lookup(&name).ok_or(ConfigError::Unknown {
                name,
                from: Source::Default,
            })?;
            layers.values.insert(setting, (value, Source::Default));
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            for (name, value) in flatten_toml(&text, path)? {
                let source = Source::File(path.to_owned());
                layers.set(&name, value, source)?;
            }
        }
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for setting in SETTINGS {
            let var = env_name(setting.name);
            if let Some(value) = env.get(&var) {
                layers.set(setting.name, value.clone(), Source::Env(var))?;
            }
        }
        for flag in flags {
            let (name, value) = flag
                .split_once('=')
                .ok_or_else(|| ConfigError::BadFlag(flag.clone()))?;
            layers.set(name.trim(), value.to_owned(), Source::Flag)?;
        }
        Ok(layers)
    }

    fn set(&mut self, name: &str, value: String, source: Source) -> Result<(), ConfigError> {
        let setting = lookup(name).ok_or_else(|| ConfigError::Unknown {
            name: name.to_owned(),
            from: source.clone(),
        })?;
        self.values.insert(setting, (value, source));
        Ok(())
    }

    /// Every setting's value and source, in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, &str, &Source)> {
        self.values.iter().map(|(k, (v, s))| (*k, v.as_str(), s))
    }

    fn get(&self, name: &'static str) -> (&str, &Source) {
        let (value, source) = &self.values[name];
        (value.trim(), source)
    }

    /// Parses setting `name` with `parse`, which says what it expected.
    fn parse<T>(
        &self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let (value, source) = self.get(name);
        parse(value).map_err(|expected| ConfigError::Invalid {
            name,
            value: value.to_owned(),
            from: source.clone(),
            expected,
        })
    }
}

/// The environment variable of a setting: `NEEDLE_` + upper-cased name
/// with dots as underscores; the log filter is plain `NEEDLE_LOG`, like
/// `RUST_LOG`.
pub(crate) fn env_name(name: &str) -> String {
    if name == "log.filter" {
        return "NEEDLE_LOG".to_owned();
    }
    format!("NEEDLE_{}", name.replace('.', "_").to_ascii_uppercase())
}

fn lookup(name: &str) -> Option<&'static str> {
    SETTINGS.iter().find(|s| s.name == name).map(|s| s.name)
}

/// A TOML document as `section.key` → value text.
fn flatten_toml(text: &str, path: &std::path::Path) -> Result<Vec<(String, String)>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let mut out = Vec::new();
    flatten(&table, "", &mut out);
    Ok(out)
}

fn flatten(table: &toml::Table, prefix: &str, out: &mut Vec<(String, String)>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => flatten(t, &name, out),
            toml::Value::String(s) => out.push((name, s.clone())),
            other => out.push((name, other.to_string())),
        }
    }
}

/// The typed configuration the sidecar runs with.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) outbound_listen: SocketAddr,
    pub(crate) outbound_target: Option<SocketAddr>,
    pub(crate) inbound_listen: SocketAddr,
    pub(crate) inbound_target: Option<SocketAddr>,
    pub(crate) app_ip: IpAddr,
    pub(crate) policies: PortPolicies,
    pub(crate) admin_listen: SocketAddr,
    pub(crate) admin_enable_shutdown: bool,
    pub(crate) identity: Option<IdentityFiles>,
    pub(crate) identity_poll_interval: Duration,
    pub(crate) discovery_file: Option<PathBuf>,
    pub(crate) discovery_poll_interval: Duration,
    pub(crate) detect_timeout: Duration,
    pub(crate) detect_peek_limit: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) grace_period: Duration,
    pub(crate) runtime_threads: usize,
    pub(crate) log_filter: String,
    pub(crate) log_format: LogFormat,
}

/// The identity's three files.
#[derive(Clone, Debug)]
pub(crate) struct IdentityFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) trust_bundle: PathBuf,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Plain,
    Json,
}

impl Config {
    /// Parses and cross-checks every setting.
    pub(crate) fn from_layers(l: &Layers) -> Result<Config, ConfigError> {
        let identity = {
            let cert = l.parse("identity.cert", path)?;
            let key = l.parse("identity.key", path)?;
            let trust_bundle = l.parse("identity.trust_bundle", path)?;
            match (cert, key, trust_bundle) {
                (None, None, None) => None,
                (Some(cert), Some(key), Some(trust_bundle)) => Some(IdentityFiles {
                    cert,
                    key,
                    trust_bundle,
                }),
                _ => {
                    let (value, source) = l.get("identity.cert");
                    return Err(ConfigError::Invalid {
                        name: "identity.cert",
                        value: value.to_owned(),
                        from: source.clone(),
                        expected: "identity.cert, identity.key and identity.trust_bundle all set, or none of them".into(),
                    });
                }
            }
        };
        let mut policies = PortPolicies::new(l.parse("inbound.default_policy", policy)?);
        for (port, p) in l.parse("inbound.port_policies", port_policies)? {
            policies.set(port, p);
        }
        let detect_peek_limit = l.parse("detect.peek_limit", |v| {
            let n: usize = v.parse().map_err(|_| "a number of bytes".to_owned())?;
            let config = needle_core::detect::Config {
                peek_limit: n,
                ..needle_core::detect::Config::default()
            };
            config.validate().map_err(|e| e.to_string())?;
            Ok(n)
        })?;
        Ok(Config {
            outbound_listen: l.parse("outbound.listen", addr)?,
            outbound_target: l.parse("outbound.target", optional(addr))?,
            inbound_listen: l.parse("inbound.listen", addr)?,
            inbound_target: l.parse("inbound.target", optional(addr))?,
            app_ip: l.parse("inbound.app_ip", |v| {
                v.parse().map_err(|_| "an IP address like 127.0.0.1".into())
            })?,
            policies,
            admin_listen: l.parse("admin.listen", addr)?,
            admin_enable_shutdown: l.parse("admin.enable_shutdown", boolean)?,
            identity,
            identity_poll_interval: l.parse("identity.poll_interval", positive_duration)?,
            discovery_file: l.parse("discovery.file", path)?,
            discovery_poll_interval: l.parse("discovery.poll_interval", positive_duration)?,
            detect_timeout: l.parse("detect.timeout", positive_duration)?,
            detect_peek_limit,
            connect_timeout: l.parse("proxy.connect_timeout", positive_duration)?,
            idle_timeout: l.parse("proxy.idle_timeout", positive_duration)?,
            request_timeout: l.parse("proxy.request_timeout", positive_duration)?,
            handshake_timeout: l.parse("proxy.handshake_timeout", positive_duration)?,
            grace_period: l.parse("shutdown.grace_period", duration)?,
            runtime_threads: l.parse("runtime.threads", |v| match v.parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => Ok(n),
                _ => Err("a number of threads from 1 to 256".into()),
            })?,
            log_filter: l.parse("log.filter", |v| {
                tracing_subscriber::EnvFilter::try_new(v)
                    .map(|_| v.to_owned())
                    .map_err(|e| format!("a RUST_LOG-style filter ({e})"))
            })?,
            log_format: l.parse("log.format", |v| match v {
                "plain" => Ok(LogFormat::Plain),
                "json" => Ok(LogFormat::Json),
                _ => Err("`plain` or `json`".into()),
            })?,
        })
    }
}

fn addr(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| "an address like 127.0.0.1:4140 or [::]:4143".into())
}

fn optional<T>(
    parse: impl Fn(&str) -> Result<T, String>,
) -> impl Fn(&str) -> Result<Option<T>, String> {
    move |v| match v {
        "" => Ok(None),
        v => parse(v).map(Some).map_err(|e| format!("{e}, or empty")),
    }
}

fn path(v: &str) -> Result<Option<PathBuf>, String> {
    Ok((!v.is_empty()).then(|| PathBuf::from(v)))
}

fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("true or false".into()),
    }
}

/// Parses "250ms", "5s", "2m" or "1h".
pub(crate) fn duration(v: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "a duration like 500ms, 5s, 2m or 1h";
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().map_err(|_| EXPECTED.to_owned())?;
    let secs = |mul: u64| {
        n.checked_mul(mul)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{EXPECTED} (this one is too long)"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(EXPECTED.to_owned()),
    }
}

fn positive_duration(v: &str) -> Result<Duration, String> {
    match duration(v)? {
        d if d.is_zero() => Err("a duration greater than zero".into()),
        d => Ok(d),
    }
}

/// `allow-all`, `require-mtls`, or comma-separated identity patterns.
fn policy(v: &str) -> Result<Policy, String> {
    match v {
        "allow-all" => Ok(Policy::AllowAll),
        "require-mtls" => Ok(Policy::RequireMtls),
        patterns => patterns
            .split(',')
            .map(|p| IdentityPattern::parse(p.trim()).map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Policy::AllowIdentities)
            .map_err(|e| {
                format!(
                    "`allow-all`, `require-mtls` or identity patterns like spiffe://td/ns/n/* ({e})"
                )
            }),
    }
}

/// `PORT=POLICY;PORT=POLICY`.
fn port_policies(v: &str) -> Result<Vec<(u16, Policy)>, String> {
    v.split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (port, p) = entry
                .split_once('=')
                .ok_or_else(|| format!("PORT=POLICY entries separated by `;` ({entry:?})"))?;
            let port: u16 = port
                .trim()
                .parse()
                .map_err(|_| format!("a port number in {entry:?}"))?;
            Ok((port, policy(p.trim())?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)], flags: &[&str]) -> Result<Config, String> {
        let dir = std::env::temp_dir().join(format!("needle-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.toml", fnv(file.unwrap_or(""))));
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let layers = Layers::load(file.map(|_| path.as_path()), env, &flags);
        let _ = std::fs::remove_file(&path);
        layers
            .and_then(|l| Config::from_layers(&l))
            .map_err(|e| e.to_string())
    }

    fn fnv(s: &str) -> u64 {
        s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    #[test]
    fn the_embedded_defaults_are_valid_and_complete() {
        let config = load(None, &[], &[]).unwrap();
        assert_eq!(config.outbound_listen, "127.0.0.1:4140".parse().unwrap());
        assert_eq!(config.inbound_listen, "0.0.0.0:4143".parse().unwrap());
        assert_eq!(config.admin_listen, "0.0.0.0:4191".parse().unwrap());
        assert!(config.identity.is_none(), "mTLS off without credentials");
        // Every setting has a default, and every default is a setting.
        let layers = Layers::load(None, Vec::new(), &[]).unwrap();
        let names: Vec<_> = layers.iter().map(|(n, _, _)| n).collect();
        let mut all: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        all.sort_unstable();
        assert_eq!(names, all);
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file =
            "[proxy]\nidle_timeout = \"2m\"\nconnect_timeout = \"3s\"\nrequest_timeout = \"4s\"\n";
        let env = [
            ("NEEDLE_PROXY_CONNECT_TIMEOUT", "5s"),
            ("NEEDLE_PROXY_REQUEST_TIMEOUT", "6s"),
        ];
        let config = load(Some(file), &env, &["proxy.request_timeout=7s"]).unwrap();
        let logged = load(None, &[("NEEDLE_LOG", "needle_io=debug")], &[]).unwrap();
        assert_eq!(
            logged.log_filter, "needle_io=debug",
            "NEEDLE_LOG, like RUST_LOG"
        );
        assert_eq!(config.idle_timeout, Duration::from_secs(120), "file");
        assert_eq!(
            config.connect_timeout,
            Duration::from_secs(5),
            "env over file"
        );
        assert_eq!(
            config.request_timeout,
            Duration::from_secs(7),
            "flag over env"
        );
        assert_eq!(config.handshake_timeout, Duration::from_secs(5), "default");
    }

    #[test]
    fn bad_values_name_the_setting_the_value_the_source_and_the_expectation() {
        let e = load(None, &[("NEEDLE_INBOUND_LISTEN", "localhost")], &[]).unwrap_err();
        assert_eq!(
            e,
            "setting inbound.listen = \"localhost\" (from environment variable NEEDLE_INBOUND_LISTEN): expected an address like 127.0.0.1:4140 or [::]:4143"
        );
        let e = load(Some("[detect]\ntimeout = \"soon\"\n"), &[], &[]).unwrap_err();
        assert!(
            e.starts_with("setting detect.timeout = \"soon\" (from file "),
            "{e}"
        );
        assert!(
            e.ends_with("expected a duration like 500ms, 5s, 2m or 1h"),
            "{e}"
        );
        let e = load(None, &[], &["detect.timeout=0s"]).unwrap_err();
        assert!(e.contains("greater than zero"), "{e}");
        let e = load(None, &[], &["inbound.default_policy=everyone"]).unwrap_err();
        assert!(
            e.contains("`allow-all`, `require-mtls` or identity patterns"),
            "{e}"
        );
        let e = load(None, &[], &["identity.cert=/c.pem"]).unwrap_err();
        assert!(e.contains("all set, or none of them"), "{e}");
        let e = load(None, &[], &["log.filter=needle=[[["]).unwrap_err();
        assert!(e.contains("RUST_LOG-style filter"), "{e}");
    }

    #[test]
    fn unknown_settings_are_refused_not_ignored() {
        let e = load(Some("[proxy]\nidle_timout = \"2m\"\n"), &[], &[]).unwrap_err();
        assert!(
            e.starts_with("unknown setting \"proxy.idle_timout\""),
            "{e}"
        );
        let e = load(None, &[], &["nope=1"]).unwrap_err();
        assert!(e.starts_with("unknown setting \"nope\""), "{e}");
        let e = load(Some("not toml ["), &[], &[]).unwrap_err();
        assert!(e.contains("is not valid TOML"), "{e}");
    }

    #[test]
    fn policies_parse_per_port() {
        let config = load(
            None,
            &[],
            &[
                "inbound.default_policy=require-mtls",
                "inbound.port_policies=8080=allow-all; 9090=spiffe://cluster.local/ns/web/*",
            ],
        )
        .unwrap();
        assert_eq!(config.policies.policy(1), &Policy::RequireMtls);
        assert_eq!(config.policies.policy(8080), &Policy::AllowAll);
        assert!(matches!(config.policies.policy(9090), Policy::AllowIdentities(p) if p.len() == 1));
        let e = load(None, &[], &["inbound.port_policies=http=allow-all"]).unwrap_err();
        assert!(e.contains("a port number"), "{e}");
    }

    #[test]
    fn every_setting_is_documented() {
        let docs = include_str!("../../docs/configuration.md");
        for setting in SETTINGS {
            assert!(
                docs.contains(&format!("`{}`", setting.name)),
                "{} undocumented",
                setting.name
            );
            assert!(
                docs.contains(setting.doc),
                "{}: docs differ from the code",
                setting.name
            );
            assert!(
                docs.contains(&format!("`{}`", env_name(setting.name))),
                "{} env undocumented",
                setting.name
            );
        }
    }
}
