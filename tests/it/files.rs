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

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Paths made immutable with `chattr +i` (so that even root cannot chmod them), made mutable
/// again on drop so the workspace can be removed.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// Makes `p` immutable; false where that is not possible (not root, or a file system
    /// without the attribute).
    fn add(&mut self, p: &Path) -> bool {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(p)
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            self.0.push(p.to_path_buf());
        }
        ok
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(p)
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_emit_files_are_private() {
    let f = Files::start(&[&recipe("private", "out/{{record.external_id}}.jsonl")]).await;
    let ws = f.env.ws.path().to_path_buf();
    // An existing, open state directory on a volume: it is tightened itself, but what else is
    // in it is not sluice's and keeps its mode, even where it cannot be changed (a root-owned
    // `lost+found`; here immutable, where the system allows).
    let state = ws.join("state");
    let lost = state.join("lost+found");
    std::fs::create_dir_all(&lost).unwrap();
    std::fs::write(lost.join("found.txt"), "x").unwrap();
    std::fs::write(state.join("notes.txt"), "x").unwrap();
    set_mode(&state, 0o755);
    set_mode(&lost.join("found.txt"), 0o644);
    set_mode(&lost, 0o755);
    set_mode(&state.join("notes.txt"), 0o644);
    let mut immutable = Immutable(Vec::new());
    if !immutable.add(&lost) {
        eprintln!("chattr +i is not available: the unchangeable entry is not tried");
    }
    f.contact("ok", T0 - 10);
    f.contact("../bad", T0 - 5);
    let (r, reps) = f.run_once().await;
    r.assert_ok();
    // One record written, one dead letter (held in the store).
    assert_eq!(reps["private"]["dead_letters"], 1, "{}", reps["private"]);
    assert_eq!(mode(&state), 0o700);
    for (p, m) in [
        (&lost, 0o755),
        (&lost.join("found.txt"), 0o644),
        (&state.join("notes.txt"), 0o644),
    ] {
        assert_eq!(mode(p), m, "{}", p.display());
    }
    let db = state.join("sluice.db");
    let files = files_under(&db);
    assert!(files.len() > 1, "{files:?}");
    for p in &files {
        let p = db.join(p);
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        let mut dir = p.parent().unwrap();
        while dir != state {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
            dir = dir.parent().unwrap();
        }
    }
    assert_eq!(mode(&ws.join("run/out/ok.jsonl")), 0o600);

    // A state directory sluice cannot tighten (not its owner; here immutable) is a warning,
    // not a failure to start.
    set_mode(&state, 0o750);
    if immutable.add(&state) {
        f.contact("ok2", T0 - 3);
        let (r, reps) = f.run_once().await;
        r.assert_ok();
        assert_eq!(reps["private"]["finished"], 1, "{}", reps["private"]);
        assert!(
            r.stderr.contains(&format!(
                "The state directory `{}` could not be made private",
                state.display()
            )),
            "{}",
            r.stderr
        );
        assert_eq!(mode(&state), 0o750);
    }
}
