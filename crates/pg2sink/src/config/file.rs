//! The configuration file, and the one precedence rule for every setting:
//! a flag beats its `PG2SINK_*` environment variable, which beats the
//! configuration file, which beats the built-in default.
//!
//! The file is TOML, named by `--config` or `PG2SINK_CONFIG`. Its keys are
//! the long flag names without the dashes, either dotted or as tables:
//!
//! ```toml
//! url = "postgres://replicator@db.internal/app"
//! metrics-address = "0.0.0.0:9525"
//! [sink.file]
//! schemas-path = "/var/lib/pg2sink/schemas.jsonl"
//! ```
//!
//! How: each value in the file becomes the default of the flag of that name
//! (in every command that has it), so clap's own order (flag, environment,
//! default) gives the rule above, and `--help` shows the file's values as
//! the defaults. An unknown key is an error, so a typo never goes unseen.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;
use crate::error::Problem;

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "PG2SINK_CONFIG";

/// Flags that make no sense in a file.
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// The parsed command line.
pub struct Parsed {
    pub cli: Cli,
    command: Command,
    matches: ArgMatches,
}

impl Parsed {
    /// For `pg2sink config`: the effective settings of `stream`, as TOML
    /// with where each came from.
    pub fn effective_settings(&self) -> String {
        match (
            self.matches.subcommand(),
            self.command.find_subcommand("config"),
        ) {
            (Some(("config", sub)), Some(command)) => describe(command, sub),
            _ => describe(&self.command, &self.matches),
        }
    }
}

/// Parses the command line with the configuration file applied; exits with
/// clap's message on a bad flag, or returns the problem with the file.
pub fn parse_args() -> Result<Parsed, Problem> {
    parse_from(std::env::args_os().collect())
}

/// [`parse_args`] for given arguments (the first is the program name).
pub fn parse_from(args: Vec<OsString>) -> Result<Parsed, Problem> {
    let mut command = Cli::command();
    if let Some(path) = config_path(&args) {
        let settings = read(&path)?;
        command = apply(command, &settings).map_err(|unknown| {
            Problem::new(format!(
                "{}: unknown setting{} {}",
                path.display(),
                if unknown.len() == 1 { "" } else { "s" },
                unknown.into_iter().collect::<Vec<_>>().join(", ")
            ))
            .hint("keys are the long flag names without the leading dashes (see pg2sink --help), e.g. metrics-address or sink.file.schemas-path")
        })?;
    }
    let matches = command
        .try_get_matches_from_mut(args)
        .unwrap_or_else(|e| e.exit());
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Secrets given as files (--NAME-file, PG2SINK_NAME_FILE) are read now,
    // so a bad file stops every command before it starts.
    crate::secret::resolve(&mut cli, &command, &matches)?;
    Ok(Parsed {
        cli,
        command,
        matches,
    })
}

/// `--config PATH`, `--config=PATH`, else `PG2SINK_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Reads a configuration file into flag name → values.
pub fn read(path: &Path) -> Result<BTreeMap<String, Vec<String>>, Problem> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problem::new(format!(
            "cannot read the configuration file {}: {e}",
            path.display()
        ))
        .hint(format!(
            "check the path given with --config or {CONFIG_ENV}"
        ))
    })?;
    parse(&text).map_err(|e| Problem::new(format!("{}: {e}", path.display())))
}

/// Parses TOML into flag name → values (nested tables become dotted names).
pub fn parse(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message()))?;
    let mut out = BTreeMap::new();
    flatten("", &table, &mut out)?;
    Ok(out)
}

fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut BTreeMap<String, Vec<String>>,
) -> Result<(), String> {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let values = match value {
            toml::Value::Table(inner) => {
                flatten(&name, inner, out)?;
                continue;
            }
            toml::Value::Array(items) => items
                .iter()
                .map(|item| scalar(&name, item))
                .collect::<Result<_, _>>()?,
            other => vec![scalar(&name, other)?],
        };
        out.insert(name, values);
    }
    Ok(())
}

fn scalar(name: &str, value: &toml::Value) -> Result<String, String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) | toml::Value::Table(_) => {
            return Err(format!("{name}: expected a value or a list of values"))
        }
    })
}

