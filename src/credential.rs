//! Credentials at rest: the tokens `sluice connect` obtains, encrypted with AES-256-GCM in
//! `<state dir>/credentials/<connection>.json`, one file per connection.
//!
//! Owns the key (`SLUICE_SECRET_KEY`, hex or base64 of 32 bytes, else `<state dir>/secret.key`
//! created `0600` on first use), sealing and opening a token bound to its connection (the
//! connection's name and the token's id are the associated data, so a file copied to another
//! connection's name does not open), the revoked mark, and key rotation. Files, not the sled
//! store: `sluice connect` and `sluice connections …` work while a sidecar holds the store,
//! and the sidecar picks a new token up by looking at the file. Writes go to a temporary file
//! renamed over the old one, so a reader sees the old file or the new one, never half of one.
//! Does not talk to any server (see `oauth`).

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The environment variable holding the key (hex or base64 of 32 bytes).
pub const KEY_ENV: &str = "SLUICE_SECRET_KEY";
/// The environment variable holding the new key during `rotate-key` (with `SLUICE_SECRET_KEY`).
pub const NEW_KEY_ENV: &str = "SLUICE_NEW_SECRET_KEY";
/// The key file in the state directory, used when `SLUICE_SECRET_KEY` is not set.
pub const KEY_FILE: &str = "secret.key";
/// The next key, written first by `rotate-key`: a rotation cut short leaves both readable.
const NEXT_KEY_FILE: &str = "secret.key.next";
/// The directory of credential files in the state directory.
pub const DIR: &str = "credentials";

/// A 256-bit key. Never printed.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

impl Key {
    /// A fresh random key.
    pub fn random() -> Result<Key> {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k).map_err(|e| anyhow!("no randomness for a key: {e}"))?;
        Ok(Key(k))
    }

    /// Parses 64 hex digits or the base64 of 32 bytes. The message never shows the text.
    pub fn parse(text: &str) -> Result<Key> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .ok()
        } else {
            base64::engine::general_purpose::STANDARD.decode(t).ok()
        };
        match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            Some(k) => Ok(Key(k)),
            None => bail!("the key is not 32 bytes written as 64 hex digits or in base64 (e.g. `openssl rand -hex 32`)"),
        }
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Where the key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `SLUICE_SECRET_KEY`.
    Env,
    /// The key file.
    File(PathBuf),
}

/// A token set as obtained from a token endpoint.
#[derive(Clone, Debug)]
pub struct TokenSet {
    /// The access token.
    pub access: Secret,
    /// The refresh token, when the provider issues one.
    pub refresh: Option<Secret>,
    /// When the access token expires (Unix seconds), when the provider says.
    pub expires_at: Option<i64>,
}

/// What is encrypted.
#[derive(Serialize, Deserialize)]
struct Sealed {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// A credential file's readable part (what `connections list` shows without the key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// The connection.
    pub connection: String,
    /// A random id of this token (not derived from it): a revoked mark names the token it
    /// is about, so it never lands on a newer one.
    pub id: String,
    /// When it was obtained (Unix seconds).
    pub obtained_at: i64,
    /// When the access token expires (Unix seconds), if it does.
    pub expires_at: Option<i64>,
    /// Whether a refresh token is stored.
    pub refreshable: bool,
    /// When the API refused it (Unix seconds): revoked, a new authorization is needed.
    pub revoked_at: Option<i64>,
}

/// A credential file: version 1.
#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum File {
    #[serde(rename = "1")]
    V1 {
        #[serde(flatten)]
        meta: Meta,
        /// 96-bit nonce, base64.
        nonce: String,
        /// AES-256-GCM ciphertext and tag of `Sealed` as JSON, base64.
        ciphertext: String,
    },
}

/// The credential files of one state directory.
#[derive(Debug, Clone)]
pub struct Vault {
    state_dir: PathBuf,
}

/// A file's modification stamp: changed when the file is replaced.
pub type Stamp = Option<(std::time::SystemTime, u64)>;

impl Vault {
    /// The vault of `state_dir` (nothing is read yet).
    pub fn new(state_dir: &Path) -> Vault {
        Vault {
            state_dir: state_dir.to_path_buf(),
        }
    }

    fn path(&self, connection: &str) -> PathBuf {
        let safe = percent_encoding::utf8_percent_encode(connection, FILE_NAME).to_string();
        self.state_dir.join(DIR).join(format!("{safe}.json"))
    }

