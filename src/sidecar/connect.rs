//! The status page's OAuth flow: "Connect" / "Re-authorize" on an `auth: oauth2` connection
//! starts [`crate::oauth`]'s authorization with the sidecar's own callback,
//! `<public URL>/oauth/callback`, which finishes it; held recipes resume at once.
//!
//! Access: `POST /ui/connections/{name}/connect` is a page form (behind the page guard, with
//! the CSRF token). The callback is not behind the page guard: the provider's redirect is a
//! cross-site navigation, which does not carry the `SameSite=Strict` admin cookie. What
//! protects it is the `state`, 128 random bits issued to a signed-in admin, used once, and
//! forgotten after [`PENDING_TTL`] (or when more than [`MAX_PENDING`] are under way, the
//! oldest first). An answer with any other `state` is refused before anything in it is used.
//! The host guard still applies. No page shows a code, token or client secret.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::api::ApiError;
use super::pages::{self, CsrfForm};
use super::Shared;
use crate::oauth::{Authorization, Callback, NotConnected, Pending};

/// Where the provider sends the browser back, under the public URL.
pub(crate) const CALLBACK_PATH: &str = "/oauth/callback";
/// At most this many authorizations are under way; beyond, the oldest is forgotten.
pub(crate) const MAX_PENDING: usize = 32;
/// An authorization not answered within this long is forgotten.
pub(crate) const PENDING_TTL: Duration = Duration::from_secs(600);

/// Authorizations under way, oldest first: each waits for its callback.
#[derive(Default)]
pub(crate) struct Flows(Mutex<VecDeque<(Instant, Pending)>>);

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows").finish_non_exhaustive()
    }
}

impl Flows {
    fn prune(q: &mut VecDeque<(Instant, Pending)>, now: Instant) {
        while q
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= PENDING_TTL)
        {
            q.pop_front();
        }
    }

    /// Keeps `p` until its callback comes (or it expires, or is pushed out).
    pub(crate) fn add(&self, p: Pending, now: Instant) {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Self::prune(&mut q, now);
        q.push_back((now, p));
        while q.len() > MAX_PENDING {
            if let Some((_, old)) = q.pop_front() {
                tracing::warn!(connection = %old.connection(), "More than {MAX_PENDING} OAuth authorizations under way: the oldest is forgotten (its answer will be refused).");
            }
        }
    }

    /// The authorization that issued `state`, taken out (an answer is used once); `None`
    /// when no authorization under way issued it.
    pub(crate) fn take(&self, state: &str, now: Instant) -> Option<Pending> {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Self::prune(&mut q, now);
        let at = q.iter().position(|(_, p)| p.has_state(state))?;
        q.remove(at).map(|(_, p)| p)
    }
}

/// The base URL a browser reaches the sidecar on, from `--public-url`: `http` or `https`,
/// with a host, without credentials, query or fragment; returned without a trailing slash.
pub(crate) fn check_public_url(given: &str) -> Result<String> {
    // Echoed only while it cannot hold a password or a token (no `@`, no query).
    let shown = if given.contains(['@', '?', '#']) {
        String::new()
    } else {
        format!(" `{given}`")
    };
    let Ok(mut u) = reqwest::Url::parse(given) else {
        bail!("--public-url{shown} is not a URL like `https://sluice.example.com`");
    };
    if !u.username().is_empty() || u.password().is_some() {
        bail!("--public-url: a URL with a user name or password cannot be a redirect URL");
    }
    if !matches!(u.scheme(), "http" | "https") {
        bail!("--public-url{shown}: the scheme must be http or https");
    }
    if u.host_str().is_none_or(str::is_empty) {
        bail!("--public-url{shown} has no host");
    }
    if u.query().is_some() || u.fragment().is_some() {
        u.set_query(None);
        u.set_fragment(None);
        bail!("--public-url `{u}…`: no query (`?…`) or fragment (`#…`): the callback's path is added to it");
    }
    Ok(u.as_str().trim_end_matches('/').to_string())
}