/// Makes each setting the default of the flag of that name, in every
/// command; returns the names that match no flag.
fn apply(
    command: Command,
    settings: &BTreeMap<String, Vec<String>>,
) -> Result<Command, BTreeSet<String>> {
    let mut used = BTreeSet::new();
    let command = apply_to(command, settings, &mut used);
    let unknown: BTreeSet<String> = settings
        .keys()
        .filter(|k| !used.contains(*k) || NOT_IN_FILE.contains(&k.as_str()))
        .cloned()
        .collect();
    if unknown.is_empty() {
        Ok(command)
    } else {
        Err(unknown)
    }
}

fn apply_to(
    command: Command,
    settings: &BTreeMap<String, Vec<String>>,
    used: &mut BTreeSet<String>,
) -> Command {
    let command = command.mut_args(|arg| {
        let Some(values) = arg.get_long().and_then(|long| settings.get(long)) else {
            return arg;
        };
        if NOT_IN_FILE.contains(&arg.get_long().unwrap_or_default()) {
            return arg;
        }
        used.insert(arg.get_long().unwrap_or_default().to_string());
        // Defaults must live as long as the program: a handful of short
        // strings, once.
        let values: Vec<&'static str> = values
            .iter()
            .map(|v| &*Box::leak(v.clone().into_boxed_str()))
            .collect();
        let long = arg.get_long().unwrap_or_default();
        // A sink URL may carry a password (nats://user:pass@host).
        let secret = is_secret(long) || values.iter().any(|v| redact(long, v) != *v);
        // A secret from the file must not show up in --help.
        arg.default_values(values).hide_default_value(secret)
    });
    command.mut_subcommands(|sub| apply_to(sub, settings, used))
}

/// The effective settings of a command's matches, one `key = value` line
/// each, with where it came from; secrets are hidden.
pub fn describe(command: &Command, matches: &ArgMatches) -> String {
    let mut out = String::new();
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        let Ok(Some(raw)) = matches.try_get_raw(id) else {
            continue;
        };
        let values: Vec<String> = raw.map(|v| redact(long, &v.to_string_lossy())).collect();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) if arg_default_from_file(arg) => "file",
            _ => "default",
        };
        let value = if values.len() == 1 && !is_list(arg) {
            toml_string(&values[0])
        } else {
            let items: Vec<String> = values.iter().map(|v| toml_string(v)).collect();
            format!("[{}]", items.join(", "))
        };
        out.push_str(&format!("{long:?} = {value}  # {source}\n"));
    }
    out
}

fn is_list(arg: &clap::Arg) -> bool {
    arg.get_value_delimiter().is_some()
}

