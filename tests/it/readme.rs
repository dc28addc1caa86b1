//! The README's hands-on section works as written: its `sh` blocks run, in order, as one shell
//! script with `set -e`. Only what must change is rewritten: `cargo install` is skipped (the
//! `sluice` on PATH is the binary under test), the simulator's port 4010 becomes a free one
//! (in the commands and in a copy of `examples/sim.yaml`), and after the simulator starts in
//! the background the script waits until it answers and makes sure it is stopped.

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

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("sim.yaml");
    let shipped = std::fs::read_to_string(root().join("examples/sim.yaml")).unwrap();
    assert!(shipped.contains("127.0.0.1:4010"));
    std::fs::write(&config, shipped.replace("4010", &port)).unwrap();

    let mut lines = vec!["set -e".to_string()];
    for line in script.lines() {
        if line.starts_with("cargo install --path .") {
            continue;
        }
        let line = line
            .replace("4010", &port)
            .replace("examples/sim.yaml", config.to_str().unwrap());
        let started_sim = line.starts_with("SIM=$!");
        lines.push(line);
        if started_sim {
            lines.push("trap 'kill $SIM 2>/dev/null || true' EXIT".into());
            lines.push(format!(
                "until curl -s -o /dev/null http://127.0.0.1:{port}/_sim/clock; do sleep 0.05; done"
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
    c.arg("-c")
        .arg(lines.join("\n"))
        .current_dir(root())
        .env("PATH", path)
        // `mktemp -d` makes its directories in the test's own.
        .env("TMPDIR", tmp.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") || k == "INTERCOM_TOKEN" {
            c.env_remove(k);
        }
    }
    let r = crate::util::run(c);
    assert_eq!(
        r.code,
        0,
        "the README's hands-on commands failed\nscript:\n{}\nstdout:\n{}\nstderr:\n{}",
        lines.join("\n"),
        r.stdout,
        r.stderr
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
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string()
    };
    let (sim_port, port) = (free(), free());
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("sim.yaml");
    let shipped = std::fs::read_to_string(root().join("examples/sim.yaml")).unwrap();
    std::fs::write(&config, shipped.replace("4010", &sim_port)).unwrap();
    let mut lines = vec!["set -e".to_string()];
    for line in script.lines() {
        let line = line
            .replace("4010", &sim_port)
            .replace("9187", &port)
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
    c.arg("-c")
        .arg(lines.join("\n"))
        .current_dir(root())
        .env("PATH", path)
        .env("TMPDIR", tmp.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") || k == "INTERCOM_TOKEN" {
            c.env_remove(k);
        }
    }
    let r = crate::util::run(c);
    assert_eq!(
        r.code,
        0,
        "the README's sidecar commands failed\nscript:\n{}\nstdout:\n{}\nstderr:\n{}",
        lines.join("\n"),
        r.stdout,
        r.stderr
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
