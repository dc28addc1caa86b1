//! OAuth2 connections: the authorization-code flow behind `sluice connect` and the status
//! page's "Connect" button, and the live token of each `auth: oauth2` connection while
//! recipes run.
//!
//! Owns talking to the provider's authorize and token endpoints (through the `oauth2`
//! crate). The flow's core is `Authorization` → `Pending`: the client and the key checked,
//! then `state` and PKCE made and the authorize URL built; then the answer's `state`
//! compared, a provider `error` reported, the code exchanged and the token stored. Both the
//! CLI's loopback listener and the sidecar's callback route drive it. Also owns refreshing
//! expiring tokens — one refresh at a time per connection — and the revoked mark a 401 puts
//! on a token. Tokens rest in [`crate::credential::Vault`]; every token, code, verifier and
//! client secret stays out of messages and logs. Does not decide what a recipe does when its
//! connection is revoked (the sidecar pauses it, see `sidecar`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use tokio::sync::watch;

use crate::credential::{Meta, Stamp, TokenSet, Vault};
use crate::http::Redactor;
use crate::plan::OAuthPlan;
use crate::secret::{same_secret, Secret};

/// A refresh starts this long before the token's stated expiry.
const EXPIRY_MARGIN_SECS: i64 = 60;

/// Where an OAuth connection stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthStatus {
    /// A token is stored and usable.
    Ready,
    /// No token yet: `sluice connect NAME`.
    Missing,
    /// The API refused the stored token (401): a new authorization is needed.
    Revoked,
    /// The stored token cannot be read (wrong key, altered file).
    Unreadable(String),
}

impl AuthStatus {
    /// For tables: `token set`, `missing`, `revoked`, `unreadable`.
    pub fn label(&self) -> &'static str {
        match self {
            AuthStatus::Ready => "token set",
            AuthStatus::Missing => "missing",
            AuthStatus::Revoked => "revoked",
            AuthStatus::Unreadable(_) => "unreadable",
        }
    }

    /// Why the connection cannot be used, with the fix; `None` when it can.
    pub fn problem(&self, connection: &str) -> Option<String> {
        match self {
            AuthStatus::Ready => None,
            AuthStatus::Missing => Some(format!(
                "no OAuth token yet; run `sluice connect {connection}` (or Connect on the sidecar's status page)"
            )),
            AuthStatus::Revoked => Some(format!(
                "the OAuth token was revoked (the API answered 401); its recipes are paused until `sluice connect {connection}` (or Re-authorize on the sidecar's status page) authorizes it again"
            )),
            AuthStatus::Unreadable(m) => Some(m.clone()),
        }
    }
}

/// The current token of a connection and what follows from it.
struct Current {
    token: Option<TokenSet>,
    id: Option<String>,
    status: AuthStatus,
    stamp: Stamp,
    redactor: Arc<Redactor>,
}

impl Current {
    fn read(vault: Option<&Vault>, name: &str) -> Current {
        let Some(vault) = vault else {
            return Current::empty(AuthStatus::Missing, None);
        };
        let stamp = vault.stamp(name);
        match vault.load(name) {
            Ok(None) => Current::empty(AuthStatus::Missing, stamp),
            Ok(Some((meta, set))) => Current::of(meta, set, stamp),
            Err(e) => Current::empty(AuthStatus::Unreadable(format!("{e:#}")), stamp),
        }
    }

    fn of(meta: Meta, set: TokenSet, stamp: Stamp) -> Current {
        Current {
            redactor: Arc::new(Redactor::new(Some(&set.access))),
            status: if meta.revoked_at.is_some() {
                AuthStatus::Revoked
            } else {
                AuthStatus::Ready
            },
            id: Some(meta.id),
            token: Some(set),
            stamp,
        }
    }

    fn empty(status: AuthStatus, stamp: Stamp) -> Current {
        Current {
            token: None,
            id: None,
            status,
            stamp,
            redactor: Arc::new(Redactor::new(None)),
        }
    }
}

