//! The nats-server configs shipped in `infra/` are valid for the pinned server.

use std::path::PathBuf;

#[test]
fn every_infra_config_is_valid_for_the_pinned_nats_server() {
    let bin = std::env::var_os("MUSTER_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(muster_natsd::default_binary);
    let infra = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("../infra");
    let configs = [
        "nats-single.conf",
        "cluster/nats-1.conf",
        "cluster/nats-2.conf",
        "cluster/nats-3.conf",
    ];
    for c in configs {
        let out = std::process::Command::new(&bin)
            .arg("-t")
            .arg("-c")
            .arg(infra.join(c))
            .output()
            .expect("run nats-server -t");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("is valid"),
            "{c}: {text}"
        );
    }
}
