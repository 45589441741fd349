//! Reading `--config-file`: TOML into [`Settings`], with errors that name the file, the line
//! and the key.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::ConfigError;
use super::settings::Settings;

/// A parsed config file.
#[derive(Debug, Clone)]
pub(crate) struct ConfigFile {
    /// Defaults overlaid with what the file sets.
    pub(crate) settings: Settings,
    /// The file has a `[tls]` section (which `--dev` contradicts).
    pub(crate) sets_tls: bool,
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses a config file's text; `path` only labels errors.
    pub(crate) fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_error = |e: toml::de::Error| {
            let span = e.span().unwrap_or(0..0);
            let (line, column) = line_column(text, span.start);
            ConfigError::ParseFile {
                path: path.to_path_buf(),
                key: key_at(text, &span),
                line,
                column,
                message: e.message().trim_end().to_string(),
            }
        };
        let settings: Settings = toml::from_str(text).map_err(parse_error)?;
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        Ok(Self {
            settings,
            sets_tls: table.contains_key("tls"),
        })
    }
}

/// 1-based line and column of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted path of the key whose name or value covers `span` (toml's messages show the
/// offending line but not the section it is in).
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    find_key(doc.get_ref(), span.start, &mut path).then(|| path.join("."))
}

fn find_key(table: &DeTable<'_>, at: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        if let DeValue::Table(inner) = value.get_ref()
            && find_key(inner, at, path)
        {
            return true;
        }
        let covers = |r: Range<usize>| r.contains(&at);
        let is_table = matches!(value.get_ref(), DeValue::Table(_));
        if covers(key.span()) || (!is_table && covers(value.span())) {
            return true;
        }
        path.pop();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse(text, Path::new("/etc/derper.toml"))
    }

    #[test]
    fn unknown_key_is_named_with_its_section_and_file() {
        let err = parse("[listen]\naddr = \":8443\"\n\n[relay]\nqueue_dept = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/derper.toml"), "{err}");
        assert!(err.contains("`relay.queue_dept`"), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn unknown_section_is_named() {
        let err = parse("[relays]\nqueue_depth = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`relays`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse("[relay]\nqueue_depth = \"deep\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`relay.queue_depth`"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
        let err = parse("[relay]\nkeepalive = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`relay.keepalive`"), "{err}");
        let err = parse("[listen]\nstun_addrs = [\"127.0.0.1:3478\", \"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`listen.stun_addrs`"), "{err}");
        let err = parse("[limits]\naccept_connection_burst = -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`limits.accept_connection_burst`"), "{err}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = parse("[relay\n").unwrap_err().to_string();
        assert!(err.contains("/etc/derper.toml, line 1"), "{err}");
    }

    #[test]
    fn durations_parse_in_go_syntax() {
        let file = parse(
            "[relay]\nkeepalive = \"1m30s\"\nhandshake_timeout = \"2.5s\"\nwrite_timeout = \"0\"\n",
        )
        .unwrap();
        let relay = file.settings.relay;
        assert_eq!(relay.keepalive, std::time::Duration::from_secs(90));
        assert_eq!(
            relay.handshake_timeout,
            std::time::Duration::from_millis(2_500)
        );
        assert_eq!(relay.write_timeout, None);
        assert!(!file.sets_tls);
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap().settings, Settings::default());
        assert!(parse("[tls]\n").unwrap().sets_tls);
    }
}