/// The live token of one `auth: oauth2` connection, shared by every `http::Connection`
/// opened for it (across reloads). Refreshes are single-flight: whoever finds the token
/// stale takes `refreshing`, and those who queue behind it find the new token and use it.
pub struct LiveAuth {
    name: String,
    plan: RwLock<Arc<OAuthPlan>>,
    vault: Option<Vault>,
    current: RwLock<Arc<Current>>,
    refreshing: tokio::sync::Mutex<()>,
    changed: Arc<watch::Sender<u64>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for LiveAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveAuth")
            .field("connection", &self.name)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Why no token can be sent.
#[derive(Debug, Clone)]
pub struct NotAuthorized {
    /// Whether trying again later may help (the token endpoint could not be reached).
    pub transient: bool,
    /// What is wrong and what to do.
    pub message: String,
}

impl LiveAuth {
    fn new(
        name: &str,
        plan: Arc<OAuthPlan>,
        vault: Option<Vault>,
        changed: Arc<watch::Sender<u64>>,
    ) -> LiveAuth {
        let current = Current::read(vault.as_ref(), name);
        LiveAuth {
            name: name.to_string(),
            plan: RwLock::new(plan),
            vault,
            current: RwLock::new(Arc::new(current)),
            refreshing: tokio::sync::Mutex::new(()),
            changed,
            http: token_client(),
        }
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn install(&self, c: Current) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(c);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Where the connection stands.
    pub fn status(&self) -> AuthStatus {
        self.current().status.clone()
    }

    /// Hides the current token in what servers send back.
    pub(crate) fn redactor(&self) -> Arc<Redactor> {
        self.current().redactor.clone()
    }

    /// The token to send and its id; refreshed first when it is about to expire.
    pub async fn bearer(&self) -> Result<(Secret, String), NotAuthorized> {
        let cur = self.current();
        let refused = |m: String| NotAuthorized {
            transient: false,
            message: m,
        };
        if let Some(p) = cur.status.problem(&self.name) {
            return Err(refused(format!("connection `{}`: {p}", self.name)));
        }
        let (Some(set), Some(id)) = (&cur.token, &cur.id) else {
            return Err(refused(format!("connection `{}` has no token", self.name)));
        };
        let stale = set
            .expires_at
            .is_some_and(|t| t - EXPIRY_MARGIN_SECS <= chrono::Utc::now().timestamp());
        if stale && set.refresh.is_some() {
            return self.refresh(id).await;
        }
        Ok((set.access.clone(), id.clone()))
    }

    /// After the API answered 401 to token `id`: a new token to try once (refreshed, or one
    /// stored meanwhile), or `None` when the token is revoked (marked so, for good).
    pub async fn unauthorized(&self, id: &str) -> Option<(Secret, String)> {
        let cur = self.current();
        if cur.id.as_deref() != Some(id) && cur.status == AuthStatus::Ready {
            // Replaced meanwhile (a refresh, a new authorization): that one is worth a try.
            return cur
                .token
                .as_ref()
                .zip(cur.id.clone())
                .map(|(t, id)| (t.access.clone(), id));
        }
        if cur.token.as_ref().is_some_and(|t| t.refresh.is_some()) {
            if let Ok(t) = self.refresh(id).await {
                return Some(t);
            }
            return None;
        }
        self.revoke(id);
        None
    }

    /// Marks token `id` revoked, on disk and here.
    fn revoke(&self, id: &str) {
        if let Some(v) = &self.vault {
            if let Err(e) = v.mark_revoked(&self.name, id) {
                tracing::warn!(connection = %self.name, error = %format!("{e:#}"), "Could not record the revoked token.");
            }
        }
        let cur = self.current();
        if cur.id.as_deref() == Some(id) && cur.status != AuthStatus::Revoked {
            tracing::error!(connection = %self.name, "The API refused the connection's OAuth token (401): marked revoked; its recipes pause until `sluice connect {}` authorizes it again.", self.name);
            self.install(Current {
                token: cur.token.clone(),
                id: cur.id.clone(),
                status: AuthStatus::Revoked,
                stamp: self.vault.as_ref().and_then(|v| v.stamp(&self.name)),
                redactor: cur.redactor.clone(),
            });
        }
    }

    /// Refreshes token `stale` — unless someone else did while we waited for the lock, in
    /// which case theirs is used. One refresh at a time per connection: a provider that
    /// rotates refresh tokens would refuse the second of two concurrent ones (and two
    /// writers could store an old token over a new one).
    async fn refresh(&self, stale: &str) -> Result<(Secret, String), NotAuthorized> {
        let _one = self.refreshing.lock().await;
        let cur = self.current();
        if cur.id.as_deref() != Some(stale) {
            return match (&cur.token, &cur.id, &cur.status) {
                (Some(t), Some(id), AuthStatus::Ready) => Ok((t.access.clone(), id.clone())),
                _ => Err(NotAuthorized {
                    transient: false,
                    message: format!(
                        "connection `{}`: {}",
                        self.name,
                        cur.status.problem(&self.name).unwrap_or_default()
                    ),
                }),
            };
        }
        let Some(old) = cur.token.clone() else {
            return Err(NotAuthorized {
                transient: false,
                message: format!("connection `{}` has no token", self.name),
            });
        };
        let Some(refresh) = old.refresh.clone() else {
            return Err(NotAuthorized {
                transient: false,
                message: format!("connection `{}`: the token has no refresh token", self.name),
            });
        };
        let plan = self
            .plan
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match exchange_refresh(&plan, &self.http, &refresh).await {
            Ok(mut set) => {
                // A provider that does not rotate refresh tokens sends none back.
                if set.refresh.is_none() {
                    set.refresh = Some(refresh);
                }
                let meta = match &self.vault {
                    Some(v) => v.save(&self.name, &set).map_err(|e| NotAuthorized {
                        transient: true,
                        message: format!(
                            "connection `{}`: the refreshed token could not be stored: {e:#}",
                            self.name
                        ),
                    })?,
                    None => Meta {
                        connection: self.name.clone(),
                        id: format!("{stale}+"),
                        obtained_at: chrono::Utc::now().timestamp(),
                        expires_at: set.expires_at,
                        refreshable: true,
                        revoked_at: None,
                    },
                };
                tracing::info!(connection = %self.name, "OAuth token refreshed.");
                let id = meta.id.clone();
                let access = set.access.clone();
                let stamp = self.vault.as_ref().and_then(|v| v.stamp(&self.name));
                self.install(Current::of(meta, set, stamp));
                Ok((access, id))
            }
            Err(ExchangeError::Refused(m)) => {
                self.revoke(stale);
                Err(NotAuthorized {
                    transient: false,
                    message: format!(
                        "connection `{}`: the refresh was refused ({m}); run `sluice connect {}`",
                        self.name, self.name
                    ),
                })
            }
            Err(ExchangeError::Failed(m)) => Err(NotAuthorized {
                transient: true,
                message: format!(
                    "connection `{}`: the token could not be refreshed: {m}",
                    self.name
                ),
            }),
        }
    }

    /// Reads the credential file again when it changed (a new authorization, a rotation);
    /// whether the status or token changed.
    pub fn sync(&self) -> bool {
        let Some(v) = &self.vault else { return false };
        let cur = self.current();
        if v.stamp(&self.name) == cur.stamp {
            return false;
        }
        let next = Current::read(Some(v), &self.name);
        let changed = next.id != cur.id || next.status != cur.status;
        if changed && next.status == AuthStatus::Ready && cur.status != AuthStatus::Ready {
            tracing::info!(connection = %self.name, "A new OAuth token is stored: the connection's recipes resume.");
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        changed
    }
}

/// The live tokens of every OAuth connection of one state directory, shared by the
/// runtimes a reload builds (so a refresh in flight stays the only one).
pub struct Credentials {
    vault: Option<Vault>,
    auths: Mutex<HashMap<String, Arc<LiveAuth>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials::with_vault(None)
    }
}

impl Credentials {
    /// The tokens stored in `state_dir`.
    pub fn new(state_dir: &std::path::Path) -> Credentials {
        Credentials::with_vault(Some(Vault::new(state_dir)))
    }