/// The `Host` a browser sends for a checked public URL: its host, and its port when not the
/// scheme's default.
pub(crate) fn host_of(public_url: &str) -> Option<String> {
    let u = reqwest::Url::parse(public_url).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// The redirect URL the provider's app must list.
pub(crate) fn redirect_url(s: &Shared) -> String {
    format!("{}{CALLBACK_PATH}", s.public_url)
}

/// `POST /ui/connections/{name}/connect`: starts authorizing an `auth: oauth2` connection of
/// the current configuration and sends the browser to the provider (`303`).
pub(crate) async fn start(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = pages::check_csrf(&s, &f.csrf) {
        return r;
    }
    let rt = s.runtime();
    let Some(conn) = rt.plan().connection_named(&name) else {
        return ApiError(
            StatusCode::NOT_FOUND,
            format!("there is no connection `{name}` in the current configuration"),
        )
        .into_response();
    };
    let Some(oauth) = &conn.oauth else {
        return ApiError(
            StatusCode::BAD_REQUEST,
            format!("connection `{name}` does not use OAuth (`auth: oauth2`): there is nothing to authorize"),
        )
        .into_response();
    };
    let Some(vault) = rt.credentials().vault() else {
        return ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this sidecar has no place to store tokens".into(),
        )
        .into_response();
    };
    match Authorization::new(&name, oauth, vault).and_then(|a| a.begin(&redirect_url(&s))) {
        Ok((url, pending)) => {
            s.flows.add(pending, Instant::now());
            tracing::info!(connection = %name, "OAuth authorization started from the status page.");
            Redirect::to(&url).into_response()
        }
        // A configuration problem (the client's variables not set, no key): said on the page.
        Err(e) => pages::back("/", &format!("{e:#}")),
    }
}

/// `GET /oauth/callback?code&state` (or `?error&state`): the provider's answer.
pub(crate) async fn callback(State(s): State<Arc<Shared>>, Query(cb): Query<Callback>) -> Response {
    let pending = cb
        .state
        .as_deref()
        .and_then(|st| s.flows.take(st, Instant::now()));
    let Some(pending) = pending else {
        tracing::warn!("An OAuth answer whose `state` is unknown, expired or already used was refused; nothing was stored.");
        return result_page(
            &s,
            StatusCode::BAD_REQUEST,
            "Not authorized",
            &format!("This answer does not belong to an authorization under way here: its `state` is unknown, expired (after {} minutes) or already used. Nothing was stored. Start again with Connect on the status page.", PENDING_TTL.as_secs() / 60),
        );
    };
    let name = pending.connection().to_string();
    match pending.finish(cb).await {
        Ok(meta) => {
            // Read now, not at the next second's look: held recipes resume at once.
            s.runtime().credentials().sync();
            tracing::info!(connection = %name, "Connection authorized from the status page: the token is stored; its recipes resume.");
            let refreshed = if meta.expires_at.is_some() {
                " It expires and is refreshed as needed."
            } else {
                ""
            };
            result_page(
                &s,
                StatusCode::OK,
                &format!("Connection {name} is authorized"),
                &format!("The token is stored encrypted; recipes held for `{name}` resume now.{refreshed}"),
            )
        }
        Err(e) => {
            tracing::warn!(connection = %name, error = %e, "Authorization from the status page failed; nothing was stored.");
            let status = match e {
                NotConnected::WrongState | NotConnected::Declined(_) => StatusCode::BAD_REQUEST,
                NotConnected::Failed(_) => StatusCode::BAD_GATEWAY,
            };
            result_page(
                &s,
                status,
                "Not authorized",
                &format!("{e} Nothing was stored."),
            )
        }
    }
}

