//! Loading and reloading: connectors, `sluice.yaml` and recipe files → a [`Plan`], keeping
//! the last good version of whatever is broken now.
//!
//! * A recipe file with an error (or that cannot be read) keeps running its last good text,
//!   if it had one; otherwise it does not run. Either way it is reported.
//! * A broken `sluice.yaml` or connector file keeps the whole last good plan running (every
//!   recipe depends on them) and is reported.
//! * A connection that cannot be used (a secret not set, a broken connection file) stops only
//!   the recipe instances that use it.
//!
//! [`Fingerprint`] says whether anything was edited: the watcher's events are only hints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::diag::{self, Diagnostic};
use crate::plan::{self, Plan};
use crate::spec;

/// Where the configuration lives.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub config: PathBuf,
    /// `None`: the built-in connector.
    pub connectors: Option<PathBuf>,
    /// The connection files' directory, if any.
    pub connections: Option<PathBuf>,
    pub recipes: PathBuf,
}

/// A recipe file that does not load.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BrokenFile {
    pub file: PathBuf,
    /// Its errors, located.
    pub errors: Vec<String>,
    /// Whether its last good version runs meanwhile.
    pub running_last_good: bool,
}

/// What a load came to.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub plan: Plan,
    pub broken: Vec<BrokenFile>,
    /// Connection files that cannot be read: (connection name, why). Their recipe
    /// instances do not run; the others do.
    pub unreadable: Vec<(String, String)>,
}

/// Loads the configuration, remembering each recipe file's last good text.
#[derive(Debug)]
pub(crate) struct Loader {
    paths: Paths,
    last_good: HashMap<PathBuf, String>,
}

fn errors_of(diags: &[Diagnostic]) -> Vec<String> {
    diags
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect()
}

impl Loader {
    pub(crate) fn new(paths: Paths) -> Loader {
        Loader {
            paths,
            last_good: HashMap::new(),
        }
    }

