//! `tools/install.sh`: the binary, the systemd unit, shell completions and
//! man pages land where the system looks for them, and `vpool` then runs
//! from any directory. Staged with --destdir (what a package build does),
//! so the host is left untouched; twice, since installing again must work.

mod common;
use common::daemon::{ok, vpool_bin};
use std::path::Path;
use std::process::Command;

#[test]
fn install_stages_binary_unit_completions_and_man_pages() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stage = tempfile::tempdir().unwrap();
    let dest = stage.path();
    for _ in 0..2 {
        ok(
            Command::new(root.join("tools/install.sh")).args([
                "--destdir",
                dest.to_str().unwrap(),
                "--prefix",
                "/opt/vp",
                "--binary",
                vpool_bin(),
            ]),
            120,
        );
    }
    let p = |rel: &str| dest.join(rel);
    // The binary, found on PATH from another directory.
    let bin = p("opt/vp/bin");
    let out = ok(
        Command::new("vpool")
            .arg("--version")
            .current_dir("/")
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display())),
        30,
    );
    assert!(out.starts_with("vpool "), "{out}");
    // The unit runs the installed binary.
    let unit = std::fs::read_to_string(p("etc/systemd/system/vpool.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/vp/bin/vpool --state-dir /var/lib/vpool daemon"),
        "{unit}"
    );
    assert!(unit.contains("WantedBy=multi-user.target"), "{unit}");
    // Completions: bash's completes subcommands (called as bash calls it:
    // the command, the word, the word before); zsh's and fish's are there.
    let bash = p("opt/vp/share/bash-completion/completions/vpool");
    let words = ok(
        Command::new("bash").arg("-c").arg(format!(
            "source {}; COMP_WORDS=(vpool po); COMP_CWORD=1; _vpool vpool po vpool; echo \"${{COMPREPLY[@]}}\"",
            bash.display()
        )),
        30,
    );
    assert!(words.split_whitespace().any(|w| w == "pool"), "{words}");
    let zsh = std::fs::read_to_string(p("opt/vp/share/zsh/site-functions/_vpool")).unwrap();
    assert!(
        zsh.starts_with("#compdef vpool"),
        "{}",
        &zsh[..40.min(zsh.len())]
    );
    let fish =
        std::fs::read_to_string(p("opt/vp/share/fish/vendor_completions.d/vpool.fish")).unwrap();
    assert!(fish.contains("complete -c vpool"), "fish completions");
    // Man pages: the command and each subcommand, as roff.
    let man = p("opt/vp/share/man/man1");
    for page in [
        "vpool.1",
        "vpool-pool-create.1",
        "vpool-daemon.1",
        "vpool-snap-create.1",
    ] {
        let text =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
}
