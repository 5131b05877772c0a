//! The rule every daemon setting follows, and the checks that hold each binary to it.
//!
//! A setting named `some-key` is the TOML key `some-key`, the flag `--some-key` and the
//! variable `PREFIX_SOME_KEY` (`TBIRD_`, `SNOWFLAKE_`); flags win over variables, which win
//! over the file. A binary lists the few exceptions with the reason, and its tests call
//! [`coverage_problems`], which reads the keys from the config struct itself
//! ([`keys`]), so a key added later is checked without touching the test.

use serde::{
    Deserialize,
    de::{self, Visitor},
};

/// Returns the keys of config struct `T`, as its `Deserialize` implementation names them
/// (after `rename_all`), in declaration order.
pub fn keys<T: for<'de> Deserialize<'de>>() -> Vec<&'static str> {
    let mut keys = Vec::new();
    // The derived implementation hands its field names to `deserialize_struct`; this
    // deserializer keeps them and stops there with an error.
    let _ = T::deserialize(FieldNames(&mut keys));
    keys
}

/// A deserializer that records the field names of the struct asked of it.
struct FieldNames<'a>(&'a mut Vec<&'static str>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Self
    }
}

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.0.extend_from_slice(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Returns the variable of setting `key` under `prefix`: `TBIRD` and `job-workers` give
/// `TBIRD_JOB_WORKERS`.
pub fn variable(prefix: &str, key: &str) -> String {
    format!("{prefix}_{}", key.replace('-', "_").to_uppercase())
}

/// Returns what breaks the rule in `command` (a daemon's subcommand) against the config
/// keys `keys`: a key without its flag, a flag without its variable or with another one, a
/// flag that is no key. `exceptions` names settings that are deliberately only a flag (or
/// only a key); each must still exist on one side, so a stale exception is reported too.
pub fn coverage_problems(
    command: &clap::Command,
    keys: &[&str],
    prefix: &str,
    exceptions: &[&str],
) -> Vec<String> {
    let mut problems = Vec::new();
    let flags: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some() && !arg.is_hide_set())
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .collect();
    for &key in keys {
        if exceptions.contains(&key) {
            continue;
        }
        let Some(flag) = flags.iter().find(|f| f.get_long() == Some(key)) else {
            problems.push(format!("key {key} has no flag --{key}"));
            continue;
        };
        let expected = variable(prefix, key);
        match flag.get_env().and_then(|env| env.to_str()) {
            Some(env) if env == expected => {}
            Some(env) => problems.push(format!("--{key} reads {env}, not {expected}")),
            None => problems.push(format!("--{key} has no variable {expected}")),
        }
    }
    for flag in &flags {
        let long = flag.get_long().unwrap_or_default();
        if !keys.contains(&long) && !exceptions.contains(&long) {
            problems.push(format!("flag --{long} has no config key"));
        }
        if exceptions.contains(&long) && flag.get_env().is_none() {
            problems.push(format!("flag --{long} has no variable"));
        }
    }
    for exception in exceptions {
        if !keys.contains(exception) && !flags.iter().any(|f| f.get_long() == Some(*exception)) {
            problems.push(format!("exception {exception} is neither a key nor a flag"));
        }
    }
    problems
}

/// Returns every argument of `command` and its subcommands, as `path: arg`, that has no help
/// text (hidden ones and clap's own `--help`/`--version` aside).
pub fn undocumented_args(command: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    collect_undocumented(command, command.get_name(), &mut missing);
    missing
}

fn collect_undocumented(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let builtin = matches!(arg.get_id().as_str(), "help" | "version");
        if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
            missing.push(format!("{path}: {}", arg.get_id()));
        }
    }
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        collect_undocumented(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(default, rename_all = "kebab-case")]
    #[allow(dead_code)]
    #[derive(Default)]
    struct Example {
        listen: String,
        job_workers: usize,
        log_format: Option<String>,
    }

    #[test]
    fn keys_come_from_the_struct() {
        assert_eq!(keys::<Example>(), ["listen", "job-workers", "log-format"]);
        assert_eq!(variable("TBIRD", "job-workers"), "TBIRD_JOB_WORKERS");
    }

    #[test]
    fn missing_flags_variables_and_keys_are_reported() {
        let command = clap::Command::new("serve")
            .arg(
                clap::Arg::new("listen")
                    .long("listen")
                    .env("X_LISTEN")
                    .help("h"),
            )
            .arg(clap::Arg::new("job-workers").long("job-workers").help("h"))
            .arg(clap::Arg::new("extra").long("extra").env("X_EXTRA"))
            .arg(
                clap::Arg::new("config")
                    .long("config")
                    .env("X_CONFIG")
                    .help("h"),
            );
        let problems = coverage_problems(&command, &keys::<Example>(), "X", &["config"]);
        assert_eq!(
            problems,
            [
                "--job-workers has no variable X_JOB_WORKERS",
                "key log-format has no flag --log-format",
                "flag --extra has no config key",
            ]
        );
        assert_eq!(undocumented_args(&command), ["serve: extra"]);
    }
}