/// Whether an argument's default came from the file: file defaults are the
/// only leaked (changed) ones, so compare with a fresh command's.
fn arg_default_from_file(arg: &clap::Arg) -> bool {
    fn find(command: &Command, id: &str) -> Option<Vec<String>> {
        command
            .get_arguments()
            .find(|a| a.get_id().as_str() == id)
            .map(|a| {
                a.get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect()
            })
            .or_else(|| command.get_subcommands().find_map(|s| find(s, id)))
    }
    let now: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    find(&Cli::command(), arg.get_id().as_str()).is_none_or(|built_in| built_in != now)
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn is_secret(flag: &str) -> bool {
    is_url(flag) || is_credential(flag) || flag == KAFKA_PROPERTY
}

/// Flags whose value is a URL or connection string that may carry a
/// password.
fn is_url(flag: &str) -> bool {
    flag == "url" || flag.ends_with(".url") || flag == "sink.kafka.schema-registry-url"
}

/// librdkafka properties, KEY=VALUE: some hold secrets (sasl.password, ...).
const KAFKA_PROPERTY: &str = "sink.kafka.property";

/// Flags whose whole value is a credential (not the `-file` flags naming
/// where one is: a path is no secret).
fn is_credential(flag: &str) -> bool {
    !flag.ends_with("-file")
        && (flag.contains("token") || flag.contains("password") || flag.contains("api-key"))
}

/// Hides passwords in connection strings and API tokens.
pub fn redact(flag: &str, value: &str) -> String {
    if is_credential(flag) {
        return if value.is_empty() {
            String::new()
        } else {
            "****".into()
        };
    }
    if flag == KAFKA_PROPERTY {
        return match value.split_once('=') {
            Some((key, _)) if crate::sink::kafka::config::is_secret_property(key) => {
                format!("{key}=****")
            }
            _ => value.to_string(),
        };
    }
    if is_url(flag) {
        if let Ok(mut url) = url::Url::parse(value) {
            if url.password().is_some() {
                let _ = url.set_password(Some("****"));
            }
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" {
                        "****".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if pairs.iter().any(|(k, _)| k == "password") {
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            return url.to_string();
        }
        return value
            .split_whitespace()
            .map(|part| match part.split_once('=') {
                Some(("password", _)) => "password=****".to_string(),
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn nested_tables_become_dotted_names() {
        let parsed = parse(
            "url = 'x'\nimport-worker-count = 3\n[sink.file]\nschemas-path = '/a'\n[subscription-manager]\nschema = ['a', 'b']\nenabled = false\n",
        )
        .unwrap();
        assert_eq!(parsed["url"], ["x"]);
        assert_eq!(parsed["import-worker-count"], ["3"]);
        assert_eq!(parsed["sink.file.schemas-path"], ["/a"]);
        assert_eq!(parsed["subscription-manager.schema"], ["a", "b"]);
        assert_eq!(parsed["subscription-manager.enabled"], ["false"]);
        assert!(parse("x = ").unwrap_err().contains("not valid TOML"));
    }

    #[test]
    fn file_values_become_defaults_and_unknown_keys_are_refused() {
        let settings = parse("sink.batch-bytes = 77\nbogus = 1\n").unwrap();
        let unknown = apply(Cli::command(), &settings).unwrap_err();
        assert_eq!(unknown.into_iter().collect::<Vec<_>>(), ["bogus"]);
        let settings = parse("sink.batch-bytes = 77\n").unwrap();
        let command = apply(Cli::command(), &settings).unwrap();
        let m = command
            .try_get_matches_from(args(&["pg2sink", "stream"]))
            .unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        match cli.command {
            Some(crate::cli::Command::Stream(s)) => assert_eq!(s.sink_batch_bytes, 77),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_password_in_a_sink_url_from_the_file_stays_out_of_help() {
        let settings = parse("[sink.nats]\nurl = \"nats://u:hush@h:4222\"\n").unwrap();
        let mut command = apply(Cli::command(), &settings).unwrap();
        let help = command
            .find_subcommand_mut("stream")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("--sink.nats.url"), "{help}");
        assert!(!help.contains("hush"), "{help}");
    }

    #[test]
    fn config_path_from_flag() {
        assert_eq!(
            config_path(&args(&["p", "stream", "--config=/x.toml"])),
            Some(PathBuf::from("/x.toml"))
        );
        assert_eq!(
            config_path(&args(&["p", "--config", "/y.toml"])),
            Some(PathBuf::from("/y.toml"))
        );
    }

    #[test]
    fn secrets_are_hidden() {
        assert_eq!(
            redact("url", "postgres://u:secret@h/db"),
            "postgres://u:****@h/db"
        );
        assert_eq!(
            redact("url", "host=h password=secret user=u"),
            "host=h password=**** user=u"
        );
        assert_eq!(redact("api.token", "abc"), "****");
        assert_eq!(redact("sink.elasticsearch.api-key", "abc"), "****");
        assert_eq!(redact("sink.nats.token", "abc"), "****");
        assert_eq!(redact("sink.nats.password", "abc"), "****");
        assert_eq!(
            redact("sink.nats.url", "nats://u:secret@h:4222"),
            "nats://u:****@h:4222"
        );
        assert_eq!(redact("sink.nats.url", "nats://h:4222"), "nats://h:4222");
        assert_eq!(redact("schema", "abc"), "abc");
        assert_eq!(
            redact("sink.postgres.url", "postgres://u:secret@h/db"),
            "postgres://u:****@h/db"
        );
        assert_eq!(
            redact("sink.kafka.property", "sasl.password=hunter2"),
            "sasl.password=****"
        );
        assert_eq!(
            redact("sink.kafka.property", "ssl.key.password=x=y"),
            "ssl.key.password=****"
        );
        assert_eq!(
            redact("sink.kafka.property", "linger.ms=20"),
            "linger.ms=20"
        );
        assert_eq!(redact("sink.kafka.sasl-password", "hunter2"), "****");
        // A file flag names where the secret is: the path is shown.
        assert_eq!(
            redact("api.token-file", "/run/secrets/token"),
            "/run/secrets/token"
        );
        assert_eq!(
            redact(
                "sink.kafka.schema-registry-url",
                "https://u:pw@registry:8081"
            ),
            "https://u:****@registry:8081/"
        );
    }
}
