//! Quoting for SQL text built by pg2sink, the one place for it: an
//! identifier always in double quotes (so case and any character survive,
//! and no name can end the quoting early), a literal in single quotes.
//! Both assume `standard_conforming_strings` on, Postgres's default since
//! 9.1, so a backslash is an ordinary character.

/// `"name"`, with `"` doubled (`my "t"` → `"my ""t"""`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with `'` doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("MiXeD"), "\"MiXeD\"");
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "'a\\b'");
    }
}