    fn with_vault(vault: Option<Vault>) -> Credentials {
        Credentials {
            vault,
            auths: Mutex::new(HashMap::new()),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// Where the tokens are stored (`None`: nowhere, as in `sluice test`).
    pub(crate) fn vault(&self) -> Option<&Vault> {
        self.vault.as_ref()
    }

    /// The live token of connection `name` (the same one for every call with that name).
    pub fn auth(&self, name: &str, plan: &Arc<OAuthPlan>) -> Arc<LiveAuth> {
        let mut auths = self.auths.lock().unwrap_or_else(PoisonError::into_inner);
        let a = auths.entry(name.to_string()).or_insert_with(|| {
            Arc::new(LiveAuth::new(
                name,
                plan.clone(),
                self.vault.clone(),
                self.changed.clone(),
            ))
        });
        *a.plan.write().unwrap_or_else(PoisonError::into_inner) = plan.clone();
        a.clone()
    }

    /// Looks at every credential file again; whether any connection changed.
    pub fn sync(&self) -> bool {
        let auths: Vec<Arc<LiveAuth>> = self
            .auths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        auths.iter().fold(false, |any, a| a.sync() | any)
    }

    /// Ticks whenever a connection's status or token changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Why a token request failed.
enum ExchangeError {
    /// The provider refused (bad code, bad client, revoked refresh token): not worth retrying.
    Refused(String),
    /// It could not be asked or answered nonsense.
    Failed(String),
}

#[allow(clippy::disallowed_methods)]
fn token_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        // The code and client secret must not follow a redirect elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

fn client_parts(plan: &OAuthPlan) -> Result<(ClientId, ClientSecret), ExchangeError> {
    let id = plan.client_id.clone().map_err(|var| {
        ExchangeError::Failed(format!(
            "the client id's environment variable `{var}` is not set"
        ))
    })?;
    let secret = plan.client_secret.clone().map_err(|var| {
        ExchangeError::Failed(format!(
            "the client secret's environment variable `{var}` is not set"
        ))
    })?;
    Ok((
        ClientId::new(id),
        ClientSecret::new(secret.expose().to_string()),
    ))
}

/// What a token endpoint's refusal says, without anything secret: the standard error code
/// and its description, with the client secret scrubbed should the server echo it.
fn describe<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, oauth2::StandardErrorResponse<BasicErrorResponseType>>,
    hidden: &[&str],
) -> ExchangeError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let mut m = r.error().to_string();
            if let Some(d) = r.error_description() {
                m.push_str(": ");
                m.push_str(&d.chars().take(200).collect::<String>());
            }
            for h in hidden.iter().filter(|h| !h.is_empty()) {
                m = m.replace(h, "***");
            }
            ExchangeError::Refused(m)
        }
        // The body may hold a token: never shown.
        RequestTokenError::Parse(_, _) => {
            ExchangeError::Failed("the token endpoint's answer is not a token response".into())
        }
        RequestTokenError::Request(_) => {
            ExchangeError::Failed("the token endpoint could not be reached".into())
        }
        RequestTokenError::Other(m) => ExchangeError::Failed(m),
    }
}

fn token_set<TR: TokenResponse>(t: &TR) -> TokenSet {
    TokenSet {
        access: Secret::new(t.access_token().secret().clone()),
        refresh: t.refresh_token().map(|r| Secret::new(r.secret().clone())),
        expires_at: t
            .expires_in()
            .map(|d| chrono::Utc::now().timestamp() + d.as_secs() as i64),
    }
}

async fn exchange_refresh(
    plan: &OAuthPlan,
    http: &reqwest::Client,
    refresh: &Secret,
) -> Result<TokenSet, ExchangeError> {
    let (id, secret) = client_parts(plan)?;
    let shown = secret.secret().clone();
    let token_url = TokenUrl::new(plan.token_url.clone())
        .map_err(|_| ExchangeError::Failed("the token URL is not a URL".into()))?;
    let client = BasicClient::new(id)
        .set_client_secret(secret)
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(token_url);
    let r = RefreshToken::new(refresh.expose().to_string());
    client
        .exchange_refresh_token(&r)
        .request_async(http)
        .await
        .map(|t| token_set(&t))
        .map_err(|e| describe(e, &[&shown, refresh.expose()]))
}

/// How `sluice connect` runs.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Do not try to open a browser.
    pub no_browser: bool,
    /// The callback listener's port (0: any free one).
    pub port: u16,
    /// How long to wait for the browser to come back.
    pub timeout: Duration,
}

