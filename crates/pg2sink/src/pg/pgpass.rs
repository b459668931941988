//! libpq's password file: when no password is given, the first line of
//! `passfile` / `PGPASSFILE` / `~/.pgpass` whose
//! `hostname:port:database:username` matches the connection supplies it.
//! Same matching as libpq (`*` matches a whole field, `\` escapes `:` and
//! `\`, `#` starts a comment line); a file that is not a plain file or that
//! group or others may access is ignored with a warning. The parser never
//! panics, whatever the file holds.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The user's home directory as libpq finds it: `$HOME` if set and not
/// empty, else the home field of the process's passwd entry.
pub(crate) fn home_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(home_from_passwd)
}

/// The home field of the process's uid in /etc/passwd.
fn home_from_passwd() -> Option<PathBuf> {
    let uid = fs::metadata("/proc/self").ok()?.uid();
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let entry_uid: u32 = fields.get(2)?.parse().ok()?;
        let home = fields.get(5)?;
        (entry_uid == uid && !home.is_empty()).then(|| PathBuf::from(home))
    })
}

/// What a password-file line is matched against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lookup<'a> {
    /// `localhost` for the default socket directory, else the host (or
    /// socket directory) as given.
    pub host: &'a str,
    pub port: &'a str,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// The password for `lookup` from the file at `path`, or `None` when the
/// file does not exist, is unusable (warned about, as libpq does) or has no
/// matching line. Read at every connection attempt, as libpq does, so an
/// edited file takes effect on the next reconnect.
pub(crate) fn password_from_file(path: &Path, lookup: Lookup<'_>) -> Option<String> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) => {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::debug!(path = %path.display(), %error, "password file not readable");
            }
            return None;
        }
    };
    if !metadata.is_file() {
        tracing::warn!(
            path = %path.display(),
            "password file \"{}\" is not a plain file; ignoring it",
            path.display()
        );
        return None;
    }
    if metadata.mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) \
             or less; ignoring it (chmod 0600 it)",
            path.display()
        );
        return None;
    }
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "password file not readable");
            return None;
        }
    };
    let password = find_password(&text, lookup)?;
    match String::from_utf8(password) {
        Ok(password) => {
            tracing::debug!(path = %path.display(), "using the password from the password file");
            Some(password)
        }
        Err(_) => {
            tracing::warn!(
                path = %path.display(),
                "the matching line of password file \"{}\" holds a password that is not UTF-8; ignoring it",
                path.display()
            );
            None
        }
    }
}

/// The password of the first line of a password file that matches
/// `lookup` (bytes, de-escaped), as libpq's `passwordFromFile`.
pub(crate) fn find_password(text: &[u8], lookup: Lookup<'_>) -> Option<Vec<u8>> {
    text.split(|byte| *byte == b'\n').find_map(|line| {
        if line.first() == Some(&b'#') {
            return None;
        }
        let mut end = line.len();
        while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        let line = &line[..end];
        if line.is_empty() {
            return None;
        }
        let rest = match_field(line, lookup.host)?;
        let rest = match_field(rest, lookup.port)?;
        let rest = match_field(rest, lookup.dbname)?;
        let rest = match_field(rest, lookup.user)?;
        Some(unescape_password(rest))
    })
}

/// Whether `line` starts with a field equal to `token` (or `*`) followed by
/// `:`; returns what follows the `:`.
fn match_field<'a>(line: &'a [u8], token: &str) -> Option<&'a [u8]> {
    if let Some(rest) = line.strip_prefix(b"*:") {
        return Some(rest);
    }
    let token = token.as_bytes();
    let mut matched = 0;
    let mut i = 0;
    while i < line.len() {
        let mut byte = line[i];
        let mut escaped = false;
        if byte == b'\\' && i + 1 < line.len() {
            i += 1;
            byte = line[i];
            escaped = true;
        }
        if byte == b':' && !escaped {
            return (matched == token.len()).then(|| &line[i + 1..]);
        }
        if token.get(matched) != Some(&byte) {
            return None;
        }
        matched += 1;
        i += 1;
    }
    // The line ended inside the field: no `:`, no match.
    None
}

