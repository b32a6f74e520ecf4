//! The `--config` file: the router's settings as TOML, one table per group of flags, each key a
//! flag's name with underscores (hyphens are accepted too):
//!
//! ```toml
//! [server]
//! port = 8080
//! [backends]
//! backends = "models.toml"
//! [cache]
//! cache_ttl_secs = 600
//! [limits]
//! rate_limit_rps = 5.0
//! trusted_proxies = ["10.201.8.250"]
//! [logging]
//! log_prompts = false
//! ```
//!
//! The file's values become flags appended to the command line, but only for settings that the
//! command line and the environment leave unset, so those keep their precedence. An unknown table
//! or key, or a key under the wrong table, is an error that names it.
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use std::ffi::OsString;
use std::path::Path;

/// The file's tables and the `--help` heading of the flags each holds.
pub const SECTIONS: &[(&str, &str)] = &[
    ("server", "Server"),
    ("backends", "Backends"),
    ("routing", "Routing"),
    ("redis", "Redis"),
    ("cache", "Cache"),
    ("limits", "Rate limits"),
    ("access", "Access"),
    ("logging", "Logging"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the config file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The flags the file at `path` adds to a command line already parsed into `given`.
pub fn flags_from(path: &Path, cmd: &Command, given: &ArgMatches) -> Result<Vec<OsString>, ConfigFileError> {
    let p = path.display().to_string();
    let invalid = |message: String| ConfigFileError::Invalid { path: p.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io { path: p.clone(), source })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let mut flags = Vec::new();
    for (section, values) in &table {
        let Some(&(_, heading)) = SECTIONS.iter().find(|(s, _)| s == section) else {
            let known: Vec<&str> = SECTIONS.iter().map(|(s, _)| *s).collect();
            return Err(invalid(format!("unknown table [{section}]; the tables are {}", known.join(", "))));
        };
        let toml::Value::Table(values) = values else {
            return Err(invalid(format!("{section} must be a table ([{section}])")));
        };
        for (key, value) in values {
            let id = key.replace('-', "_");
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id().as_str() == id && a.get_help_heading() == Some(heading))
                .ok_or_else(|| invalid(format!("[{section}] has no setting {key:?}")))?;
            if matches!(given.value_source(&id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                continue;
            }
            let long = arg.get_long().expect("every router setting has a long flag");
            let what = format!("[{section}] {key}");
            match (arg.get_action(), value) {
                (ArgAction::SetTrue, toml::Value::Boolean(b)) => {
                    if *b {
                        flags.push(format!("--{long}").into());
                    }
                }
                (ArgAction::SetTrue, _) => return Err(invalid(format!("{what} must be true or false"))),
                (_, toml::Value::Array(items)) => {
                    for item in items {
                        flags.push(format!("--{long}={}", scalar(item, &what).map_err(&invalid)?).into());
                    }
                }
                (_, v) => flags.push(format!("--{long}={}", scalar(v, &what).map_err(&invalid)?).into()),
            }
        }
    }
    Ok(flags)
}

/// A TOML value as a flag's value.
fn scalar(v: &toml::Value, what: &str) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(format!("{what} must be a string, a number or a list of them")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::CommandFactory;

    #[test]
    fn every_setting_belongs_to_a_table() {
        for a in Config::command().get_arguments() {
            if ["help", "version", "config_file"].contains(&a.get_id().as_str()) {
                continue;
            }
            let h = a.get_help_heading();
            assert!(SECTIONS.iter().any(|(_, heading)| Some(*heading) == h), "{} has heading {h:?}", a.get_id());
        }
    }

    #[test]
    fn the_file_fills_what_flags_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("router.toml");
        std::fs::write(
            &p,
            "[server]\nport = 9\nmax-prompt-chars = 100\n[cache]\ncache_ttl_secs = 5\nshared_cache = true\n\
             [limits]\nrate_limit_rps = 2.5\ntrusted_proxies = [\"10.0.0.1\", \"10.1.0.0/16\"]\n\
             [routing]\npolicy = \"latency\"\n[logging]\nlog_prompts = false\n",
        )
        .unwrap();
        let arg = p.to_str().unwrap();
        let c = Config::load_from(["router", "--config", arg, "--port", "7"]).unwrap();
        assert_eq!(c.server.port, 7, "a flag wins over the file");
        assert_eq!(c.server.max_prompt_chars, 100);
        assert_eq!(c.cache.cache_ttl_secs, 5);
        assert!(c.cache.shared_cache);
        assert_eq!(c.limits.rate_limit_rps, 2.5);
        assert_eq!(c.limits.trusted_proxies.len(), 2);
        assert_eq!(c.routing.policy, crate::config::PolicyKind::Latency);
        assert!(!c.logging.log_prompts);
        // Untouched settings keep their defaults.
        assert_eq!(c.backends.health_interval_ms, Config::defaults().backends.health_interval_ms);
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("router.toml");
        std::fs::write(&p, "[logging]\nresponse_log_max_bytes = 100\nresponse_log_no_text = true\n").unwrap();
        // No other test reads this variable.
        std::env::set_var("RESPONSE_LOG_MAX_BYTES", "200");
        let c = Config::load_from(["router", "--config", p.to_str().unwrap()]);
        std::env::remove_var("RESPONSE_LOG_MAX_BYTES");
        let c = c.unwrap();
        assert_eq!(c.logging.response_log_max_bytes, 200);
        assert!(c.logging.response_log_no_text, "the file still gives what the environment does not");
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("router.toml");
        for (text, needle) in [
            ("[cache]\ncache_ttl = 5\n", "no setting \"cache_ttl\""),
            ("[server]\ncache_ttl_secs = 5\n", "[server] has no setting"),
            ("[nope]\nx = 1\n", "unknown table [nope]"),
            ("port = 9\n", "unknown table [port]"),
            ("[logging]\nlog_prompts = \"yes\"\n", "must be true or false"),
            ("[server\n", "invalid config file"),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = Config::load_from(["router", "--config", p.to_str().unwrap()]).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let err = Config::load_from(["router", "--config", "/nonexistent/router.toml"]).unwrap_err().to_string();
        assert!(err.contains("cannot read the config file"), "{err}");
    }
}
