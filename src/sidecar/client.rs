//! The CLI's way to a running sidecar: `<state dir>/sidecar.json` says where it listens; the
//! state, dead-letter and `run --once` commands call its `/api/…` when it holds the store.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

use super::api::CLIENT_HEADER;
use super::DISCOVERY_FILE;

/// A running sidecar's admin API.
#[derive(Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<crate::secret::Secret>,
}

impl Client {
    /// The sidecar that holds `state_dir`, if its discovery file says where it listens.
    pub fn find(state_dir: &Path) -> Result<Client> {
        let file = state_dir.join(DISCOVERY_FILE);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "another sluice process holds the state directory `{}`, and it is not a sidecar this command can reach (no `{}`)",
                state_dir.display(),
                file.display()
            )
        })?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("`{}` is not what a sidecar writes", file.display()))?;
        let listen = v["listen"]
            .as_str()
            .ok_or_else(|| anyhow!("`{}` names no address", file.display()))?;
        let token = std::env::var("SLUICE_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .map(crate::secret::Secret::new);
        if v["token_required"].as_bool() == Some(true) && token.is_none() {
            return Err(anyhow!("the sidecar on {listen} holds the state directory and needs SLUICE_ADMIN_TOKEN for its API"));
        }
        // A sidecar listening on every address is reached on loopback.
        let listen = listen
            .replace("0.0.0.0:", "127.0.0.1:")
            .replace("[::]:", "[::1]:");
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Client {
            base: format!("http://{listen}"),
            http,
            token,
        })
    }

    /// Whether it answers `/livez` (within a second).
    pub async fn alive(&self) -> bool {
        let req = self
            .http
            .get(format!("{}/livez", self.base))
            .timeout(Duration::from_secs(1));
        matches!(req.send().await, Ok(r) if r.status().is_success())
    }

    /// Where it listens.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /api/…`.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// `POST /api/…` (with the header state-changing requests need). Runs as long as the
    /// work does (a cycle on demand, a replay).
    pub async fn post(&self, path: &str) -> Result<Value> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header(CLIENT_HEADER, "cli"),
        )
        .await
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<Value> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "the sidecar on {} does not answer: {}",
                    self.base,
                    e.without_url()
                )
            })?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| anyhow!("the sidecar's answer is not JSON: {}", e.without_url()))?;
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the sidecar answered {status}"));
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(anyhow::Error::new(NotFound(message)));
        }
        Err(anyhow!("{message}"))
    }
}

/// The sidecar answered 404: what was asked for does not exist (as opposed to any other
/// failure: not answering, a refused token, stopping).
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// Whether `e` is the sidecar's 404.
pub fn not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NotFound>().is_some()
}

/// The sidecar that holds `state_dir`, when one is running and answers (its discovery file
/// names a live process): then the store is not even tried (its lock would hold us a second).
pub async fn running(state_dir: &Path) -> Option<Client> {
    let file = state_dir.join(DISCOVERY_FILE);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
    let pid = v["pid"].as_u64()?;
    if cfg!(target_os = "linux") && !Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    let c = Client::find(state_dir).ok()?;
    c.alive().await.then_some(c)
}

/// Whether `e` says the store is held by another process.
pub fn store_in_use(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::store::InUse>().is_some()
}