/// The password field: up to the first unescaped `:` (or the end), with
/// `\x` read as `x`.
fn unescape_password(field: &[u8]) -> Vec<u8> {
    let mut password = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let mut byte = field[i];
        if byte == b':' {
            break;
        }
        if byte == b'\\' && i + 1 < field.len() {
            i += 1;
            byte = field[i];
        }
        password.push(byte);
        i += 1;
    }
    password
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const LOOKUP: Lookup<'static> = Lookup {
        host: "db.example",
        port: "5432",
        dbname: "shop",
        user: "bob",
    };

    fn find(text: &str, lookup: Lookup<'_>) -> Option<String> {
        find_password(text.as_bytes(), lookup).map(|p| String::from_utf8(p).unwrap())
    }

    #[test]
    fn first_matching_line_wins_with_wildcards() {
        let text = "\
# a comment: db.example:5432:shop:bob:commented
other:5432:shop:bob:wrong-host
db.example:5433:shop:bob:wrong-port

db.example:5432:*:bob:first
*:*:*:*:catch-all
";
        assert_eq!(find(text, LOOKUP).as_deref(), Some("first"));
        let elsewhere = Lookup {
            host: "elsewhere",
            ..LOOKUP
        };
        assert_eq!(find(text, elsewhere).as_deref(), Some("catch-all"));
        assert_eq!(find("", LOOKUP), None);
        assert_eq!(find("#only\n\n", LOOKUP), None);
    }

    #[test]
    fn escapes_and_line_endings() {
        let lookup = Lookup {
            host: "h:1",
            port: "5432",
            dbname: "d\\b",
            user: "*",
        };
        // `\:` and `\\` in fields; a literal `*` user written `\*`.
        let text = "h\\:1:5432:d\\\\b:\\*:p\\:w\\\\d:ignored after colon\r\n";
        assert_eq!(find(text, lookup).as_deref(), Some("p:w\\d"));
        // `*` only as a whole field: `*x` is literal.
        assert_eq!(find("*x:5432:shop:bob:pw", LOOKUP), None);
        // A trailing backslash is kept as is.
        assert_eq!(
            find("db.example:5432:shop:bob:pw\\", LOOKUP).as_deref(),
            Some("pw\\")
        );
        // An empty password is a password.
        assert_eq!(
            find("db.example:5432:shop:bob:", LOOKUP).as_deref(),
            Some("")
        );
    }

    #[test]
    fn short_or_broken_lines_do_not_match() {
        for text in [
            "db.example:5432:shop:bob",
            "db.example:5432:shop",
            "db.example",
            ":::",
            "\\",
            "db.example:5432:shop:bo",
            "db.example:5432:shop:bobby:pw",
            "db.example\\",
        ] {
            assert_eq!(find(text, LOOKUP), None, "{text:?}");
        }
        // A field that is a prefix of the token does not match either.
        assert_eq!(find("db:5432:shop:bob:pw", LOOKUP), None);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let alphabet = b"*:\\#\r\nab5432shopbob";
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i % 56)) as usize + i) % alphabet.len()])
                .collect();
            let _ = find_password(&bytes, LOOKUP);
            let _ = find_password(
                &bytes,
                Lookup {
                    host: "",
                    port: "",
                    dbname: "",
                    user: "",
                },
            );
        }
        let _ = find_password(&[0xff, 0xfe, b':', 0], LOOKUP);
    }

    #[test]
    fn file_permissions_and_kind_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "db.example:5432:shop:bob:from-file\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            password_from_file(&path, LOOKUP).as_deref(),
            Some("from-file")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            password_from_file(&path, LOOKUP).as_deref(),
            Some("from-file")
        );
        for mode in [0o640, 0o604, 0o660, 0o644, 0o610] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(password_from_file(&path, LOOKUP), None, "{mode:o}");
        }
        assert_eq!(password_from_file(dir.path(), LOOKUP), None);
        assert_eq!(password_from_file(&dir.path().join("absent"), LOOKUP), None);
    }

    #[test]
    fn home_from_the_environment_or_passwd() {
        let env = |name: &str| (name == "HOME").then(|| "/home/x".to_owned());
        assert_eq!(home_dir(&env), Some(PathBuf::from("/home/x")));
        let empty = |name: &str| (name == "HOME").then(String::new);
        // Whoever runs the tests has a passwd entry with a home on any sane machine.
        assert!(home_dir(&empty).is_some());
        assert!(home_dir(&|_| None).is_some());
    }
}