    /// The key: `SLUICE_SECRET_KEY`, else the key file, created (`0600`) when `create`.
    pub fn key(&self, create: bool) -> Result<(Key, KeySource)> {
        if let Some(v) = std::env::var(KEY_ENV).ok().filter(|v| !v.trim().is_empty()) {
            return Ok((Key::parse(&v).context(KEY_ENV)?, KeySource::Env));
        }
        let file = self.state_dir.join(KEY_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => Ok((
                Key::parse(&text).with_context(|| format!("`{}`", file.display()))?,
                KeySource::File(file),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = Key::random()?;
                std::fs::create_dir_all(&self.state_dir)?;
                write_private(&file, key.hex().as_bytes())?;
                tracing::info!(file = %file.display(), "Created the key that encrypts stored tokens; keep it with the state directory (or set SLUICE_SECRET_KEY).");
                Ok((key, KeySource::File(file)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no key to open stored tokens: set {KEY_ENV} or keep `{}`",
                file.display()
            ),
            Err(e) => Err(e).with_context(|| format!("cannot read `{}`", file.display())),
        }
    }

    /// The stamp of a connection's file (`None` when there is none).
    pub fn stamp(&self, connection: &str) -> Stamp {
        let m = std::fs::metadata(self.path(connection)).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    fn read(&self, connection: &str) -> Result<Option<(Meta, String, String)>> {
        let path = self.path(connection);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        };
        let File::V1 {
            meta,
            nonce,
            ciphertext,
        } = serde_json::from_str(&text)
            .with_context(|| format!("`{}` is not a credential file", path.display()))?;
        if meta.connection != connection {
            bail!(
                "`{}` holds the token of connection `{}`, not `{connection}`",
                path.display(),
                meta.connection
            );
        }
        Ok(Some((meta, nonce, ciphertext)))
    }

    /// The readable part of a connection's file, without the key.
    pub fn meta(&self, connection: &str) -> Result<Option<Meta>> {
        Ok(self.read(connection)?.map(|(m, _, _)| m))
    }

    /// A connection's token, decrypted.
    pub fn load(&self, connection: &str) -> Result<Option<(Meta, TokenSet)>> {
        let Some((meta, nonce, ct)) = self.read(connection)? else {
            return Ok(None);
        };
        let (key, _) = self.key(false)?;
        let sealed = match open(&key, &meta, &nonce, &ct) {
            Ok(s) => s,
            // A rotation cut short: some files are under the next key already.
            Err(e) => match self.next_key() {
                Some(next) => open(&next, &meta, &nonce, &ct).map_err(|_| e)?,
                None => return Err(e),
            },
        };
        let set = TokenSet {
            access: Secret::new(sealed.access_token),
            refresh: sealed.refresh_token.map(Secret::new),
            expires_at: meta.expires_at,
        };
        Ok(Some((meta, set)))
    }

    fn next_key(&self) -> Option<Key> {
        let text = std::fs::read_to_string(self.state_dir.join(NEXT_KEY_FILE)).ok()?;
        Key::parse(&text).ok()
    }

    /// Stores a new token for `connection` (clearing any revoked mark); returns its
    /// readable part.
    pub fn save(&self, connection: &str, set: &TokenSet) -> Result<Meta> {
        let (key, _) = self.key(true)?;
        let meta = Meta {
            connection: connection.to_string(),
            id: random_id()?,
            obtained_at: chrono::Utc::now().timestamp(),
            expires_at: set.expires_at,
            refreshable: set.refresh.is_some(),
            revoked_at: None,
        };
        self.write(&key, meta.clone(), set)?;
        Ok(meta)
    }

    fn write(&self, key: &Key, meta: Meta, set: &TokenSet) -> Result<()> {
        let sealed = Sealed {
            access_token: set.access.expose().to_string(),
            refresh_token: set.refresh.as_ref().map(|s| s.expose().to_string()),
        };
        let (nonce, ct) = seal(key, &meta, &sealed)?;
        let dir = self.state_dir.join(DIR);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        crate::store::make_private(&dir);
        let path = self.path(&meta.connection);
        let text = serde_json::to_string_pretty(&File::V1 {
            meta,
            nonce,
            ciphertext: ct,
        })?;
        write_private(&path, text.as_bytes())
    }

    /// Marks the token `id` of `connection` revoked; `false` when the file holds another
    /// token by now (a new authorization won the race) or none.
    pub fn mark_revoked(&self, connection: &str, id: &str) -> Result<bool> {
        let Some((mut meta, nonce, ct)) = self.read(connection)? else {
            return Ok(false);
        };
        if meta.id != id {
            return Ok(false);
        }
        if meta.revoked_at.is_none() {
            meta.revoked_at = Some(chrono::Utc::now().timestamp());
        }
        let text = serde_json::to_string_pretty(&File::V1 {
            meta,
            nonce,
            ciphertext: ct,
        })?;
        write_private(&self.path(connection), text.as_bytes())?;
        Ok(true)
    }

    /// Every connection with a credential file.
    pub fn connections(&self) -> Result<Vec<String>> {
        let dir = self.state_dir.join(DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", dir.display())),
        };
        let mut out = Vec::new();
        for e in entries {
            let path = e?.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            if let Ok(File::V1 { meta, .. }) = serde_json::from_str::<File>(&text) {
                out.push(meta.connection);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Re-encrypts every stored token under a new key; returns how many. With
    /// `SLUICE_SECRET_KEY` set, the new key comes from `SLUICE_NEW_SECRET_KEY` (set
    /// `SLUICE_SECRET_KEY` to it afterwards); with the key file, a random key replaces it.
    /// Every token is opened before any is rewritten, so a key that does not open them all
    /// changes nothing. The new key file is written first (`secret.key.next`) and renamed
    /// over the old one last: a rotation cut short leaves every file readable.
    pub fn rotate_key(&self) -> Result<(usize, KeySource)> {
        let (_, source) = self.key(false)?;
        let mut all = Vec::new();
        for c in self.connections()? {
            if let Some((meta, set)) = self.load(&c)? {
                all.push((meta, set));
            }
        }
        let new = match &source {
            KeySource::Env => {
                let v = std::env::var(NEW_KEY_ENV).map_err(|_| {
                    anyhow!("{KEY_ENV} is set: put the new key in {NEW_KEY_ENV} (e.g. `openssl rand -hex 32`), then set {KEY_ENV} to it once the rotation is done")
                })?;
                Key::parse(&v).context(NEW_KEY_ENV)?
            }
            KeySource::File(_) => {
                let k = Key::random()?;
                write_private(&self.state_dir.join(NEXT_KEY_FILE), k.hex().as_bytes())?;
                k
            }
        };
        let n = all.len();
        for (meta, set) in all {
            self.write(&new, meta, &set)?;
        }
        if let KeySource::File(file) = &source {
            std::fs::rename(self.state_dir.join(NEXT_KEY_FILE), file)
                .with_context(|| format!("cannot replace `{}`", file.display()))?;
        }
        Ok((n, source))
    }
}

/// Characters escaped in a credential file's name.
const FILE_NAME: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_');

fn random_id() -> Result<String> {
    let mut b = [0u8; 12];
    getrandom::getrandom(&mut b).map_err(|e| anyhow!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The associated data: the token is bound to its connection and id.
fn aad(meta: &Meta) -> Vec<u8> {
    format!("sluice credential v1\0{}\0{}", meta.connection, meta.id).into_bytes()
}

fn seal(key: &Key, meta: &Meta, sealed: &Sealed) -> Result<(String, String)> {
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| anyhow!("bad key length"))?;
    let mut nonce = [0u8; 12];
    getrandom::getrandom(&mut nonce).map_err(|e| anyhow!("no randomness: {e}"))?;
    let msg = serde_json::to_vec(sealed)?;
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &msg,
                aad: &aad(meta),
            },
        )
        .map_err(|_| anyhow!("the token could not be encrypted"))?;
    let b64 = &base64::engine::general_purpose::STANDARD;
    Ok((b64.encode(nonce), b64.encode(ct)))
}

fn open(key: &Key, meta: &Meta, nonce: &str, ct: &str) -> Result<Sealed> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let broken = || {
        anyhow!(
            "the stored token of connection `{}` does not open with this key (another {KEY_ENV} or key file, or the file was altered); run `sluice connect {}` again",
            meta.connection,
            meta.connection
        )
    };
    let nonce = b64.decode(nonce).map_err(|_| broken())?;
    let ct = b64.decode(ct).map_err(|_| broken())?;
    if nonce.len() != 12 {
        return Err(broken());
    }
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| anyhow!("bad key length"))?;
    let msg = cipher
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ct,
                aad: &aad(meta),
            },
        )
        .map_err(|_| broken())?;
    serde_json::from_slice(&msg).map_err(|_| broken())
}

/// Writes `bytes` to `path` through a temporary file (mode `0600`) renamed over it. The
/// temporary name is unique in the process too: a refresh and an authorization from the
/// status page may store the same connection's token at once (the last rename wins whole).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{seq}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(t: &str) -> TokenSet {
        TokenSet {
            access: Secret::new(t),
            refresh: None,
            expires_at: None,
        }
    }

    #[test]
    fn keys_parse_from_hex_and_base64_only_at_32_bytes() {
        let hex = "00".repeat(32);
        assert!(Key::parse(&hex).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(Key::parse(&format!("{b64}\n")).is_ok());
        let short = Key::parse("abcd").unwrap_err().to_string();
        assert!(short.contains("32 bytes") && !short.contains("abcd"));
        assert_eq!(format!("{:?}", Key::parse(&hex).unwrap()), "Key(***)");
    }

    #[test]
    fn sealed_token_is_bound_to_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::new(dir.path());
        v.save("acme", &set("tok-ACME-1")).unwrap();
        let text = std::fs::read_to_string(v.path("acme")).unwrap();
        assert!(!text.contains("tok-ACME-1"), "{text}");
        // The same file under another connection's name does not open.
        let moved = text.replace("\"acme\"", "\"globex\"");
        std::fs::write(v.path("globex"), moved).unwrap();
        let e = format!("{:#}", v.load("globex").unwrap_err());
        assert!(e.contains("does not open"), "{e}");
        assert_eq!(
            v.load("acme").unwrap().unwrap().1.access.expose(),
            "tok-ACME-1"
        );
    }
}
