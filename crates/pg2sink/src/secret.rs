//! Secrets (passwords, tokens, keys, URLs that may carry a password): a type
//! that cannot be printed by accident, and reading one from a file.
//!
//! Promises: [`Secret`] prints `<redacted>` through `Debug` and `Display`,
//! has no `Serialize`, and gives its value only through [`Secret::expose`].
//! Every secret flag `--NAME` has a `--NAME-file` flag (environment
//! `PG2SINK_NAME_FILE`, configuration-file key `NAME-file`) naming a file
//! that holds the value, as container orchestrators mount secrets; one
//! trailing newline of the file is removed. The value and its file follow
//! the one precedence rule (flag > environment > configuration file); both
//! given at the same level is an error that names them. Errors name the
//! flag and the path, never the content.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

use crate::cli::args::{ImportCommand, SourceArgs, StreamArgs};
use crate::cli::Cli;
use crate::error::Problem;

/// What `Debug` and `Display` print instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// A secret value. Read it with [`Secret::expose`] where it is handed to a
/// client library or compared, and nowhere else.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: for the client that sends it, never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Reads a secret from `path`, given with `flag` (e.g. `--api.token-file
/// (PG2SINK_API_TOKEN_FILE)`, used in errors). One trailing `\n` or `\r\n`
/// is removed: secrets mounted by Docker or Kubernetes usually end with
/// one. A missing, unreadable, non-UTF-8 or empty file is an error naming
/// the flag and the path.
pub fn read_file(flag: &str, path: &Path) -> Result<Secret, Problem> {
    let hint = "give a readable file that holds the secret alone (one trailing newline is ignored)";
    let bytes = std::fs::read(path).map_err(|e| {
        Problem::new(format!("cannot read {flag} {}: {e}", path.display())).hint(hint)
    })?;
    // The error must not quote the content: it is the secret.
    let text = String::from_utf8(bytes).map_err(|_| {
        Problem::new(format!(
            "{flag} {}: the file is not UTF-8 text",
            path.display()
        ))
        .hint(hint)
    })?;
    let value = strip_newline(text);
    if value.is_empty() {
        return Err(
            Problem::new(format!("{flag} {}: the file is empty", path.display())).hint(hint),
        );
    }
    Ok(Secret(value))
}

/// Removes one trailing `\n` or `\r\n`, no more: a secret may end with
/// other white space on purpose.
fn strip_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// Fills every secret of the command that will run from its `-file` flag
/// where that one wins (see the module comment). `command` and `matches`
/// are the whole program's.
pub fn resolve(cli: &mut Cli, command: &Command, matches: &ArgMatches) -> Result<(), Problem> {
    use crate::cli::Command as C;
    let Some((name, sub_matches)) = matches.subcommand() else {
        return resolve_stream(&mut cli.stream, command, matches);
    };
    let Some(sub) = command.find_subcommand(name) else {
        return Ok(());
    };
    match &mut cli.command {
        Some(C::Stream(args) | C::Config(args)) => resolve_stream(args, sub, sub_matches),
        Some(C::Verify(args)) => resolve_stream(&mut args.stream, sub, sub_matches),
        Some(C::Status(args)) => resolve_source(&mut args.source, sub, sub_matches),
        Some(C::Teardown(args)) => resolve_source(&mut args.source, sub, sub_matches),
        Some(C::Import { command: import }) => {
            let Some((name, import_matches)) = sub_matches.subcommand() else {
                return Ok(());
            };
            let Some(import_command) = sub.find_subcommand(name) else {
                return Ok(());
            };
            let source = match import {
                ImportCommand::Status(source) => source,
                ImportCommand::Resync { source, .. } => source,
            };
            resolve_source(source, import_command, import_matches)
        }
        None => Ok(()),
    }
}

fn resolve_source(a: &mut SourceArgs, c: &Command, m: &ArgMatches) -> Result<(), Problem> {
    from_file(c, m, "url", "url-file", &mut a.url)
}

fn resolve_stream(a: &mut StreamArgs, c: &Command, m: &ArgMatches) -> Result<(), Problem> {
    resolve_source(&mut a.source, c, m)?;
    from_file(c, m, "api_token", "api.token-file", &mut a.api_token)?;
    let es = &mut a.elasticsearch;
    from_file(
        c,
        m,
        "password",
        "sink.elasticsearch.password-file",
        &mut es.password,
    )?;
    from_file(
        c,
        m,
        "api_key",
        "sink.elasticsearch.api-key-file",
        &mut es.api_key,
    )?;
    from_file(
        c,
        m,
        "postgres_url",
        "sink.postgres.url-file",
        &mut a.postgres.postgres_url,
    )?;
    let kafka = &mut a.kafka;
    from_file(
        c,
        m,
        "sasl_password",
        "sink.kafka.sasl-password-file",
        &mut kafka.sasl_password,
    )?;
    from_file(
        c,
        m,
        "schema_registry_url",
        "sink.kafka.schema-registry-url-file",
        &mut kafka.schema_registry_url,
    )?;
    let nats = &mut a.nats;
    from_file(
        c,
        m,
        "nats-password",
        "sink.nats.password-file",
        &mut nats.password,
    )?;
    from_file(c, m, "nats-token", "sink.nats.token-file", &mut nats.token)
}

