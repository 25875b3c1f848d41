//! The real binary's one-shot commands (`gc`, `fsck`, `scrub`, ...).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{TOKEN, TestDaemon};

/// Runs the real binary with `args` on `data` and `config` (written beside
/// the data folder); returns (exit code, stdout, stderr).
pub fn run_cli(data: &Path, config: &str, args: &[&str]) -> (i32, String, String) {
    let cfg = data.with_extension("cli.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(TestDaemon::binary())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(&cfg)
        .env("MEDIA_STORE_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A command's `--json` output.
pub fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}
