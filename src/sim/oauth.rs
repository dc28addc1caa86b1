//! Intercom's OAuth endpoints: `GET /oauth` (authorize: approves at once and redirects back
//! with a one-time `code` and the given `state`) and `POST /auth/eagle/token` (code, or
//! refresh token, for a token), plus `/_sim/oauth` to set the app and revoke tokens.
//!
//! A token issued here is accepted by the API until it is revoked (or, when the simulator is
//! told to issue expiring tokens, until it expires on the simulator's clock). Decisions where
//! Intercom's docs are silent: an unknown client or a wrong secret is 401 `invalid_client`; an
//! unknown, reused or foreign code is 400 `invalid_grant` (RFC 6749 error bodies); a PKCE
//! challenge, when sent, must be `S256` and is checked; refresh tokens (only when
//! `refresh: true` is set) are single-use and rotate. Intercom itself issues tokens that
//! never expire and no refresh token — the default here. Token requests are audited without
//! their body (it holds the client secret).

use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest as _;

use super::audit::{AuditEntry, AuthSeen};
use super::routes::{q as get, query_pairs};
use super::state::State;

/// The simulated OAuth app and what it issued.
#[derive(Debug)]
pub(crate) struct OAuth {
    client_id: String,
    client_secret: String,
    /// Lifetime of issued tokens (`None`: they never expire, as Intercom's).
    expires_in: Option<i64>,
    /// Whether refresh tokens are issued.
    refresh: bool,
    codes: HashMap<String, Code>,
    /// Issued access token → expiry on the simulator's clock.
    issued: HashMap<String, Option<i64>>,
    /// Refresh token → whether it was used.
    refresh_tokens: HashMap<String, bool>,
    exchanges: u64,
    refreshes: u64,
    seq: u64,
}

#[derive(Debug)]
struct Code {
    redirect_uri: Option<String>,
    challenge: Option<String>,
    used: bool,
}

impl Default for OAuth {
    fn default() -> Self {
        OAuth {
            client_id: "sim-client-id".into(),
            client_secret: "sim-client-secret".into(),
            expires_in: None,
            refresh: false,
            codes: HashMap::new(),
            issued: HashMap::new(),
            refresh_tokens: HashMap::new(),
            exchanges: 0,
            refreshes: 0,
            seq: 0,
        }
    }
}

impl OAuth {
    /// Whether `token` was issued here and has expired at `now`.
    pub(crate) fn expired(&self, token: &str, now: i64) -> bool {
        self.issued
            .get(token)
            .is_some_and(|e| e.is_some_and(|at| now >= at))
    }
}

/// An answer of the OAuth endpoints.
pub(crate) struct OAuthReply {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn oauth_error(status: u16, error: &str, description: &str) -> OAuthReply {
    OAuthReply {
        status,
        location: None,
        body: json!({ "error": error, "error_description": description }).to_string(),
    }
}

fn random(st: &mut State, prefix: &str) -> String {
    st.oauth.seq += 1;
    let n: String = (0..24)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[st.req_rng.usize(0..36)]))
        .collect();
    format!("{prefix}{}{n}", st.oauth.seq)
}

/// Answers `GET /oauth` and `POST /auth/eagle/token`; `None` for other paths.
pub(crate) fn handle(
    st: &mut State,
    method: &str,
    path: &str,
    query: Option<&str>,
    content_type: Option<&str>,
    bytes: &[u8],
) -> Option<OAuthReply> {
    let reply = match (method, path) {
        ("GET", "/oauth") => authorize(st, &query_pairs(query)),
        ("POST", "/auth/eagle/token") => {
            let form = if content_type.is_some_and(|c| c.contains("json")) {
                serde_json::from_slice::<HashMap<String, Value>>(bytes)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                    .collect()
            } else {
                query_pairs(Some(&String::from_utf8_lossy(bytes)))
            };
            token(st, &form)
        }
        _ => return None,
    };
    st.audit_seq += 1;
    let entry = AuditEntry {
        seq: st.audit_seq,
        at: st.now(),
        method: method.to_string(),
        path: path.to_string(),
        query: None,
        body: None,
        status: reply.status,
        auth: AuthSeen::Missing,
        intercom_version: None,
        accept: None,
    };
    st.audit.push(entry);
    Some(reply)
}

fn authorize(st: &mut State, q: &[(String, String)]) -> OAuthReply {
    if get(q, "client_id") != Some(st.oauth.client_id.as_str()) {
        return oauth_error(400, "invalid_request", "unknown client_id");
    }
    let Some(redirect) = get(q, "redirect_uri") else {
        // Intercom would use the app's first registered URL; the simulator has none.
        return oauth_error(400, "invalid_request", "redirect_uri is required");
    };
    let challenge = match (get(q, "code_challenge"), get(q, "code_challenge_method")) {
        (None, _) => None,
        (Some(c), Some("S256")) => Some(c.to_string()),
        (Some(_), _) => {
            return oauth_error(400, "invalid_request", "code_challenge_method must be S256")
        }
    };
    let code = random(st, "code_");
    st.oauth.codes.insert(
        code.clone(),
        Code {
            redirect_uri: Some(redirect.to_string()),
            challenge,
            used: false,
        },
    );
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let mut location = format!("{redirect}{sep}code={}", enc(&code));
    if let Some(s) = get(q, "state") {
        location.push_str(&format!("&state={}", enc(s)));
    }
    OAuthReply {
        status: 302,
        location: Some(location),
        body: String::new(),
    }
}

