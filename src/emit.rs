//! Emit: the built-in `emit` step's sink. Lines for stdout and files are buffered and written
//! by [`Emitter::flush`], which the engine calls before it journals or commits the records
//! whose lines they are.
//!
//! Owns opening emit files (created `0600`: records are private data) and their buffers. Does
//! not decide where a line goes (`plan::Step::emit_to` does).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::plan::EmitTo;
use crate::record::write_line;

/// Where `emit` writes: stdout or files, buffered until [`Emitter::flush`].
#[derive(Debug, Default)]
pub struct Emitter {
    stdout: Mutex<Vec<u8>>,
    files: Mutex<HashMap<std::path::PathBuf, std::io::BufWriter<std::fs::File>>>,
}

impl Emitter {
    /// Queues one JSON line for `to`.
    pub fn emit(&self, to: &EmitTo, v: &Value) -> Result<()> {
        self.with_writer(to, |w| {
            serde_json::to_writer(&mut *w, v)?;
            w.write_all(b"\n")
        })
    }

    /// Queues a record's JSON text as one line for `to`, without parsing it.
    pub fn emit_raw(&self, to: &EmitTo, raw: &RawValue) -> Result<()> {
        self.with_writer(to, |w| write_line(w, raw))
    }

    fn with_writer(
        &self,
        to: &EmitTo,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let path = match to {
            EmitTo::Stdout => {
                let mut buf = self
                    .stdout
                    .lock()
                    .map_err(|_| anyhow!("emit buffer poisoned"))?;
                return Ok(write(&mut *buf)?);
            }
            EmitTo::File(p) => p.as_path(),
        };
        let mut files = self
            .files
            .lock()
            .map_err(|_| anyhow!("emit files poisoned"))?;
        if !files.contains_key(path) {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("emit: cannot create `{}`", dir.display()))?;
            }
            let mut open = std::fs::OpenOptions::new();
            open.create(true).append(true);
            // Records are private data: a new file is readable by its owner only.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
            let f = open
                .open(path)
                .with_context(|| format!("emit: cannot open `{}`", path.display()))?;
            files.insert(path.into(), std::io::BufWriter::with_capacity(1 << 16, f));
        }
        // Looked up by path (`out//a.jsonl` is `out/a.jsonl`), without allocating.
        let w = files.get_mut(path).expect("invariant: inserted above");
        write(w).with_context(|| format!("emit: cannot write `{}`", path.display()))
    }

    /// Writes everything queued.
    pub fn flush(&self) -> Result<()> {
        let mut buf = self
            .stdout
            .lock()
            .map_err(|_| anyhow!("emit buffer poisoned"))?;
        if !buf.is_empty() {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()?;
            buf.clear();
        }
        for w in self
            .files
            .lock()
            .map_err(|_| anyhow!("emit files poisoned"))?
            .values_mut()
        {
            w.flush()?;
        }
        Ok(())
    }
}