/// What the provider's redirect brings back to the callback (its query string).
#[derive(Default, serde::Deserialize)]
pub(crate) struct Callback {
    code: Option<String>,
    pub(crate) state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The code and the state are credentials for a few minutes: never shown.
        f.debug_struct("Callback")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Why an authorization did not end with a stored token. Its `Display` is the message for
/// the person: never a code, token, verifier or client secret.
#[derive(Debug)]
pub(crate) enum NotConnected {
    /// The answer's `state` is not the one this flow sent: nothing else in it was looked at.
    WrongState,
    /// The provider answered with an `error` (the person declined, the app is misconfigured).
    Declined(String),
    /// No code, the token endpoint refused it or could not be asked, the token is unusable,
    /// or it could not be stored.
    Failed(String),
}

impl std::fmt::Display for NotConnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotConnected::WrongState => f.write_str("the answer's `state` does not match the one sluice sent: refused (a request that sluice did not start, or an old browser tab); nothing was stored"),
            NotConnected::Declined(m) | NotConnected::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for NotConnected {}

/// An authorization about to start for one connection: the client and the vault checked,
/// waiting only for the redirect URL (which `sluice connect` knows once it listens).
pub(crate) struct Authorization {
    name: String,
    client_id: ClientId,
    client_secret: ClientSecret,
    authorize_url: AuthUrl,
    token_url: TokenUrl,
    scopes: Vec<String>,
    pkce: bool,
    vault: Vault,
}

impl Authorization {
    /// Checks what the flow needs before anyone is sent to the provider: the client id and
    /// secret in the environment, the grant's URLs, and the key that will encrypt the token
    /// (created when there is none yet), so that a missing or broken one fails before the
    /// person clicks anything.
    pub(crate) fn new(name: &str, plan: &OAuthPlan, vault: &Vault) -> Result<Authorization> {
        let (client_id, client_secret) = client_parts(plan).map_err(|e| match e {
            ExchangeError::Failed(m) | ExchangeError::Refused(m) => {
                anyhow!("connection `{name}`: {m}")
            }
        })?;
        vault.key(true)?;
        Ok(Authorization {
            name: name.to_string(),
            client_id,
            client_secret,
            authorize_url: AuthUrl::new(plan.authorize_url.clone()).context("the authorize URL")?,
            token_url: TokenUrl::new(plan.token_url.clone()).context("the token URL")?,
            scopes: plan.scopes.clone(),
            pkce: plan.pkce,
            vault: vault.clone(),
        })
    }