fn issue(st: &mut State) -> OAuthReply {
    let token = random(st, "tok_sim_oauth_");
    let expires_at = st.oauth.expires_in.map(|s| st.now() + s);
    st.oauth.issued.insert(token.clone(), expires_at);
    st.config.tokens.push(token.clone());
    let mut body = json!({ "token_type": "Bearer", "token": token, "access_token": token });
    if let Some(s) = st.oauth.expires_in {
        body["expires_in"] = json!(s);
    }
    if st.oauth.refresh {
        let r = random(st, "ref_sim_");
        st.oauth.refresh_tokens.insert(r.clone(), false);
        body["refresh_token"] = json!(r);
    }
    OAuthReply {
        status: 200,
        location: None,
        body: body.to_string(),
    }
}

fn token(st: &mut State, f: &[(String, String)]) -> OAuthReply {
    if get(f, "client_id") != Some(st.oauth.client_id.as_str())
        || get(f, "client_secret") != Some(st.oauth.client_secret.as_str())
    {
        return oauth_error(401, "invalid_client", "client authentication failed");
    }
    match get(f, "grant_type").unwrap_or("authorization_code") {
        "authorization_code" => {
            let Some(code) = get(f, "code").and_then(|c| st.oauth.codes.get_mut(c)) else {
                return oauth_error(400, "invalid_grant", "unknown code");
            };
            if code.used {
                return oauth_error(400, "invalid_grant", "the code was already used");
            }
            code.used = true;
            if let (Some(want), Some(got)) = (&code.redirect_uri, get(f, "redirect_uri")) {
                if want != got {
                    return oauth_error(400, "invalid_grant", "redirect_uri does not match");
                }
            }
            if let Some(challenge) = &code.challenge {
                let ok = get(f, "code_verifier").is_some_and(|v| {
                    let d = sha2::Sha256::digest(v.as_bytes());
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d) == *challenge
                });
                if !ok {
                    return oauth_error(400, "invalid_grant", "code_verifier does not match");
                }
            }
            st.oauth.exchanges += 1;
            issue(st)
        }
        "refresh_token" => {
            let Some(used) =
                get(f, "refresh_token").and_then(|r| st.oauth.refresh_tokens.get_mut(r))
            else {
                return oauth_error(400, "invalid_grant", "unknown refresh token");
            };
            if *used {
                return oauth_error(400, "invalid_grant", "the refresh token was already used");
            }
            *used = true;
            st.oauth.refreshes += 1;
            issue(st)
        }
        _ => oauth_error(400, "unsupported_grant_type", "unsupported grant_type"),
    }
}

/// Every token issued through OAuth and not revoked.
pub(crate) fn issued(st: &State) -> Vec<String> {
    st.oauth.issued.keys().cloned().collect()
}

/// `PUT /_sim/oauth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OAuthPatch {
    client_id: Option<String>,
    client_secret: Option<String>,
    /// Seconds; `0` or less: tokens never expire.
    expires_in: Option<i64>,
    refresh: Option<bool>,
}

/// The OAuth app as `/_sim/oauth` shows it (the secret included: it is the simulator's).
pub(crate) fn describe(st: &State) -> Value {
    json!({
        "client_id": st.oauth.client_id,
        "client_secret": st.oauth.client_secret,
        "expires_in": st.oauth.expires_in,
        "refresh": st.oauth.refresh,
        "exchanges": st.oauth.exchanges,
        "refreshes": st.oauth.refreshes,
        "issued": st.oauth.issued.len(),
    })
}

pub(crate) fn apply(st: &mut State, p: OAuthPatch) -> Value {
    if let Some(v) = p.client_id {
        st.oauth.client_id = v;
    }
    if let Some(v) = p.client_secret {
        st.oauth.client_secret = v;
    }
    if let Some(v) = p.expires_in {
        st.oauth.expires_in = (v > 0).then_some(v);
    }
    if let Some(v) = p.refresh {
        st.oauth.refresh = v;
    }
    describe(st)
}

/// `POST /_sim/oauth/revoke`: `{"token": …}` revokes one token, `{}` every token issued
/// through OAuth (the workspace uninstalled the app). Returns how many.
pub(crate) fn revoke(st: &mut State, token: Option<&str>) -> usize {
    if let Some(t) = token {
        st.oauth.issued.remove(t);
        let before = st.config.tokens.len();
        st.config.tokens.retain(|x| x != t);
        return before - st.config.tokens.len();
    }
    let gone: Vec<String> = st.oauth.issued.drain().map(|(t, _)| t).collect();
    st.config.tokens.retain(|x| !gone.contains(x));
    for used in st.oauth.refresh_tokens.values_mut() {
        *used = true;
    }
    gone.len()
}
