//! The one line a binary prints for an error that ends it: the error and its causes, each once.

use std::{error::Error, process::ExitCode};

/// Returns `err` and its chain of sources as `err: cause: cause`, each cause named once
/// ([`db::text::causes`]), with the secrets of every URL in it redacted
/// ([`db::text::redact`]).
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    db::text::redact(&db::text::causes(err)).into_owned()
}

/// Ends a binary's `main`: success, or `error: ` and the chain on stderr and status 1, never
/// a Debug dump with a backtrace.
pub fn exit<E: AsRef<dyn Error + Send + Sync + 'static>>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional source, as thiserror would derive it.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1
                .as_deref()
                .map(|source| source as &(dyn Error + 'static))
        }
    }

    fn chain(messages: &[&'static str]) -> Layer {
        let mut layers = messages.iter().rev();
        let innermost = Layer(layers.next().expect("a message"), None);
        layers.fold(innermost, |inner, message| {
            Layer(message, Some(Box::new(inner)))
        })
    }

    #[test]
    fn names_every_cause_in_order() {
        let err = chain(&["start the proxy", "open nameserver", "connection refused"]);
        assert_eq!(
            error_chain(&err),
            "start the proxy: open nameserver: connection refused"
        );
    }

    #[test]
    fn a_message_that_repeats_its_source_names_it_once() {
        let err = chain(&[
            "connect to 127.0.0.1:1",
            "transport error: tcp connect error",
            "tcp connect error",
        ]);
        assert_eq!(
            error_chain(&err),
            "connect to 127.0.0.1:1: transport error: tcp connect error"
        );
        // A message that merely ends in the same words, without `: `, is kept whole.
        let err = chain(&["shard not found", "found"]);
        assert_eq!(error_chain(&err), "shard not found: found");
    }

    #[test]
    fn redacts_passwords_in_urls() {
        let err = chain(&["open mysql://tbird:hunter2@db1/shards", "access denied"]);
        let text = error_chain(&err);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.ends_with(": access denied"), "{text}");
    }
}
