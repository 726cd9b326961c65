//! SQL quoting, one function per dialect. PostgreSQL (with the default
//! `standard_conforming_strings = on`) treats a backslash in a string
//! literal as itself; MariaDB (without `NO_BACKSLASH_ESCAPES`) treats it as
//! an escape. Quoting one way for both made a PostgreSQL database named
//! with a backslash look absent (no safety snapshot was taken).

/// PostgreSQL.
pub mod pg {
    /// An identifier: `"…"` with `"` doubled.
    pub fn ident(s: &str) -> String {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
    /// A string literal: `'…'` with `'` doubled; backslashes are literal.
    pub fn lit(s: &str) -> String {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// MariaDB / MySQL.
pub mod my {
    /// An identifier: `` `…` `` with `` ` `` doubled.
    pub fn ident(s: &str) -> String {
        format!("`{}`", s.replace('`', "``"))
    }
    /// A string literal: `'…'` with `\` and `'` escaped (and NUL, which
    /// cannot appear otherwise).
    pub fn lit(s: &str) -> String {
        format!(
            "'{}'",
            s.replace('\\', "\\\\")
                .replace('\'', "''")
                .replace('\0', "\\0")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dialect_quotes_its_own_way() {
        assert_eq!(pg::lit(r"a\b'c"), r"'a\b''c'");
        assert_eq!(my::lit(r"a\b'c"), r"'a\\b''c'");
        assert_eq!(pg::ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(my::ident("a`b"), "`a``b`");
    }
}
