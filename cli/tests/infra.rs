//! The service units in `infra/systemd/` run `muster` subcommands that exist, configured only
//! through environment variables those subcommands read.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn every_unit_sets_only_variables_its_subcommand_reads() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/systemd");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("infra/systemd") {
        let path = entry.expect("entry").path();
        let unit = std::fs::read_to_string(&path).expect("read unit");
        let Some(sub) = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/muster "))
        else {
            continue; // nats-server's unit
        };
        let help = Command::new(env!("CARGO_BIN_EXE_muster"))
            .args(sub.split_whitespace())
            .arg("--help")
            .output()
            .expect("run muster");
        assert!(
            help.status.success(),
            "{}: muster {sub} --help",
            path.display()
        );
        let help = String::from_utf8_lossy(&help.stdout);
        let vars: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
            .filter(|k| k.starts_with("MUSTER_"))
            .collect();
        assert!(!vars.is_empty(), "{}: configures nothing", path.display());
        for var in vars {
            assert!(
                help.contains(&format!("[env: {var}=")),
                "{}: muster {sub} reads no {var}",
                path.display()
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 3, "intake, matcher and projections units");
}
