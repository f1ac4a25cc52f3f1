//! Layered node config: a TOML file, then environment variables, then `--set key=value`
//! arguments (later wins), merged by figment; errors name the layer and the key; printing
//! with secret values redacted.
//!
//! The naming rule for variables: the binary's prefix (`TRACKLINE_HUB_`, `TRACKLINE_EDGE_`)
//! followed by the field's path in upper case, with `__` between nesting levels:
//! `TRACKLINE_HUB_STATE_TTL_S=600`, `TRACKLINE_HUB_CLUSTER_HUB__MIN_COPIES=1`. Values of
//! variables and of `--set` are read as TOML values (`5`, `true`, `"text"`, `[1, 2]`,
//! `{ rows = 40, cols = 40 }`); a value that is not valid TOML is taken as a plain string
//! (`0.0.0.0:9443`, `edge-hel-1`, `/var/lib/trackline`), so only strings that would read as a
//! number, a boolean or an array need quotes (`--set edge_id='"42"'`).

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// What secret values are replaced with by [`redacted_toml`].
pub const REDACTED: &str = "<redacted>";

/// How one binary's config is layered: the prefix of its environment variables and the
/// variables under that prefix that are not config fields.
#[derive(Clone, Copy, Debug)]
pub struct ConfigLayers {
    /// Prefix of the variables that set fields, e.g. `TRACKLINE_HUB_`.
    pub env_prefix: &'static str,
    /// Full names of variables under the prefix that mean something else (e.g.
    /// `TRACKLINE_HUB_CONFIG`, the config file's path) and are never read as fields.
    pub env_reserved: &'static [&'static str],
}

/// A config that could not be read or merged; every variant names the layer at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigLoadError {
    #[error("config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {source}", path.display())]
    ParseFile {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("env {var}: {reason}")]
    EnvVar { var: String, reason: String },
    #[error("--set {arg}: {reason}")]
    SetArg { arg: String, reason: String },
    /// Values that do not fit the config's fields (unknown field, wrong type, ...).
    #[error("{}", join_lines(.0))]
    Fields(Vec<FieldError>),
}

/// One value that does not fit the config's fields, with the layer it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `config file PATH`, `env VAR` or `--set KEY`.
    pub layer: String,
    /// Dotted path of the field (`cluster_hub.min_copies`); empty for the whole config.
    pub key: String,
    /// What is wrong, from serde (`invalid type: found string "x", expected u64`).
    pub message: String,
    /// The key the layer itself sets (env and `--set`); the key is only repeated in the
    /// message when it differs.
    layer_key: Option<String>,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key_is_layer = self.layer_key.as_deref() == Some(self.key.as_str());
        if self.key.is_empty() || key_is_layer {
            write!(f, "{}: {}", self.layer, self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.layer, self.key, self.message)
        }
    }
}