/// The callback's answer: a page anyone reaching the sidecar may see (no form, so no CSRF
/// token), with a link back to the overview (a redirect would not carry the admin cookie).
fn result_page(s: &Shared, status: StatusCode, heading: &str, message: &str) -> Response {
    let class = if status.is_success() { "ok" } else { "failing" };
    let page = pages::render_open(
        s,
        "oauth",
        heading,
        json!({"heading": heading, "message": message, "class": class}),
    );
    (status, page).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Vault;
    use crate::plan::OAuthPlan;
    use crate::secret::Secret;

    /// An authorization of connection `name` begun: its `state` and the flow.
    fn begun(vault: &Vault, name: &str) -> (String, Pending) {
        let plan = OAuthPlan {
            authorize_url: "https://provider.example/oauth".into(),
            token_url: "https://provider.example/token".into(),
            scopes: vec![],
            pkce: true,
            client_id: Ok("id".into()),
            client_secret: Ok(Secret::new("secret")),
        };
        let (url, p) = Authorization::new(name, &plan, vault)
            .unwrap()
            .begin("http://127.0.0.1:9187/oauth/callback")
            .unwrap();
        let state = reqwest::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        (state, p)
    }

    #[test]
    fn an_answer_is_taken_once_and_only_with_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::new(dir.path());
        let (state, p) = begun(&vault, "acme");
        let flows = Flows::default();
        let t0 = Instant::now();
        flows.add(p, t0);
        assert!(flows.take("forged", t0).is_none());
        assert!(flows.take("", t0).is_none());
        let got = flows.take(&state, t0).expect("its own state");
        assert_eq!(got.connection(), "acme");
        assert!(flows.take(&state, t0).is_none(), "used twice");
    }

    #[test]
    fn answers_expire_and_the_oldest_goes_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::new(dir.path());
        let flows = Flows::default();
        let t0 = Instant::now();
        let states: Vec<String> = (0..=MAX_PENDING)
            .map(|i| {
                let (state, p) = begun(&vault, &format!("c{i}"));
                flows.add(p, t0);
                state
            })
            .collect();
        // The first is pushed out; the newest is still there.
        assert!(flows.take(&states[0], t0).is_none());
        assert_eq!(
            flows
                .take(&states[MAX_PENDING], t0)
                .map(|p| p.connection().to_string()),
            Some(format!("c{MAX_PENDING}"))
        );
        // Just before the time to live, the second is still there; at it, nothing is left.
        let almost = t0 + PENDING_TTL - Duration::from_millis(1);
        assert_eq!(
            flows
                .take(&states[1], almost)
                .map(|p| p.connection().to_string()),
            Some("c1".to_string())
        );
        let later = t0 + PENDING_TTL;
        assert!(flows.take(&states[2], later).is_none());
        assert!(flows.0.lock().unwrap().is_empty());
    }

    #[test]
    fn public_urls() {
        for (given, want) in [
            ("http://127.0.0.1:9187", "http://127.0.0.1:9187"),
            ("https://sluice.example.com/", "https://sluice.example.com"),
            ("https://example.com/sluice/", "https://example.com/sluice"),
        ] {
            assert_eq!(check_public_url(given).unwrap(), want);
        }
        assert_eq!(
            host_of("https://Sluice.example.com/x").as_deref(),
            Some("sluice.example.com")
        );
        assert_eq!(
            host_of("http://sluice.example.com:8080").as_deref(),
            Some("sluice.example.com:8080")
        );
        assert_eq!(
            host_of("https://sluice.example.com:443").as_deref(),
            Some("sluice.example.com")
        );
        for bad in [
            "sluice.example.com",
            "ftp://example.com",
            "https://example.com/?a=1",
            "https://example.com/#x",
            "https://user:pw@example.com",
            "",
        ] {
            assert!(check_public_url(bad).is_err(), "{bad}");
        }
        // What may hold a secret is not repeated.
        for bad in [
            "https://user:hunter2@example.com",
            "https://u:hunter2@bad host",
            "https://example.com/?token=hunter2",
            "https://example.com/#hunter2",
        ] {
            let e = format!("{:#}", check_public_url(bad).unwrap_err());
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
