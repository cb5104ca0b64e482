//! Log output of the `igpo` binary: `tracing` events to stderr, filtered by
//! `-q` / `-v` / `-vv` or, when set, `RUST_LOG` (an `EnvFilter`). Command
//! results go to stdout with `println!`, and the final error is one line the
//! CLI prints itself: neither passes through here.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The filter without `RUST_LOG`: the `igpo` crate at info (`-q`: warn,
/// `-v`: debug, `-vv`: trace), every dependency at warn.
pub(crate) fn default_directives(quiet: bool, verbose: u8) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "warn,igpo=info",
        (false, 1) => "warn,igpo=debug",
        (false, _) => "warn,igpo=trace",
    }
}

/// Installs the stderr subscriber once per process. `RUST_LOG`, when set
/// and not empty, replaces the flags' filter; a bad `RUST_LOG` falls back to
/// the flags with one warning.
pub(crate) fn init(quiet: bool, verbose: u8) {
    let flags = default_directives(quiet, verbose);
    let mut bad_env = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            bad_env = Some(format!("RUST_LOG={spec}: {e}; using the default levels"));
            EnvFilter::new(flags)
        }),
        _ => EnvFilter::new(flags),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    // `try_init`: a second call (tests calling `cli::main` twice) keeps the first.
    let installed = if verbose > 0 {
        builder
            .without_time()
            .with_target(true)
            .with_level(true)
            .try_init()
    } else {
        builder.event_format(Plain).try_init()
    };
    if let (Ok(()), Some(msg)) = (installed, bad_env) {
        tracing::warn!("{msg}");
    }
}

/// The default line: the message alone, as `eprintln!` printed it before;
/// warnings and errors prefixed `warning: ` / `error: `, and events of
/// other crates (enabled through `RUST_LOG`) name their target.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        match *meta.level() {
            Level::ERROR => write!(writer, "error: ")?,
            Level::WARN => write!(writer, "warning: ")?,
            Level::INFO => {}
            Level::DEBUG => write!(writer, "debug: ")?,
            Level::TRACE => write!(writer, "trace: ")?,
        }
        let target = meta.target();
        if target != "igpo" && !target.starts_with("igpo::") {
            write!(writer, "{target}: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_pick_the_levels() {
        assert_eq!(default_directives(false, 0), "warn,igpo=info");
        assert_eq!(default_directives(true, 0), "warn");
        assert_eq!(default_directives(false, 1), "warn,igpo=debug");
        assert_eq!(default_directives(false, 2), "warn,igpo=trace");
        assert_eq!(default_directives(false, 5), "warn,igpo=trace");
        for (q, v) in [(false, 0), (true, 0), (false, 1), (false, 2)] {
            EnvFilter::try_new(default_directives(q, v)).unwrap();
        }
    }
}
