//! Telemetry: the tracing subscriber (text or JSON lines on stderr).

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Writes one line that is not a tracing event (an error that ends the command, a run
/// summary) on stderr: as a JSON object in JSON mode, so that mode emits only JSON lines.
pub fn line(format: LogFormat, level: &str, message: &str, extra: Option<serde_json::Value>) {
    match format {
        LogFormat::Text => eprintln!("{message}"),
        LogFormat::Json => {
            let mut obj = serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": level,
                "message": message,
            });
            if let (Some(serde_json::Value::Object(extra)), serde_json::Value::Object(m)) =
                (extra, &mut obj)
            {
                m.extend(extra);
            }
            eprintln!("{obj}");
        }
    }
}

/// Checks a `--log` value: comma-separated directives, each a level (`warn`) or
/// `target=level` (`sluice=debug`, `sluice::http=trace`). A bare word that is not a level is
/// refused: tracing would read it as a target name with every level on (`--log verbose`).
pub fn check_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |s: &str| LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    if filter.trim().is_empty() {
        return Err("empty; give a level: trace, debug, info, warn, error or off".into());
    }
    for d in filter.split(',') {
        let ok = match d.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(d),
        };
        if !ok {
            return Err(format!(
                "`{}` is not a level (trace, debug, info, warn, error, off) nor `target=level` (e.g. `sluice=debug`)",
                d.trim()
            ));
        }
    }
    EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive (`info`, `sluice=debug`).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests calling `cli::run` twice) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        // Spans (`recipe > cycle > record > step`) ride along on every line.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