    /// Starts the flow with the provider sending the browser back to `redirect`: the
    /// authorize URL to send the person to, and what the answer is checked against.
    pub(crate) fn begin(self, redirect: &str) -> Result<(String, Pending)> {
        let redirect = RedirectUrl::new(redirect.to_string()).context("the redirect URL")?;
        let client = BasicClient::new(self.client_id.clone())
            .set_auth_uri(self.authorize_url.clone())
            .set_redirect_uri(redirect.clone());
        let mut req = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(self.scopes.iter().cloned().map(Scope::new));
        let verifier = if self.pkce {
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            req = req.set_pkce_challenge(challenge);
            Some(verifier)
        } else {
            None
        };
        let (url, state) = req.url();
        Ok((
            url.to_string(),
            Pending {
                auth: self,
                redirect,
                state,
                verifier,
            },
        ))
    }
}

/// An authorization under way: the `state` sent (the answer must carry it back), the PKCE
/// verifier, and the client to exchange the code with. Used once.
pub(crate) struct Pending {
    auth: Authorization,
    redirect: RedirectUrl,
    state: CsrfToken,
    verifier: Option<PkceCodeVerifier>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("connection", &self.auth.name)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// The connection being authorized.
    pub(crate) fn connection(&self) -> &str {
        &self.auth.name
    }

