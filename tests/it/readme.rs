//! The README's hands-on and sidecar sections work as written: each section's `sh` blocks run,
//! in order, as one shell script with `set -e` (see [`run_as_written`] for the little that is
//! rewritten: ports, the copy of `examples/sim.yaml`, `cargo install`).

use crate::util::root;

/// The `sh` blocks of the README section that starts with `heading`, in order.
fn sh_blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("no section {heading:?} in README.md"));
    let rest = &readme[start + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect()
}

/// A free loopback port.
fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

/// Runs `script` (README `sh` lines) as one `set -e` shell script from the repository root,
/// with the `sluice` under test first on PATH: `cargo install` is skipped, the simulator's
/// port 4010 and the sidecar's 9187 become free ones (in the commands and in a copy of
/// `examples/sim.yaml`), and after the simulator starts the script waits until it answers
/// and makes sure it (and a sidecar) is stopped. The script and what it printed.
fn run_as_written(script: &str) -> (String, crate::util::Run) {
    let (sim_port, sidecar_port) = (free_port(), free_port());
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("sim.yaml");
    let shipped = std::fs::read_to_string(root().join("examples/sim.yaml")).unwrap();
    assert!(shipped.contains("127.0.0.1:4010"));
    std::fs::write(&config, shipped.replace("4010", &sim_port)).unwrap();
    let mut lines = vec!["set -e".to_string()];
    for line in script.lines() {
        if line.starts_with("cargo install --path .") {
            continue;
        }
        let line = line
            .replace("4010", &sim_port)
            .replace("9187", &sidecar_port)
            .replace("examples/sim.yaml", config.to_str().unwrap());
        let started_sim = line.starts_with("SIM=$!");
        lines.push(line);
        if started_sim {
            lines.push("trap 'kill $SIM $SIDECAR 2>/dev/null || true' EXIT".into());
            lines.push(format!(
                "until curl -s -o /dev/null http://127.0.0.1:{sim_port}/_sim/clock; do sleep 0.05; done"
            ));
        }
    }
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_sluice"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = std::process::Command::new("sh");
    let script = lines.join("\n");
    c.arg("-c")
        .arg(&script)
        .current_dir(root())
        .env("PATH", path)
        // `mktemp -d` makes its directories in the test's own.
        .env("TMPDIR", tmp.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") || k == "INTERCOM_TOKEN" {
            c.env_remove(k);
        }
    }
    (script, crate::util::run(c))
}

#[test]
fn the_hands_on_section_runs_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let blocks = sh_blocks(&readme, "## Trying Intercom actions and triggers by hand");
    assert!(blocks.len() >= 2, "the hands-on section has its sh blocks");
    let script = blocks.concat();
    let commands = script
        .lines()
        .filter(|l| l.trim_start().starts_with("sluice "))
        .count();
    assert!(commands >= 8, "only {commands} sluice commands found");

    let (lines, r) = run_as_written(&script);
    assert_eq!(
        r.code, 0,
        "the README's hands-on commands failed\nscript:\n{}\nstdout:\n{}\nstderr:\n{}",
        lines, r.stdout, r.stderr
    );
    // What the commands are there to show.
    for want in [
        "Create contact",                 // connectors show intercom.create_contact
        "\"email\": \"ada@example.com\"", // call create_contact
        "/contacts/abc/tags",             // call assign_tags --dry-run
        "\"changed\"",                    // /_sim/churn
        "recipe new_ticket_triage: trigger intercom.new_ticket", // test --sample-from
    ] {
        assert!(r.stdout.contains(want), "{want:?} in\n{}", r.stdout);
    }
    assert!(
        r.stderr.contains("new_ticket_triage: polled"),
        "the run's summary: {}",
        r.stderr
    );
}

#[test]
fn the_sidecar_section_runs_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let blocks = sh_blocks(&readme, "## Running as a sidecar");
    let script = blocks
        .first()
        .expect("the sidecar section's sh block")
        .clone();
    assert!(script.contains("sluice run --listen"), "{script}");
    let (lines, r) = run_as_written(&script);
    assert_eq!(
        r.code, 0,
        "the README's sidecar commands failed\nscript:\n{}\nstdout:\n{}\nstderr:\n{}",
        lines, r.stdout, r.stderr
    );
    // Ready, metrics for every shipped recipe, the state through the sidecar, the run it did.
    assert!(r.stdout.contains("ready"), "{}", r.stdout);
    assert!(
        r.stdout.contains("new_ticket_triage@intercom"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("new_ticket_triage: polled"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("Stopped."),
        "it stopped cleanly: {}",
        r.stderr
    );
}
