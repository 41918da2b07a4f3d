//! The `concord-state` binary: its flags, and a refusal of bad settings
//! that names the flag. (Building this test also builds the binary the
//! reliability test runs as a separate process.)

use std::process::Command;

#[test]
fn help_lists_the_state_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_concord-state"))
        .arg("--help")
        .output()
        .expect("run concord-state --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--max-document-bytes",
        "--history-keep",
        "--write-batch",
        "--nats-url",
        "--database-url",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn a_bad_setting_is_refused_naming_the_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_concord-state"))
        .args([
            "--write-batch",
            "0",
            "--nats-url",
            "nats://127.0.0.1:1",
            "--database-url",
            "postgres://x@127.0.0.1:1/x",
        ])
        .output()
        .expect("run concord-state");
    assert!(!output.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("--write-batch"), "{text}");
}
