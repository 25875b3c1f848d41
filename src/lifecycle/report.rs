//! Output helpers for the `gc` and `fsck` commands: a progress bar on a
//! terminal only.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr when it is a terminal; hidden otherwise (logs,
/// systemd journal, `--json` pipelines stay clean).
pub fn progress(len: u64, what: &str, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} ({eta})")
            .expect("is a bug: literal progress template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}