    /// Whether `given` is this flow's `state` (compared in constant time).
    pub(crate) fn has_state(&self, given: &str) -> bool {
        same_secret(given.as_bytes(), self.state.secret().as_bytes())
    }

    /// Ends the flow with the provider's answer: its `state` compared first (an answer to
    /// another request is not looked at further), a provider `error` reported, the code
    /// exchanged, the token checked and stored. The stored token's readable part.
    pub(crate) async fn finish(self, cb: Callback) -> Result<Meta, NotConnected> {
        if !cb.state.as_deref().is_some_and(|s| self.has_state(s)) {
            return Err(NotConnected::WrongState);
        }
        let name = self.auth.name.as_str();
        if let Some(e) = cb.error {
            let e: String = e.chars().take(100).collect();
            let d = cb
                .error_description
                .map(|d| format!(": {}", d.chars().take(200).collect::<String>()))
                .unwrap_or_default();
            return Err(NotConnected::Declined(format!(
                "the provider did not authorize connection `{name}`: {e}{d}"
            )));
        }
        let Some(code) = cb.code else {
            return Err(NotConnected::Failed("the answer carries no `code`".into()));
        };
        let shown_secret = self.auth.client_secret.secret().clone();
        let client = BasicClient::new(self.auth.client_id.clone())
            .set_client_secret(self.auth.client_secret.clone())
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(self.auth.token_url.clone())
            .set_redirect_uri(self.redirect);
        let mut exchange = client.exchange_code(AuthorizationCode::new(code.clone()));
        if let Some(v) = self.verifier {
            exchange = exchange.set_pkce_verifier(v);
        }
        let http = token_client();
        let token = exchange.request_async(&http).await.map_err(|e| {
            // A provider may echo the code (or worse) in its error's description.
            NotConnected::Failed(match describe(e, &[&shown_secret, &code]) {
                ExchangeError::Refused(m) => {
                    format!("the token endpoint refused the code for connection `{name}`: {m}")
                }
                ExchangeError::Failed(m) => format!("connection `{name}`: {m}"),
            })
        })?;
        let set = token_set(&token);
        if let Some(p) = crate::http::token_problem(set.access.expose()) {
            return Err(NotConnected::Failed(format!(
                "the token endpoint sent a token that cannot be used: {p}"
            )));
        }
        self.auth
            .vault
            .save(name, &set)
            .map_err(|e| NotConnected::Failed(format!("{e:#}")))
    }
}

/// Runs the authorization-code flow for connection `name` and stores the token; `say`
/// prints a line for the person (the authorize URL goes through it). Returns the stored
/// token's readable part.
pub async fn connect(
    name: &str,
    plan: &OAuthPlan,
    vault: &Vault,
    opts: &ConnectOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Meta> {
    let auth = Authorization::new(name, plan, vault)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", opts.port))?;
    let port = listener.local_addr()?.port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let (url, pending) = auth.begin(&redirect)?;

    // The listener answers the browser and hands the query over; one callback ends it.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Callback>(1);
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(
            move |axum::extract::Query(cb): axum::extract::Query<Callback>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.try_send(cb);
                    axum::response::Html(
                        "<!doctype html><title>sluice</title><p>sluice received the answer; you can close this tab and go back to the terminal.</p>",
                    )
                }
            },
        ),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    say(&format!(
        "Open this URL in a browser to authorize connection `{name}`:\n  {url}\nWaiting for the answer on {redirect} …"
    ));
    if !opts.no_browser && has_display() {
        open_browser(&url);
    }
    let cb = tokio::time::timeout(opts.timeout, rx.recv()).await;
    server.abort();
    let cb = match cb {
        Ok(Some(cb)) => cb,
        Ok(None) => bail!("the callback listener stopped"),
        Err(_) => bail!(
            "no answer from the browser within {} s; run `sluice connect {name}` again",
            opts.timeout.as_secs()
        ),
    };
    Ok(pending.finish(cb).await?)
}

fn has_display() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    // Best effort: the URL is printed anyway.
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}
