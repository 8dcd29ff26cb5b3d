//! The distributed deployment's files, checked without a Docker engine:
//! `scripts/compose-check` runs `docker-compose config`, checks the compose
//! file against this binary's `--help` and the images' conventions, and runs
//! `nginx -t` on the gateway's configuration.
//!
//! The tools (Debian's `docker-compose` and `nginx`) are installed by the
//! README's test command (`scripts/test`, which sets
//! `EMOSATION_REQUIRE_TEST_TOOLS=1`); run alone without them, the test says
//! so and passes over them.

use std::path::Path;
use std::process::Command;

#[test]
fn compose_file_and_gateway_config_are_valid() {
    let missing: Vec<&str> = ["docker-compose", "nginx", "python3", "openssl"]
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool} || test -x /usr/sbin/{tool}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("EMOSATION_REQUIRE_TEST_TOOLS").is_none(),
            "compose-check needs {missing:?}"
        );
        eprintln!("skipping: compose-check needs {missing:?} (scripts/test installs them)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/compose-check"))
        .arg(env!("CARGO_BIN_EXE_emosation"))
        .env(
            "PATH",
            format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/compose-check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