fn join_lines(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One layer as a figment provider: its own metadata, so figment tags every value it
/// contributes with it and a failing value's error names this layer.
struct Layer {
    label: String,
    /// The dotted key an env variable or `--set` argument sets (none for the file).
    key: Option<String>,
    source: Source,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::from(self.label.clone(), self.source.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

impl ConfigLayers {
    /// Layers for a binary whose variables start with `env_prefix`.
    pub const fn new(env_prefix: &'static str, env_reserved: &'static [&'static str]) -> Self {
        Self {
            env_prefix,
            env_reserved,
        }
    }

    /// Merges the file (if any), the variables of `env` that start with the prefix (in name
    /// order) and the `--set` arguments (in order), and deserializes the result. Fields no
    /// layer sets keep the struct's serde defaults. `env` is passed in so tests need not touch
    /// the process environment; binaries pass `std::env::vars_os()`.
    pub fn load<T: DeserializeOwned>(
        &self,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
        sets: &[String],
    ) -> Result<T, ConfigLoadError> {
        let mut layers = Vec::new();
        if let Some(path) = file {
            layers.push(file_layer(path)?);
        }
        layers.extend(self.env_layers(env)?);
        for arg in sets {
            layers.push(set_layer(arg)?);
        }
        let keys: Vec<(String, Option<String>)> = layers
            .iter()
            .map(|l| (l.label.clone(), l.key.clone()))
            .collect();
        let figment = layers.into_iter().fold(Figment::new(), Figment::merge);
        figment.extract::<T>().map_err(|e| {
            ConfigLoadError::Fields(e.into_iter().map(|e| field_error(e, &keys)).collect())
        })
    }

    /// [`Self::load`] with the process environment.
    pub fn load_from_process<T: DeserializeOwned>(
        &self,
        file: Option<&Path>,
        sets: &[String],
    ) -> Result<T, ConfigLoadError> {
        self.load(file, std::env::vars_os(), sets)
    }

    fn env_layers(
        &self,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Vec<Layer>, ConfigLoadError> {
        let mut vars: Vec<(String, OsString)> = env
            .into_iter()
            // A variable whose name is not UTF-8 cannot start with our (ASCII) prefix.
            .filter_map(|(k, v)| k.into_string().ok().map(|k| (k, v)))
            .filter(|(k, _)| k.starts_with(self.env_prefix) && !self.env_reserved.contains(&&**k))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter()
            .map(|(var, value)| {
                let bad = |reason: &str| ConfigLoadError::EnvVar {
                    var: var.clone(),
                    reason: reason.to_owned(),
                };
                let value = value
                    .into_string()
                    .map_err(|_| bad("the value is not valid UTF-8"))?;
                let path: Vec<String> = var[self.env_prefix.len()..]
                    .to_ascii_lowercase()
                    .split("__")
                    .map(str::to_owned)
                    .collect();
                if let Some(reason) = bad_key(&path) {
                    return Err(bad(&format!(
                        "{reason} (fields are named {}FIELD__SUBFIELD)",
                        self.env_prefix
                    )));
                }
                let key = path.join(".");
                Ok(Layer {
                    label: format!("env {var}"),
                    dict: nest_dict(&key, parse_value(&value)),
                    key: Some(key),
                    source: Source::Custom(var),
                })
            })
            .collect()
    }
}

fn file_layer(path: &Path) -> Result<Layer, ConfigLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigLoadError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|source| ConfigLoadError::ParseFile {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    let dict = table.into_iter().map(|(k, v)| (k, to_figment(v))).collect();
    Ok(Layer {
        label: format!("config file {}", path.display()),
        key: None,
        source: Source::File(path.to_owned()),
        dict,
    })
}

fn set_layer(arg: &str) -> Result<Layer, ConfigLoadError> {
    let bad = |reason: String| ConfigLoadError::SetArg {
        arg: arg.to_owned(),
        reason,
    };
    let (key, value) = arg.split_once('=').ok_or_else(|| {
        bad("expected KEY=VALUE (a dotted key such as batch.flush_interval_ms)".into())
    })?;
    let key = key.trim();
    let path: Vec<String> = key.split('.').map(str::to_owned).collect();
    if let Some(reason) = bad_key(&path) {
        return Err(bad(format!(
            "{reason} (keys are dotted paths: cluster_hub.min_copies)"
        )));
    }
    Ok(Layer {
        label: format!("--set {key}"),
        key: Some(key.to_owned()),
        source: Source::Custom(format!("--set {arg}")),
        dict: nest_dict(key, parse_value(value)),
    })
}

/// Why a key path cannot name a field, if it cannot.
fn bad_key(path: &[String]) -> Option<String> {
    if path.iter().any(|s| s.is_empty()) {
        return Some("empty key segment".into());
    }
    path.iter()
        .find(|s| {
            !s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .map(|s| format!("`{s}` is not a field name"))
}

fn nest_dict(key: &str, value: Value) -> Dict {
    match figment::util::nest(key, value) {
        Value::Dict(_, dict) => dict,
        // `key` is non-empty (checked by `bad_key`), so `nest` made a dict.
        _ => Dict::new(),
    }
}

/// Reads `raw` as a TOML value; anything that is not one is a plain string.
fn parse_value(raw: &str) -> Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) if table.len() == 1 => match table.remove("v") {
            Some(v) => to_figment(v),
            None => Value::from(raw.to_owned()),
        },
        _ => Value::from(raw.to_owned()),
    }
}

fn to_figment(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::from(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::from(b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(a) => Value::from(a.into_iter().map(to_figment).collect::<Vec<_>>()),
        toml::Value::Table(t) => Value::from(
            t.into_iter()
                .map(|(k, v)| (k, to_figment(v)))
                .collect::<Dict>(),
        ),
    }
}

fn field_error(e: figment::Error, layers: &[(String, Option<String>)]) -> FieldError {
    let layer = e
        .metadata
        .as_ref()
        .map(|m| m.name.to_string())
        .unwrap_or_else(|| "config".to_owned());
    let layer_key = layers
        .iter()
        .find(|(label, _)| *label == layer)
        .and_then(|(_, key)| key.clone());
    FieldError {
        key: e.path.join("."),
        message: describe(&e.kind),
        layer,
        layer_key,
    }
}

/// serde's message, with the lists of expected names printed plainly.
fn describe(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::UnknownField(found, expected) => {
            format!(
                "unknown field `{found}`, expected one of: {}",
                expected.join(", ")
            )
        }
        Kind::UnknownVariant(found, expected) => {
            format!(
                "unknown variant `{found}`, expected one of: {}",
                expected.join(", ")
            )
        }
        other => other.to_string(),
    }
}

/// Whether a field holds a secret value and is printed as [`REDACTED`]: its name is
/// `token` or ends in `secret`, `secrets`, `password`, `passphrase`, `private_key`, `api_key`
/// or `_token`. Paths to key files (`key`, `key_path`, `token_signing_key`) are not secrets.
pub fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "token"
        || [
            "secret",
            "secrets",
            "password",
            "passphrase",
            "private_key",
            "api_key",
            "_token",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The config as TOML with every secret field's value (see [`is_secret_field`]) replaced by
/// [`REDACTED`], at any depth, in tables, arrays of tables and maps alike.
pub fn redacted_toml<T: Serialize>(config: &T) -> Result<String, toml::ser::Error> {
    let mut value = toml::Value::try_from(config)?;
    redact(&mut value);
    toml::to_string_pretty(&value)
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                if is_secret_field(k) {
                    *v = toml::Value::String(REDACTED.to_owned());
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        name: String,
        ttl_s: u64,
        listen: SocketAddr,
        ratio: f64,
        seeds: Vec<SocketAddr>,
        batch: Batch,
        cluster: Option<Batch>,
        publish: BTreeMap<String, String>,
        hooks: Vec<Hook>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Batch {
        flush_interval_ms: u64,
        max_fixes: usize,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Hook {
        url: String,
        signing_secret: String,
        key_path: PathBuf,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                name: "node-1".into(),
                ttl_s: 60,
                listen: SocketAddr::from(([0, 0, 0, 0], 9443)),
                ratio: 0.5,
                seeds: Vec::new(),
                batch: Batch::default(),
                cluster: None,
                publish: BTreeMap::new(),
                hooks: Vec::new(),
            }
        }
    }

    impl Default for Batch {
        fn default() -> Self {
            Self {
                flush_interval_ms: 20,
                max_fixes: 2048,
            }
        }
    }

    const LAYERS: ConfigLayers = ConfigLayers::new("TEST_NODE_", &["TEST_NODE_CONFIG"]);

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nodekit-layered-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn sets(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn load(
        file: Option<&Path>,
        vars: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Sample, ConfigLoadError> {
        LAYERS.load(file, env(vars), &sets(args))
    }

    #[test]
    fn no_layers_give_the_serde_defaults() {
        assert_eq!(load(None, &[], &[]).expect("load"), Sample::default());
    }

    #[test]
    fn env_overrides_the_file_and_set_overrides_env() {
        let path = file(
            "precedence.toml",
            "name = \"from-file\"\nttl_s = 10\nratio = 0.25\n[batch]\nflush_interval_ms = 5\nmax_fixes = 7\n",
        );
        let c = load(
            Some(&path),
            &[
                ("TEST_NODE_TTL_S", "20"),
                ("TEST_NODE_BATCH__FLUSH_INTERVAL_MS", "6"),
                ("TEST_NODE_NAME", "from-env"),
                ("OTHER_TTL_S", "99"),
            ],
            &["ttl_s=30", "batch.max_fixes=8"],
        )
        .expect("load");
        assert_eq!(c.name, "from-env", "env beats the file");
        assert_eq!(c.ttl_s, 30, "--set beats env");
        assert_eq!(c.batch.flush_interval_ms, 6, "env reaches nested fields");
        assert_eq!(c.batch.max_fixes, 8, "--set reaches nested fields");
        assert_eq!(c.ratio, 0.25, "untouched file values stay");
        assert_eq!(
            c.listen,
            Sample::default().listen,
            "untouched defaults stay"
        );
    }

    #[test]
    fn the_last_set_of_a_key_wins() {
        let c = load(None, &[], &["ttl_s=1", "ttl_s=2"]).expect("load");
        assert_eq!(c.ttl_s, 2);
    }

    #[test]
    fn values_are_toml_and_anything_else_is_a_plain_string() {
        let c = load(
            None,
            &[
                ("TEST_NODE_LISTEN", "127.0.0.1:7000"),
                ("TEST_NODE_SEEDS", "[\"10.0.0.1:7946\", \"10.0.0.2:7946\"]"),
                ("TEST_NODE_CLUSTER", "{ max_fixes = 3 }"),
            ],
            &[
                "name=\"42\"",
                "ratio=2",
                "publish={ \"hub.addr_link\" = \"10.0.0.1:7443\" }",
            ],
        )
        .expect("load");
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert_eq!(c.seeds.len(), 2);
        assert_eq!(c.name, "42", "a quoted number is a string");
        assert_eq!(c.ratio, 2.0, "an integer fits a float field");
        let cluster = c
            .cluster
            .expect("an inline table fills an optional section");
        assert_eq!(cluster.max_fixes, 3);
        assert_eq!(
            cluster.flush_interval_ms, 20,
            "its other fields keep defaults"
        );
        assert_eq!(
            c.publish.get("hub.addr_link").map(String::as_str),
            Some("10.0.0.1:7443"),
            "a map key with dots is set through an inline table"
        );
        let err = load(None, &[], &["name=42"]).expect_err("a bare number is a number");
        assert!(err.to_string().contains("expected a string"), "{err}");
    }

    #[test]
    fn tables_merge_key_by_key_and_arrays_are_replaced_whole() {
        let path = file(
            "merge.toml",
            "seeds = [\"10.0.0.1:7946\"]\n[publish]\na = \"1\"\n",
        );
        let c = load(
            Some(&path),
            &[("TEST_NODE_PUBLISH", "{ b = \"2\" }")],
            &["seeds=[\"10.0.0.9:7946\", \"10.0.0.8:7946\"]"],
        )
        .expect("load");
        assert_eq!(c.publish.len(), 2, "{:?}", c.publish);
        assert_eq!(
            c.seeds,
            vec![
                SocketAddr::from(([10, 0, 0, 9], 7946)),
                SocketAddr::from(([10, 0, 0, 8], 7946))
            ]
        );
    }

    #[test]
    fn the_reserved_file_variable_is_not_a_field() {
        let c = load(None, &[("TEST_NODE_CONFIG", "/etc/node.toml")], &[]).expect("load");
        assert_eq!(c, Sample::default());
    }

    #[test]
    fn a_bad_env_value_names_the_variable() {
        let err = load(None, &[("TEST_NODE_TTL_S", "abc")], &[])
            .expect_err("not a number")
            .to_string();
        assert!(err.starts_with("env TEST_NODE_TTL_S: "), "{err}");
        assert!(err.contains("expected u64"), "{err}");
        let err = load(None, &[("TEST_NODE_LISTEN", "nowhere")], &[])
            .expect_err("not an address")
            .to_string();
        assert!(err.starts_with("env TEST_NODE_LISTEN: "), "{err}");
    }

    #[test]
    fn unknown_fields_are_errors_from_every_layer_and_name_it() {
        let path = file(
            "unknown.toml",
            "[batch]\nflush_interval_ms = 5\nflush_ms = 1\n",
        );
        let err = load(Some(&path), &[], &[]).expect_err("file").to_string();
        assert!(
            err.starts_with(&format!(
                "config file {}: key `batch.flush_ms`: unknown field",
                path.display()
            )),
            "{err}"
        );
        let good = file("good.toml", "[batch]\nflush_interval_ms = 5\n");
        let err = load(Some(&good), &[("TEST_NODE_BATCH__FLUSH", "1")], &[])
            .expect_err("env")
            .to_string();
        assert!(
            err.starts_with("env TEST_NODE_BATCH__FLUSH: unknown field `flush`, expected one of: flush_interval_ms, max_fixes"),
            "{err}"
        );
        let err = load(Some(&good), &[], &["foo.bar=1"])
            .expect_err("--set")
            .to_string();
        assert!(
            err.starts_with("--set foo.bar: key `foo`: unknown field"),
            "{err}"
        );
        let err = load(Some(&good), &[], &["batch.bar=1"])
            .expect_err("--set")
            .to_string();
        assert!(
            err.starts_with("--set batch.bar: unknown field `bar`"),
            "{err}"
        );
    }

    #[test]
    fn malformed_layers_are_refused_with_their_name() {
        let err = load(None, &[], &["ttl_s"]).expect_err("no =").to_string();
        assert!(err.starts_with("--set ttl_s: expected KEY=VALUE"), "{err}");
        let err = load(None, &[], &["batch..x=1"])
            .expect_err("empty")
            .to_string();
        assert!(err.contains("empty key segment"), "{err}");
        let err = load(None, &[("TEST_NODE_", "1")], &[])
            .expect_err("no field")
            .to_string();
        assert!(
            err.starts_with("env TEST_NODE_: empty key segment"),
            "{err}"
        );
        let path = file("broken.toml", "ttl_s = \n");
        let err = load(Some(&path), &[], &[]).expect_err("toml").to_string();
        assert!(err.starts_with("config file "), "{err}");
        let missing = PathBuf::from("/nonexistent/trackline.toml");
        let err = load(Some(&missing), &[], &[])
            .expect_err("missing")
            .to_string();
        assert!(err.contains("/nonexistent/trackline.toml"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_non_utf8_value_is_an_error_naming_the_variable() {
        use std::os::unix::ffi::OsStringExt;
        let vars = vec![(
            OsString::from("TEST_NODE_NAME"),
            OsString::from_vec(vec![0xff, 0xfe]),
        )];
        let err = LAYERS
            .load::<Sample>(None, vars, &[])
            .expect_err("not utf-8")
            .to_string();
        assert!(err.starts_with("env TEST_NODE_NAME: "), "{err}");
    }

    #[test]
    fn redaction_hides_secret_values_at_any_depth_and_keeps_paths() {
        let mut c = Sample::default();
        c.hooks.push(Hook {
            url: "https://orders.example/hook".into(),
            signing_secret: "hunter2".into(),
            key_path: PathBuf::from("/etc/trackline/hook.key"),
        });
        c.publish.insert("api_key".into(), "k-123".into());
        c.publish
            .insert("hub.addr_link".into(), "10.0.0.1:7443".into());
        let text = redacted_toml(&c).expect("print");
        assert!(
            !text.contains("hunter2") && !text.contains("k-123"),
            "{text}"
        );
        assert!(text.contains("signing_secret = \"<redacted>\""), "{text}");
        assert!(text.contains("/etc/trackline/hook.key"), "{text}");
        assert!(text.contains("10.0.0.1:7443"), "{text}");
        assert!(text.contains("https://orders.example/hook"), "{text}");
        for secret in [
            "secret",
            "db_password",
            "PRIVATE_KEY",
            "auth_token",
            "token",
        ] {
            assert!(is_secret_field(secret), "{secret}");
        }
        for plain in [
            "token_keys",
            "token_signing_key",
            "key_path",
            "tracking_token_ttl_s",
        ] {
            assert!(!is_secret_field(plain), "{plain}");
        }
    }

    #[test]
    fn the_printed_config_loads_back_to_the_same_values() {
        let c = load(None, &[("TEST_NODE_TTL_S", "5")], &["batch.max_fixes=3"]).expect("load");
        let path = file("printed.toml", &redacted_toml(&c).expect("print"));
        assert_eq!(load(Some(&path), &[], &[]).expect("reload"), c);
    }
}