    pub(crate) fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Loads everything. `Err`: `sluice.yaml` or a connector is broken (its errors); the
    /// caller keeps what it runs.
    pub(crate) fn load(&mut self) -> Result<Loaded, Vec<String>> {
        let connectors =
            plan::load_connectors_from(self.paths.connectors.as_deref()).map_err(|mut d| {
                diag::sort(&mut d);
                errors_of(&d)
            })?;
        let config = match std::fs::read_to_string(&self.paths.config) {
            Ok(text) => Some((self.paths.config.clone(), text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(vec![format!(
                    "{}: cannot read the config file: {e}",
                    self.paths.config.display()
                )])
            }
        };
        // Connection files: one that is broken stops only the recipe instances that use it
        // (`plan::build` leaves its connection out); one that cannot be read is left out.
        let mut connection_files = Vec::new();
        let mut unreadable = Vec::new();
        if let Some(dir) = &self.paths.connections {
            let files = spec::yaml_files_in(dir).map_err(|e| {
                vec![format!(
                    "{}: cannot read the connections directory: {e}",
                    dir.display()
                )]
            })?;
            for f in files {
                match std::fs::read(&f).map(String::from_utf8) {
                    Ok(Ok(text)) => connection_files.push((f, text)),
                    other => {
                        let why = match other {
                            Err(e) => format!("cannot read it: {e}"),
                            _ => "it is not UTF-8 text".to_string(),
                        };
                        let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                        unreadable.push((name.to_string(), format!("{}: {why}", f.display())));
                    }
                }
            }
        }
        let mut broken: Vec<BrokenFile> = Vec::new();
        let mut recipes: Vec<(PathBuf, String)> = Vec::new();
        let files = spec::yaml_files_in(&self.paths.recipes).map_err(|e| {
            vec![format!(
                "{}: cannot read the recipes directory: {e}",
                self.paths.recipes.display()
            )]
        })?;
        for f in &files {
            match std::fs::read(f).map(String::from_utf8) {
                Ok(Ok(text)) => recipes.push((f.clone(), text)),
                other => {
                    let why = match other {
                        Err(e) => format!("cannot read it: {e}"),
                        _ => "it is not UTF-8 text".to_string(),
                    };
                    let last = self.last_good.get(f).cloned();
                    broken.push(BrokenFile {
                        file: f.clone(),
                        errors: vec![format!("{}: {why}", f.display())],
                        running_last_good: last.is_some(),
                    });
                    if let Some(text) = last {
                        recipes.push((f.clone(), text));
                    }
                }
            }
        }
        let env = |k: &str| std::env::var(k).ok();
        // Each round sets aside the recipe files with errors (their last good text, or
        // nothing); a last good text can fail too under a new `sluice.yaml`, hence a few.
        for _ in 0..4 {
            let built = plan::build(plan::Sources {
                connectors: connectors.clone(),
                config: config.clone(),
                connection_files: connection_files.clone(),
                recipes: recipes.clone(),
                env: &env,
                secrets: plan::Secrets::Required,
            });
            let mut diags = match built {
                Ok(plan) => {
                    self.last_good.retain(|f, _| files.contains(f));
                    for (f, text) in &recipes {
                        if !broken.iter().any(|b| &b.file == f) {
                            self.last_good.insert(f.clone(), text.clone());
                        }
                    }
                    return Ok(Loaded {
                        plan,
                        broken,
                        unreadable,
                    });
                }
                Err(d) => d,
            };
            diags.retain(Diagnostic::is_error);
            diag::sort(&mut diags);
            let in_recipe = |d: &Diagnostic| recipes.iter().any(|(f, _)| f == &d.file);
            if diags.iter().any(|d| !in_recipe(d)) {
                // `sluice.yaml` (or something every recipe needs) is broken.
                return Err(diags
                    .iter()
                    .filter(|d| !in_recipe(d))
                    .map(ToString::to_string)
                    .collect());
            }
            let mut next = Vec::new();
            for (f, text) in recipes {
                let errs: Vec<Diagnostic> = diags.iter().filter(|d| d.file == f).cloned().collect();
                if errs.is_empty() {
                    next.push((f, text));
                    continue;
                }
                let last = self.last_good.get(&f).filter(|l| **l != text).cloned();
                match broken.iter_mut().find(|b| b.file == f) {
                    // Its last good text failed too: it does not run.
                    Some(b) => b.running_last_good = false,
                    None => broken.push(BrokenFile {
                        file: f.clone(),
                        errors: errors_of(&errs),
                        running_last_good: last.is_some(),
                    }),
                }
                if let Some(l) = last {
                    next.push((f, l));
                }
            }
            recipes = next;
        }
        Err(vec![
            "the recipes could not be loaded, even setting aside those with errors".into(),
        ])
    }

    /// What the configuration's files look like now.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        let mut files = vec![self.paths.config.clone()];
        if let Some(d) = &self.paths.connectors {
            files.extend(spec::yaml_files_in(d).unwrap_or_default());
        }
        if let Some(d) = &self.paths.connections {
            files.extend(spec::yaml_files_in(d).unwrap_or_default());
        }
        files.extend(spec::yaml_files_in(&self.paths.recipes).unwrap_or_default());
        Fingerprint(
            files
                .into_iter()
                .map(|f| {
                    // `metadata` follows symbolic links: a Kubernetes ConfigMap's swapped
                    // `..data` link changes what its files point at.
                    let m = std::fs::metadata(&f).ok().map(|m| {
                        (
                            m.len(),
                            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            ino(&m),
                        )
                    });
                    (f, m)
                })
                .collect(),
        )
    }
}

#[cfg(unix)]
fn ino(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn ino(_: &std::fs::Metadata) -> u64 {
    0
}

/// A file's size, modification time and inode (`None`: it cannot be read).
type FileMark = Option<(u64, SystemTime, u64)>;

/// The configuration files with their marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<(PathBuf, FileMark)>);

/// The directories to watch for `paths` (the config file's own directory: editors replace
/// files by renaming).
pub(crate) fn watched_dirs(paths: &Paths) -> Vec<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(&paths.config), paths.recipes.clone()];
    if let Some(c) = &paths.connectors {
        dirs.push(c.clone());
    }
    if let Some(c) = &paths.connections {
        dirs.push(c.clone());
    }
    dirs.sort();
    dirs.dedup();
    dirs
}
