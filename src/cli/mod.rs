//! Command line: `media-store <subcommand>`.
//!
//! Exit codes: 0 success, 1 problems found (by checking subcommands), 2 error.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

pub mod lifecycle;

use crate::app::AppState;
use crate::config::{Config, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "media-store",
    version,
    about = "Content-addressed media store daemon",
    after_help = "Exit codes: 0 success, 1 problems found, 2 error."
)]
pub struct Cli {
    /// TOML config file (every key also has a MEDIA_STORE_* environment variable).
    #[arg(long, global = true, env = "MEDIA_STORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data folder (blobs, staging, index); overrides the config.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP daemon.
    Serve {
        /// Address to listen on; overrides the config (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Print every configuration key: its environment variable, default
    /// (TOML) and whether a change applies live or needs a restart.
    ConfigKeys,
    /// Print the HTTP API's OpenAPI 3.1 description (what `GET /openapi.json`
    /// serves; `docs/openapi.json` is this output).
    Openapi,
    /// Apply the bundled MySQL migrations (media_files); idempotent.
    Migrate {
        /// MySQL URL (mysql://user:pass@host:port/db or ...?socket=/path); default: mysql.url.
        #[arg(long, value_name = "URL")]
        mysql: Option<String>,
    },
    /// MySQL mirror maintenance. --reconcile compares media_files with the index and
    /// repairs missing, extra and differing rows (exit 1 if --dry-run found any).
    MysqlSync {
        /// Compare the whole table with the index (required: the only action so far).
        #[arg(long, required = true)]
        reconcile: bool,
        /// Report the differences, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Adopt the files of the chat backend's own media_files rows: fetch each
    /// file_url (a path under --from-root, or http(s) on an --allow-host host),
    /// store it content-addressed under the same id and upload time, and make
    /// the row media-store's. Safe to re-run and to run while the daemon runs.
    /// Exit: 0 every row adopted (or none left), 1 some could not be, 2 error.
    Import {
        /// Folder that local file_url paths are read from (never outside it).
        #[arg(long, value_name = "DIR")]
        from_root: Option<PathBuf>,
        /// Host (or host:port) that http(s) file_urls may be fetched from; repeatable.
        #[arg(long = "allow-host", value_name = "HOST")]
        allow_hosts: Vec<String>,
        /// Check every row's source; store and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Longest time one http fetch may take.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
        fetch_timeout: std::time::Duration,
    },
    /// Apply retention, then delete zero-count blobs past the grace period,
    /// unknown files under blobs/ and stale staging files. Safe while the
    /// daemon runs. Exit: 0 done (or nothing to do), 1 --dry-run found
    /// garbage, 2 error.
    Gc(lifecycle::GcArgs),
    /// Verify every blob (size, BLAKE3) and every reference count; list
    /// orphans. Exit: 0 clean, 1 problems found (also when repaired), 2 error.
    #[command(visible_alias = "scrub")]
    Fsck(lifecycle::FsckArgs),
    /// Make archive.root this store's archive root on purpose: writes its
    /// store-id marker. The daemon, gc and fsck refuse an archive root
    /// without it (an unmounted disk's empty mount point, or another store's
    /// disk).
    InitArchive {
        /// Also accept a root that already holds files (an archive written
        /// before store ids existed).
        #[arg(long)]
        adopt_existing: bool,
    },
    /// Copy every blob to the other backend (`s3`: the bucket of [store.s3];
    /// `local`: the data folder), verifying each; resumable after a kill.
    /// With the daemon stopped, the switch is recorded once all are there;
    /// then start the daemon with store.backend set to the target.
    /// Exit: 0 done, 1 some blobs could not be copied (or not switched), 2 error.
    MigrateStore {
        /// The backend to move the blobs to.
        #[arg(long, value_parser = ["s3", "local"])]
        to: String,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a signed download URL for a media id as JSON {"url", "expires_at"},
    /// offline, with the config's active signing key.
    SignUrl {
        /// Media id.
        id: i64,
        /// Lifetime in seconds (default: signing.default_ttl_secs; at most signing.max_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
        /// Variant to serve.
        #[arg(long, default_value = "original")]
        variant: String,
        /// Make browsers download rather than display the file.
        #[arg(long)]
        attachment: bool,
    },
}

impl Cli {
    pub fn load_config(&self, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
        let overrides = Overrides {
            data_dir: self.data_dir.clone(),
            listen,
        };
        Ok(Config::load(
            self.config.as_deref(),
            &Config::process_env(),
            &overrides,
        )?)
    }
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Serve { listen } => {
            let config = cli.load_config(*listen)?;
            crate::telemetry::init_tracing(&config.log, config.log_format);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(&cli, *listen, config))?;
            Ok(0)
        }
        Command::Gc(args) => lifecycle::gc(&cli.load_config(None)?, args),
        Command::Fsck(args) => lifecycle::fsck(&cli.load_config(None)?, args),
        Command::SignUrl {
            id,
            ttl,
            variant,
            attachment,
        } => {
            let config = cli.load_config(None)?;
            let view = crate::app::sign_url_offline(&config, *id, *ttl, variant, *attachment)?;
            println!("{}", serde_json::to_string(&view)?);
            Ok(0)
        }
        Command::MigrateStore { to, json } => {
            let config = cli.load_config(None)?;
            crate::telemetry::init_tracing(&config.log, config.log_format);
            let to = match to.as_str() {
                "s3" => crate::store::Backend::S3,
                _ => crate::store::Backend::Local,
            };
            let summary = crate::app::migrate_store(&config, to, !*json)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "migrate-store {} -> {}: {} blobs, {} copied ({} bytes), {} already there, {} failed; switched: {}",
                    summary.from,
                    summary.to,
                    summary.blobs,
                    summary.copied,
                    summary.bytes_copied,
                    summary.already_there,
                    summary.failed.len(),
                    summary.switched
                );
                for f in &summary.failed {
                    println!("could not copy {f}");
                }
                if let Some(note) = &summary.note {
                    println!("{note}");
                }
            }
            Ok(if summary.switched { 0 } else { 1 })
        }
        Command::InitArchive { adopt_existing } => {
            let config = cli.load_config(None)?;
            println!("{}", crate::app::init_archive(&config, *adopt_existing)?);
            Ok(0)
        }
        Command::ConfigKeys => {
            // Tab-separated: key, environment variable, default (TOML), reload.
            for (path, env, default, reload) in Config::keys_described() {
                println!("{path}\t{env}\t{default}\t{reload}");
            }
            Ok(0)
        }
        Command::Openapi => {
            print!("{}", crate::http::openapi::spec_json());
            Ok(0)
        }
        Command::Import {
            from_root,
            allow_hosts,
            dry_run,
            json,
            fetch_timeout,
        } => {
            let config = cli.load_config(None)?;
            crate::telemetry::init_tracing(&config.log, config.log_format);
            let opts = crate::mirror::import::ImportOptions {
                from_root: from_root.clone(),
                allow_hosts: allow_hosts.clone(),
                dry_run: *dry_run,
                fetch_timeout: *fetch_timeout,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(crate::app::run_import(&config, &opts))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_import(&report);
            }
            Ok(if report.failed.is_empty() { 0 } else { 1 })
        }
        Command::Migrate { mysql } => {
            let mut config = cli.load_config(None)?;
            crate::telemetry::init_tracing(&config.log, config.log_format);
            if let Some(url) = mysql {
                config.mysql.url = url.clone();
                config.mysql.validate().map_err(anyhow::Error::msg)?;
            }
            crate::mirror::mysql::migrate_cli(&config.mysql)?;
            Ok(0)
        }
        Command::MysqlSync { dry_run, .. } => {
            let config = cli.load_config(None)?;
            crate::telemetry::init_tracing(&config.log, config.log_format);
            let (report, applied) = crate::mirror::reconcile::run_cli(
                &config.mysql,
                &config.data_dir,
                &config.public_base_url,
                *dry_run,
                &crate::clock::SystemClock,
            )?;
            println!(
                "reconcile: index_rows={} mysql_rows={} missing={} extra={} differing={} foreign={} conflicting={}",
                report.index_rows,
                report.mysql_rows,
                report.missing,
                report.extra,
                report.differing,
                report.foreign,
                report.conflicting
            );
            use crate::mirror::reconcile::Applied;
            match applied {
                Applied::DryRun => {
                    println!("dry run: nothing changed");
                    Ok(if report.differences() > 0 { 1 } else { 0 })
                }
                Applied::Repaired { rows } => {
                    println!("repaired: {rows} rows written to MySQL");
                    Ok(0)
                }
                Applied::QueuedForDaemon => {
                    println!(
                        "queued: {} repairs; the running daemon holds the mirror and will apply them",
                        report.differences()
                    );
                    Ok(0)
                }
            }
        }
    }
}

