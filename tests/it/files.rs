//! Files sluice writes, through `sluice run --once` against the simulator: `emit` files stay in
//! the directory the recipe names, whatever a record holds, and the state directory and emit
//! files are private to their owner.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sluice::sim::Kind;

use crate::util::{Run, SimEnv, T0};

/// Every regular file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A simulator, a workspace with the given recipes, and `run --once` from `<workspace>/run`.
struct Files {
    env: SimEnv,
}

impl Files {
    async fn start(recipes: &[&str]) -> Files {
        let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
        let dir = env.ws.path();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        for r in recipes {
            env.write_recipe(r);
        }
        Files { env }
    }

    fn contact(&self, external_id: &str, ts: i64) {
        self.env
            .sim()
            .create(
                Kind::Contact,
                json!({"email": format!("{ts}@x.io"), "role": "user", "external_id": external_id, "created_at": ts, "updated_at": ts}),
            )
            .unwrap();
    }

    /// `sluice ARGS… --recipes … --state-dir …`, run from `<workspace>/run`.
    async fn sluice(&self, args: &[&str]) -> Run {
        let cwd = self.env.ws.path().join("run");
        self.env.sluice_in(args, Some(&cwd)).await
    }

    /// `run --once --json`: the run and the reports by recipe id.
    async fn run_once(&self) -> (Run, std::collections::BTreeMap<String, Value>) {
        let cwd = self.env.ws.path().join("run");
        self.env.run_once_in(Some(&cwd)).await
    }
}

fn recipe(id: &str, to: &str) -> String {
    format!("id: {id}\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{{{record.external_id}}}}\"\n      to: \"{to}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_files_stay_in_the_directory_the_recipe_names() {
    let in_out = recipe("in_out", "out/{{record.external_id}}.jsonl");
    let in_cwd = recipe("in_cwd", "{{record.external_id}}.jsonl");
    let f = Files::start(&[&in_out, &in_cwd]).await;
    let ws = f.env.ws.path().to_path_buf();
    let absolute = ws.join("abs").display().to_string();
    let hostile = ["../x", &absolute, "a/../../y", "nul\u{0}z"];
    for (i, id) in ["ok1", "sub/ok2"].iter().chain(&hostile).enumerate() {
        f.contact(id, T0 - 100 + i as i64);
    }
    let (r, reps) = f.run_once().await;
    r.assert_ok();
    for id in ["in_out", "in_cwd"] {
        let rep = &reps[id];
        assert_eq!(
            (rep["finished"].as_u64(), rep["dead_letters"].as_u64()),
            (Some(2), Some(4)),
            "{id}: {rep}"
        );
    }
    // Only the normal records were written, each inside its recipe's directory; nothing
    // appeared anywhere else in the workspace.
    let mut written = files_under(&ws);
    written.retain(|p| !p.starts_with("state") && !p.starts_with("recipes"));
    let want: Vec<PathBuf> = [
        "run/ok1.jsonl",
        "run/out/ok1.jsonl",
        "run/out/sub/ok2.jsonl",
        "run/sub/ok2.jsonl",
        "sluice.yaml",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(written, want);
    assert_eq!(
        std::fs::read_to_string(ws.join("run/out/sub/ok2.jsonl")).unwrap(),
        "\"sub/ok2\"\n"
    );

    // Each escape is a dead letter saying why.
    let list = f.sluice(&["dead-letters", "list"]).await;
    list.assert_ok();
    for needle in [
        "emit: `to` rendered to `out/../x.jsonl`, which leaves `out/`; a record's values must not contain a `..` component",
        &format!("emit: `to` rendered to `out/{absolute}.jsonl`, which leaves `out/`; a record's values must not start a new root"),
        "emit: `to` rendered to `out/a/../../y.jsonl`, which leaves `out/`",
        "emit: `to` rendered to `out/nul\\0z.jsonl`, which leaves `out/`; a file name cannot contain a NUL character",
        "emit: `to` rendered to `../x.jsonl`, which leaves the working directory",
        &format!("emit: `to` rendered to `{absolute}.jsonl`, which leaves the working directory; a record's values must not start a new root"),
    ] {
        assert!(list.stdout.contains(needle), "no {needle:?} in:\n{}", list.stdout);
    }
    assert_eq!(list.stdout.lines().count(), 8, "{}", list.stdout);
}

/// The permission bits of a path.
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_emit_files_are_private() {
    let f = Files::start(&[&recipe("private", "out/{{record.external_id}}.jsonl")]).await;
    let ws = f.env.ws.path().to_path_buf();
    // An existing, open state directory is tightened, files already in it included.
    let state = ws.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("notes.txt"), "x").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            state.join("notes.txt"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    f.contact("ok", T0 - 10);
    f.contact("../bad", T0 - 5);
    let (r, reps) = f.run_once().await;
    r.assert_ok();
    // One record written, one dead letter (held in the store).
    assert_eq!(reps["private"]["dead_letters"], 1, "{}", reps["private"]);
    assert_eq!(mode(&state), 0o700);
    let files = files_under(&state);
    assert!(files.len() > 1, "{files:?}");
    for p in &files {
        let p = state.join(p);
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        let mut dir = p.parent().unwrap();
        while dir != state {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
            dir = dir.parent().unwrap();
        }
    }
    assert_eq!(mode(&ws.join("run/out/ok.jsonl")), 0o600);
}
