//! `deploy/offload.service` is a unit systemd accepts as written: verified by
//! `systemd-analyze verify` (no error, no warning), with `ExecStart` pointed
//! at the `offload` binary this build made (the unit names
//! /usr/local/bin/offload, where `cargo install --root /usr/local` puts it).

use std::path::Path;
use std::process::Command;

#[test]
fn the_example_systemd_unit_verifies() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(repo.join("deploy/offload.service")).unwrap();
    for key in [
        "ExecStart=/usr/local/bin/offload run --config /etc/offload/offload.toml",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
    ] {
        assert!(unit.lines().any(|l| l == key), "the unit lost {key:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offload.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/offload", env!("CARGO_BIN_EXE_offload")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze not runnable ({e}): install systemd (apt-get install systemd)")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    // Unknown or misspelt keys are only warnings; they count here.
    let own: Vec<&str> = stderr.lines().filter(|l| l.contains("offload.service")).collect();
    assert!(own.is_empty(), "systemd-analyze warned about the unit:\n{stderr}");
}
