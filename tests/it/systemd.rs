//! The shipped systemd units verify, and the real binary speaks sd-notify.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const UNITS: &[&str] = &[
    "media-store.service",
    "media-store-gc.service",
    "media-store-gc.timer",
    "media-store-scrub.service",
    "media-store-scrub.timer",
];

#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    let which = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        which.is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: install the apt package `systemd` (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut paths = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(src.join(unit)).unwrap();
        // The units name the install path; verify checks that ExecStart is
        // executable, so point it at the binary under test.
        let text = text.replace("/usr/local/bin/media-store", TestDaemon::binary());
        if unit.ends_with(".service") {
            assert!(
                text.contains(TestDaemon::binary()),
                "{unit} has no ExecStart"
            );
        }
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown keys and bad values are only warnings: refuse those too.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| UNITS.iter().any(|u| l.contains(u)))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze warnings:\n{}",
        ours.join("\n")
    );
    let service = std::fs::read_to_string(src.join("media-store.service")).unwrap();
    for directive in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=media-store",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(
            service.contains(directive),
            "media-store.service lacks {directive}"
        );
    }
    for timer in ["media-store-gc.timer", "media-store-scrub.timer"] {
        let t = std::fs::read_to_string(src.join(timer)).unwrap();
        for d in ["Persistent=true", "RandomizedDelaySec="] {
            assert!(t.contains(d), "{timer} lacks {d}");
        }
    }
}

#[test]
fn serve_notifies_ready_then_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let data = dir.path().join("data");
    let mut d = TestDaemon::start_with_env(
        &data,
        &dir.path().join("run"),
        "",
        &[("NOTIFY_SOCKET", &sock_path)],
    );
    let mut buf = [0u8; 512];
    let recv = |buf: &mut [u8]| -> String {
        let n = sock.recv(buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv(&mut buf);
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first message: {first:?}"
    );
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let second = recv(&mut buf);
    assert!(
        second.lines().any(|l| l == "STOPPING=1"),
        "second message: {second:?}"
    );
    let status = d.child.wait().unwrap();
    assert!(status.success(), "daemon exited with {status}");
}
