//! Power-loss tests (issue #10, point 7): the real binary runs its data folder
//! on the power-cut file system of `harness::powercut`, which forgets whatever
//! was not made durable when the test cuts the power.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use crate::harness::powercut::{self, PowerCut};

fn fsync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn write(path: &Path, data: &[u8], fsync: bool) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    if fsync {
        f.sync_all().unwrap();
    }
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// The model itself: each sync makes exactly what it should durable.
#[test]
fn the_file_system_keeps_only_what_was_made_durable() {
    if !powercut::available() {
        return;
    }
    let pc = PowerCut::mount(&["disk"]);
    let root = pc.path(0).to_owned();
    let p = |name: &str| root.join(name);

    write(&p("unsynced"), b"a", false);
    write(&p("data-synced"), b"b", true);
    pc.cut(None);
    assert!(
        std::fs::metadata(p("x")).is_err(),
        "requests fail while the power is off"
    );
    pc.power_on();
    assert_eq!(read(&p("unsynced")), None, "a name never synced is lost");
    assert_eq!(
        read(&p("data-synced")),
        None,
        "fsync of a file does not make its name durable"
    );

    write(&p("name-synced"), b"c", false);
    write(&p("whole"), b"d", true);
    write(&p("renamed"), b"e", true);
    write(&p("unlinked"), b"g", true);
    std::fs::create_dir(p("sub")).unwrap();
    fsync_dir(&root);
    write(&p("sub/in-unsynced-folder"), b"h", true);
    std::fs::rename(p("renamed"), p("renamed-to")).unwrap();
    std::fs::remove_file(p("unlinked")).unwrap();
    let mut f = File::options().write(true).open(p("whole")).unwrap();
    f.write_all(b"overwritten, not synced").unwrap();
    drop(f);
    pc.cut(None);
    pc.power_on();
    assert_eq!(
        read(&p("name-synced")),
        Some(vec![]),
        "a durable name, its data not"
    );
    assert_eq!(read(&p("whole")), Some(b"d".to_vec()));
    assert_eq!(
        read(&p("renamed")),
        Some(b"e".to_vec()),
        "an unsynced rename is undone"
    );
    assert_eq!(read(&p("renamed-to")), None);
    assert_eq!(
        read(&p("unlinked")),
        Some(b"g".to_vec()),
        "an unsynced unlink is undone"
    );
    assert_eq!(read(&p("sub/in-unsynced-folder")), None);
    assert!(p("sub").is_dir());

    // syncfs(2) is not passed to FUSE servers: from an unwatched process it
    // makes nothing durable here...
    write(&p("after-plain-syncfs"), b"i", false);
    nix::unistd::syncfs(File::open(&root).unwrap()).unwrap();
    assert_eq!(pc.syncs(0).syncfs, 0);
    // ...and from a process spawned through the harness (here coreutils'
    // `sync -f`, which calls syncfs) it makes everything durable.
    write(&p("sub/after-watched-syncfs"), b"j", false);
    let status = pc
        .spawn(Command::new("sync").arg("-f").arg(&root))
        .unwrap()
        .wait()
        .unwrap();
    assert!(status.success());
    assert_eq!(pc.syncs(0).syncfs, 1);
    write(&p("after-syncfs"), b"k", true);
    pc.cut(None);
    pc.power_on();
    assert_eq!(read(&p("after-plain-syncfs")), Some(b"i".to_vec()));
    assert_eq!(read(&p("sub/after-watched-syncfs")), Some(b"j".to_vec()));
    assert_eq!(read(&p("after-syncfs")), None);

    // Reordering: some unsynced writes survive, in any combination; synced
    // ones always do.
    let mut kept = std::collections::HashSet::new();
    for seed in 0..16 {
        let mut f = File::create(p("reorder")).unwrap();
        f.write_all(b"synced.").unwrap();
        f.sync_all().unwrap();
        fsync_dir(&root);
        f.write_all(b"one.").unwrap();
        f.write_all(b"two.").unwrap();
        drop(f);
        pc.cut(Some(seed));
        pc.power_on();
        let got = read(&p("reorder")).unwrap();
        assert!(
            got.starts_with(b"synced."),
            "{}",
            String::from_utf8_lossy(&got)
        );
        kept.insert(got);
    }
    assert!(kept.len() >= 3, "reorder keeps different subsets: {kept:?}");
}
