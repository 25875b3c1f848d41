//! The `gc` and `fsck` subcommands: flags, output and exit codes. The work is
//! in `lifecycle::{gc, fsck}`, wired by `app`.

use std::time::Duration;

use clap::Args;

use crate::Config;
use crate::clock::Clock as _;
use crate::lifecycle::fsck::{self, FsckOptions};
use crate::lifecycle::gc::GcOptions;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Override gc.grace (e.g. "10min"; "0s" deletes every zero-count blob now).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub grace: Option<Duration>,
    /// Skip the retention rules (orphan_ttl, max_age_days); collect blobs only.
    #[arg(long)]
    pub no_retention: bool,
}

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Fix counts, quarantine corrupt blobs, mark affected media. Deletes nothing.
    #[arg(long)]
    pub repair: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Exit codes shared by both commands.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FOUND: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

pub fn gc(config: &Config, args: &GcArgs) -> anyhow::Result<i32> {
    crate::telemetry::init_tracing(&config.log, config.log_format);
    let now = crate::clock::SystemClock.now_ms();
    let mut opts = GcOptions::from_config(&config.gc, &config.archive, now);
    opts.dry_run = args.dry_run;
    opts.progress = !args.json;
    opts.retention = !args.no_retention;
    if let Some(grace) = args.grace {
        opts.grace = grace;
    }
    let run = crate::app::run_gc(config, &opts);
    // For the daemon's /metrics (best effort: the run's own outcome stands).
    if let Err(e) = crate::app::record_gc_run(config, run.as_ref().map_err(|_| ()), now) {
        tracing::warn!(
            error = format!("{e:#}"),
            "cannot record the run for /metrics"
        );
    }
    let summary = run?;
    emit(if args.json {
        serde_json::to_string_pretty(&summary)? + "\n"
    } else {
        summary.to_text()
    })?;
    Ok(if !summary.errors.is_empty() {
        EXIT_ERROR
    } else if args.dry_run && summary.found_garbage() {
        EXIT_FOUND
    } else {
        EXIT_OK
    })
}

pub fn fsck(config: &Config, args: &FsckArgs) -> anyhow::Result<i32> {
    crate::telemetry::init_tracing(&config.log, config.log_format);
    let (mut index, store) = crate::app::open_existing_store(config)?;
    let opts = FsckOptions {
        repair: args.repair,
        progress: !args.json,
        now_ms: crate::clock::SystemClock.now_ms(),
    };
    let run = fsck::run(&mut index, &store, &opts);
    // For the daemon's /metrics (best effort: the run's own outcome stands).
    let now = crate::clock::SystemClock.now_ms();
    let recorded =
        crate::lifecycle::runs::record_fsck(&mut index, run.as_ref().map_err(|_| ()), now);
    if let Err(e) = recorded {
        tracing::warn!(
            error = format!("{e:#}"),
            "cannot record the run for /metrics"
        );
    }
    let summary = run?;
    emit(if args.json {
        serde_json::to_string_pretty(&summary)? + "\n"
    } else {
        summary.to_text()
    })?;
    Ok(if summary.problems() > 0 {
        EXIT_FOUND
    } else {
        EXIT_OK
    })
}

/// Writes the summary to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: String) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