fn print_import(report: &crate::mirror::import::ImportReport) {
    for f in &report.failed {
        println!(
            "not adopted: id={} file_url={:?}: {}",
            f.id,
            f.file_url.as_deref().unwrap_or(""),
            f.reason
        );
    }
    println!(
        "import: rows={} adopted={} deduplicated={} resumed={} failed={}",
        report.rows,
        report.adopted.len(),
        report.deduplicated,
        report.resumed.len(),
        report.failed.len()
    );
    match (report.dry_run, report.mirror) {
        (true, _) => println!("dry run: nothing changed"),
        (false, "sent") => println!("mirror: adopted rows written to MySQL"),
        (false, "queued") => {
            println!("mirror: queued; the running daemon holds the mirror and will write them")
        }
        _ => {}
    }
}

async fn serve(cli: &Cli, listen_flag: Option<SocketAddr>, config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let (config_socket, socket_mode, socket_group) = (
        config.serve.unix_socket.clone(),
        config.serve.unix_socket_mode,
        config.serve.unix_socket_group.clone(),
    );
    let socket_group = (!socket_group.is_empty()).then_some(socket_group);
    let data_dir = config.data_dir.clone();
    raise_open_files_limit(config.limits.max_connections);
    let (state, report) = AppState::open(config)?;
    if let Some(path) = &report.generated_token {
        println!("generated an API token; it is stored in {}", path.display());
    }
    if report.stale_staging_files_removed > 0 {
        tracing::warn!(
            count = report.stale_staging_files_removed,
            "removed staging files left by an earlier crash"
        );
    }
    // Kept alive for as long as we serve.
    let _watcher = match &cli.config {
        Some(path) => {
            let (file, data_dir) = (path.clone(), cli.data_dir.clone());
            let load = move || -> anyhow::Result<Config> {
                let overrides = Overrides {
                    data_dir: data_dir.clone(),
                    listen: listen_flag,
                };
                Ok(Config::load(
                    Some(&file),
                    &Config::process_env(),
                    &overrides,
                )?)
            };
            Some(crate::app::reload::watch_config(path, state.clone(), load)?)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    // The socket file is removed again when this function returns (after the drain).
    let (unix, _socket_file) = if config_socket.as_os_str().is_empty() {
        (None, None)
    } else {
        let (unix, file) =
            crate::http::server::bind_unix(&config_socket, socket_mode, socket_group.as_deref())
                .with_context(|| format!("cannot listen on {}", config_socket.display()))?;
        // Not "listening on ...": scripts take the first such line as the TCP address.
        println!("also serving on unix:{}", file.path().display());
        (Some(unix), Some(file))
    };
    // One machine-readable line: tests and scripts read the bound address from it.
    // Printed last: once it is out, every listener accepts.
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "media-store serving");
    let gc_task = crate::app::spawn_background_gc(state.clone()).abort_handle();
    let signal = crate::http::server::termination_signal();
    // systemd Type=notify: ready once bound; STOPPING when the drain starts.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let shutdown = async {
        signal.await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    };
    crate::http::server::run_on(listener, unix, state.http().clone(), shutdown).await?;
    gc_task.abort();
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Each connection holds a file descriptor: lift the soft limit (1024 under
/// systemd's default) towards the hard one so that `limits.max_connections`
/// is reached before `EMFILE`.
fn raise_open_files_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // Blobs, the index, the archive and staging files need descriptors too.
    let wanted = (max_connections as u64).saturating_add(1024).min(hard);
    if wanted > soft && setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).is_err() {
        tracing::warn!(soft, wanted, "cannot raise the open files limit");
    }
    if wanted < (max_connections as u64).saturating_add(64) {
        tracing::warn!(
            limit = wanted,
            max_connections,
            "the open files limit is below limits.max_connections; raise LimitNOFILE"
        );
    }
}