/// Where a setting came from, by precedence: a flag beats the environment,
/// which beats the configuration file (secrets have no built-in default,
/// so a default is the file's).
fn level(source: Option<ValueSource>) -> Option<(u8, &'static str)> {
    match source? {
        ValueSource::CommandLine => Some((3, "given as flags")),
        ValueSource::EnvVariable => Some((2, "set in the environment")),
        ValueSource::DefaultValue => Some((1, "set in the configuration file")),
        _ => Some((0, "set")),
    }
}

/// How a flag is named in messages: `--NAME (PG2SINK_NAME)`.
fn flag_name(command: &Command, id: &str) -> String {
    let Some(arg) = command.get_arguments().find(|a| a.get_id() == id) else {
        return id.to_string();
    };
    let long = arg.get_long().unwrap_or(id);
    match arg.get_env() {
        Some(env) => format!("--{long} ({})", env.to_string_lossy()),
        None => format!("--{long}"),
    }
}

/// Sets `slot` from the file named by the argument `file_id` when that
/// file is given and the value (argument `value_id`) does not beat it.
fn from_file(
    command: &Command,
    matches: &ArgMatches,
    value_id: &str,
    file_id: &str,
    slot: &mut Option<Secret>,
) -> Result<(), Problem> {
    let Some((file_level, both)) = level(matches.value_source(file_id)) else {
        return Ok(());
    };
    let Some(path) = matches
        .try_get_one::<PathBuf>(file_id)
        .ok()
        .flatten()
        .cloned()
    else {
        return Ok(());
    };
    let file_flag = flag_name(command, file_id);
    match level(matches.value_source(value_id)) {
        Some((value_level, _)) if value_level > file_level => return Ok(()),
        Some((value_level, _)) if value_level == file_level => {
            let value_flag = flag_name(command, value_id);
            return Err(Problem::new(format!(
                "{value_flag} and {file_flag} are both {both}; give the secret one way"
            ))
            .hint(format!(
                "remove {value_flag}, or remove {file_flag} if the value itself is to be used"
            )));
        }
        _ => {}
    }
    *slot = Some(read_file(&file_flag, &path)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<redacted>)");
        assert_eq!(format!("{s:#?} {s:>20}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
        assert!(!s.is_empty() && Secret::default().is_empty());
        assert_eq!(Secret::new(String::from("hunter2")), s);
    }

    fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn one_trailing_newline_is_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let read = |content: &[u8]| {
            read_file("--x-file", &write(dir.path(), "s", content))
                .unwrap()
                .expose()
                .to_string()
        };
        assert_eq!(read(b"abc"), "abc");
        assert_eq!(read(b"abc\n"), "abc");
        assert_eq!(read(b"abc\r\n"), "abc");
        assert_eq!(read(b"abc\n\n"), "abc\n");
        assert_eq!(read(b"a b \t"), "a b \t");
        assert_eq!(read(b"line1\nline2\n"), "line1\nline2");
    }

    #[test]
    fn empty_missing_and_binary_files_are_errors_naming_flag_and_path() {
        let dir = tempfile::tempdir().unwrap();
        for content in [&b""[..], b"\n", b"\r\n"] {
            let path = write(dir.path(), "empty", content);
            let err = read_file("--api.token-file", &path)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--api.token-file"), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains("empty"), "{err}");
        }
        let missing = dir.path().join("missing");
        let err = read_file("--url-file (PG2SINK_URL_FILE)", &missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--url-file (PG2SINK_URL_FILE)"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let path = write(dir.path(), "binary", b"secret\xff\xfe");
        let err = read_file("--x-file", &path).unwrap_err().to_string();
        assert!(
            err.contains("not UTF-8") && !err.contains("secret\u{fffd}"),
            "{err}"
        );
        // A directory cannot be read either.
        let err = read_file("--x-file", dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot read --x-file"), "{err}");
    }

    fn parse(args: &[&str]) -> Result<Cli, Problem> {
        let command = Cli::command();
        let matches = command.clone().try_get_matches_from(args).unwrap();
        let mut cli = Cli::from_arg_matches(&matches).unwrap();
        resolve(&mut cli, &command, &matches)?;
        Ok(cli)
    }

    fn stream_args(cli: &Cli) -> &StreamArgs {
        match &cli.command {
            Some(crate::cli::Command::Stream(a) | crate::cli::Command::Config(a)) => a,
            None => &cli.stream,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_secret_is_read_from_its_file_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = write(dir.path(), name, format!("{name}-value\n").as_bytes());
            path.display().to_string()
        };
        let flags = [
            ("url-file", "url"),
            ("api.token-file", "token"),
            ("sink.elasticsearch.password-file", "es-password"),
            ("sink.elasticsearch.api-key-file", "es-key"),
            ("sink.postgres.url-file", "pg-url"),
            ("sink.kafka.sasl-password-file", "sasl"),
            ("sink.kafka.schema-registry-url-file", "registry"),
            ("sink.nats.password-file", "nats-password"),
            ("sink.nats.token-file", "nats-token"),
        ];
        for command in [
            &["pg2sink"][..],
            &["pg2sink", "stream"],
            &["pg2sink", "config"],
        ] {
            let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
            for (flag, name) in flags {
                args.push(format!("--{flag}={}", file(name)));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let cli = parse(&args).unwrap();
            let a = stream_args(&cli);
            let got = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
            assert_eq!(got(&a.source.url).as_deref(), Some("url-value"));
            assert_eq!(got(&a.api_token).as_deref(), Some("token-value"));
            assert_eq!(
                got(&a.elasticsearch.password).as_deref(),
                Some("es-password-value")
            );
            assert_eq!(
                got(&a.elasticsearch.api_key).as_deref(),
                Some("es-key-value")
            );
            assert_eq!(
                got(&a.postgres.postgres_url).as_deref(),
                Some("pg-url-value")
            );
            assert_eq!(got(&a.kafka.sasl_password).as_deref(), Some("sasl-value"));
            assert_eq!(
                got(&a.kafka.schema_registry_url).as_deref(),
                Some("registry-value")
            );
            assert_eq!(
                got(&a.nats.password).as_deref(),
                Some("nats-password-value")
            );
            assert_eq!(got(&a.nats.token).as_deref(), Some("nats-token-value"));
            let debug = format!("{cli:?}");
            assert!(!debug.contains("-value"), "{debug}");
        }
        // The other commands read the connection URL's file.
        let url = format!("--url-file={}", file("url"));
        for command in [
            &["pg2sink", "status", &url][..],
            &["pg2sink", "teardown", &url],
            &["pg2sink", "verify", &url],
            &["pg2sink", "import", "status", &url],
            &["pg2sink", "import", "resync", "public.t", &url],
        ] {
            let cli = parse(command).unwrap();
            use crate::cli::Command as C;
            let source = match &cli.command {
                Some(C::Status(a)) => &a.source,
                Some(C::Teardown(a)) => &a.source,
                Some(C::Verify(a)) => &a.stream.source,
                Some(C::Import {
                    command: ImportCommand::Status(s) | ImportCommand::Resync { source: s, .. },
                }) => s,
                other => panic!("{other:?}"),
            };
            assert_eq!(
                source.url.as_ref().map(Secret::expose),
                Some("url-value"),
                "{command:?}"
            );
        }
    }

    #[test]
    fn a_value_and_its_file_at_the_same_level_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "token", b"from-file\n");
        let file_flag = format!("--api.token-file={}", path.display());
        let err = parse(&["pg2sink", "--api.token=x", &file_flag])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--api.token (PG2SINK_API_TOKEN) and --api.token-file (PG2SINK_API_TOKEN_FILE) are both given as flags"),
            "{err}"
        );
        assert!(!err.contains("from-file") && !err.contains("=x"), "{err}");
        // A flag beats the other's environment variable (clap's precedence),
        // whichever of the two it is; tested through the level rule.
        assert!(level(Some(ValueSource::CommandLine)) > level(Some(ValueSource::EnvVariable)));
        assert!(level(Some(ValueSource::EnvVariable)) > level(Some(ValueSource::DefaultValue)));
        // A missing file named by a flag: the flag and the path, no panic.
        let missing = dir.path().join("nope");
        let err = parse(&[
            "pg2sink",
            "stream",
            &format!("--sink.nats.token-file={}", missing.display()),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--sink.nats.token-file (PG2SINK_SINK_NATS_TOKEN_FILE)")
                && err.contains(&missing.display().to_string()),
            "{err}"
        );
        // Without a file flag, the value stays as given.
        let cli = parse(&["pg2sink", "--api.token=given"]).unwrap();
        assert_eq!(
            cli.stream.api_token.as_ref().map(Secret::expose),
            Some("given")
        );
    }
}
