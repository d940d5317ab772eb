//! The daemon's and the monitors' own logs (their stderr is `daemon.log`
//! or `monitor.log`): `tracing` lines, levels from `RUST_LOG` (`info` by
//! default), with a timestamp, without colours.

/// Sets this process's log up; a second call does nothing.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
