//! Intercom endpoints.
//!
//! Owns the request pipeline for every non-`/_sim` request (auth, rate-limit window, injected
//! faults, `Intercom-Version` and `Accept` checks, routing, JSON body parsing, audit) and the
//! handlers of the Intercom 2.15 endpoints the connector uses. Handlers run synchronously under
//! the state lock and return JSON text; transport concerns (latency, dropped connections, HTTP
//! response assembly) live in `mod.rs`.

use std::collections::HashSet;

use axum::http::HeaderMap;
use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};

use super::audit::{AuditEntry, AuthSeen};
use super::error::ApiError;
use super::faults::FaultAction;
use super::objects::{self, as_id, as_int};
use super::search;
use super::seed;
use super::state::{Scroll, State};
use super::store::Kind;

/// A computed response, before HTTP assembly.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Option<String>,
    /// `(limit, remaining, reset)` for the rate-limit headers; `None` on 401.
    pub rate: Option<(u32, u32, i64)>,
    /// Simulator time for the `Date` header.
    pub date: i64,
    /// Close the connection without answering.
    pub drop: bool,
}

enum Out {
    Json(Value),
    Raw(String),
    Empty(u16),
}

type Res = Result<Out, ApiError>;

const VERSIONS: &[&str] = &[
    "1.0", "1.1", "1.2", "1.3", "1.4", "2.0", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7",
    "2.8", "2.9", "2.10", "2.11", "2.12", "2.13", "2.14", "2.15",
];

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn error_body(st: &mut State, e: &ApiError) -> String {
    json!({
        "type": "error.list",
        "request_id": st.request_id(),
        "errors": [{ "code": e.code, "message": e.message }],
    })
    .to_string()
}

fn accepts_json(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let media = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(media.as_str(), "application/json" | "*/*" | "application/*")
    })
}

/// Answers one Intercom request and records it in the audit log.
pub(crate) fn intercom(
    st: &mut State,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Reply {
    let auth = match header(headers, "authorization") {
        None => AuthSeen::Missing,
        Some(h) => match h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
        {
            None => AuthSeen::Missing,
            Some(token)
                if st.config.tokens.iter().any(|t| t == token.trim())
                    && !st.oauth.expired(token.trim(), st.now()) =>
            {
                AuthSeen::Valid
            }
            Some(_) => AuthSeen::Invalid,
        },
    };
    let parsed: Option<Result<Value, ()>> = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(serde_json::from_slice(bytes).map_err(|_| ()))
    };
    let reply = pipeline(st, method, path, query, headers, auth, parsed.clone());
    st.audit_seq += 1;
    let entry = AuditEntry {
        seq: st.audit_seq,
        at: st.now(),
        method: method.to_string(),
        path: path.to_string(),
        query: query.map(str::to_string),
        body: parsed.map(|p| {
            p.unwrap_or_else(|()| Value::String(String::from_utf8_lossy(bytes).into_owned()))
        }),
        status: if reply.drop { 0 } else { reply.status },
        auth,
        intercom_version: header(headers, "intercom-version"),
        accept: header(headers, "accept"),
    };
    st.audit.push(entry);
    reply
}

fn pipeline(
    st: &mut State,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    auth: AuthSeen,
    parsed: Option<Result<Value, ()>>,
) -> Reply {
    let now = st.now();
    let mut reply = Reply {
        status: 200,
        body: None,
        rate: None,
        date: now,
        drop: false,
    };
    if auth != AuthSeen::Valid {
        let e = ApiError::new(401, "unauthorized", "Access Token Invalid");
        reply.status = 401;
        reply.body = Some(error_body(st, &e));
        return reply;
    }
    // Fixed 10-second windows on the simulator clock.
    let start = now - now.rem_euclid(10);
    if st.window.0 != start {
        st.window = (start, 0);
    }
    let limit = st.config.rate_limit_per_window;
    if st.window.1 >= limit {
        let e = ApiError::new(
            429,
            "rate_limit_exceeded",
            format!("Exceeded rate limit of {limit} in 10_seconds"),
        );
        reply.status = 429;
        reply.rate = Some((limit, 0, start + 10));
        reply.body = Some(error_body(st, &e));
        return reply;
    }
    st.window.1 += 1;
    reply.rate = Some((limit, limit - st.window.1, start + 10));
    let fault = st.faults.decide(method, path, &mut st.fault_rng, limit);
    let fail = |st: &mut State, reply: &mut Reply, action: FaultAction| match action {
        FaultAction::Drop => reply.drop = true,
        FaultAction::Fail {
            status,
            code,
            message,
        } => {
            if status >= 400 && status != 429 && path.starts_with("/companies/scroll") {
                // A failed (or, for an injected 404, expired) scroll cannot be resumed: the
                // client must restart it.
                st.scroll = None;
            }
            if status == 429 {
                reply.rate = Some((limit, 0, start + 10));
            }
            reply.status = status;
            reply.body = Some(error_body(st, &ApiError::new(status, &code, message)));
        }
    };
    let after = match fault {
        Some(d) if !d.after_write => {
            fail(st, &mut reply, d.action);
            return reply;
        }
        Some(d) => Some(d.action),
        None => None,
    };
    let result = check_headers(headers).and_then(|()| {
        let body = match parsed {
            None => Ok(Value::Object(Map::new())),
            Some(Ok(v)) => Ok(v),
            Some(Err(())) => Err(ApiError::bad(
                "parameter_invalid",
                "Request body is not valid JSON",
            )),
        };
        route(st, method, path, query, &body)
    });
    match result {
        Ok(Out::Json(v)) => reply.body = Some(v.to_string()),
        Ok(Out::Raw(s)) => reply.body = Some(s),
        Ok(Out::Empty(status)) => reply.status = status,
        Err(e) => {
            reply.status = e.status;
            reply.body = Some(error_body(st, &e));
        }
    }
    if let Some(action) = after {
        // The write is done; the client hears of a failure (or nothing) all the same.
        reply.body = None;
        fail(st, &mut reply, action);
    }
    reply
}

fn check_headers(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(v) = header(headers, "intercom-version") {
        if !VERSIONS.contains(&v.trim()) {
            return Err(ApiError::bad(
                "intercom_version_invalid",
                format!("The requested Intercom-Version '{v}' is not valid"),
            ));
        }
    }
    match header(headers, "accept") {
        Some(a) if accepts_json(&a) => Ok(()),
        _ => Err(ApiError::new(
            406,
            "not_acceptable",
            "The Accept header must allow application/json",
        )),
    }
}

/// A query string's (or a form body's) pairs, decoded.
pub(super) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// The first value of `key` among `pairs`.
pub(super) fn q<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn obj(body: &Result<Value, ApiError>) -> Result<&Map<String, Value>, ApiError> {
    match body {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad(
            "parameter_invalid",
            "Request body must be a JSON object",
        )),
        Err(e) => Err(e.clone()),
    }
}

fn route(
    st: &mut State,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &Result<Value, ApiError>,
) -> Res {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let pairs = query_pairs(query);
    match (method, s.as_slice()) {
        ("GET", ["me"]) => me(st),
        ("GET", ["admins"]) => {
            let admins: Vec<Value> = st
                .tables
                .t(Kind::Admin)
                .ordered()
                .into_iter()
                .cloned()
                .collect();
            Ok(Out::Json(json!({ "type": "admin.list", "admins": admins })))
        }
        ("GET", ["admins", id]) => st
            .cloned(Kind::Admin, id)
            .map(Out::Json)
            .ok_or_else(|| ApiError::not_found("admin_not_found", "Admin not found")),

        ("GET", ["contacts"]) => list_contacts(st, &pairs),
        ("POST", ["contacts"]) => create_contact(st, obj(body)?),
        ("POST", ["contacts", "search"]) => run_search(st, Kind::Contact, obj(body)?),
        ("GET", ["contacts", "find_by_external_id", eid]) => st
            .contact_by_external_id(eid)
            .filter(|c| c["role"] == "user")
            .cloned()
            .map(Out::Json)
            .ok_or_else(ApiError::user_not_found),
        ("GET", ["contacts", id]) => contact(st, id).map(Out::Json),
        ("PUT", ["contacts", id]) => update_contact(st, id, obj(body)?),
        ("DELETE", ["contacts", id]) => delete_contact(st, id),
        ("POST", ["contacts", id, "notes"]) => create_note(st, id, obj(body)?),
        ("GET", ["contacts", id, "notes"]) => list_notes(st, id),
        ("POST", ["contacts", id, "tags"]) => {
            let b = obj(body)?;
            contact(st, id)?;
            let tag_id = b
                .get("id")
                .and_then(as_id)
                .ok_or_else(|| ApiError::bad("parameter_not_found", "tag not specified"))?;
            st.get(Kind::Tag, &tag_id)
                .ok_or_else(ApiError::resource_not_found)?;
            let admin = st.default_admin();
            st.apply_tag(Kind::Contact, id, &tag_id, &admin)
                .map(Out::Json)
                .ok_or_else(ApiError::resource_not_found)
        }
        ("GET", ["contacts", id, "tags"]) => {
            let c = contact(st, id)?;
            let tags: Vec<Value> = c["tags"]["data"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|t| t["id"].as_str().and_then(|tid| st.cloned(Kind::Tag, tid)))
                        .map(tag_basic)
                        .collect()
                })
                .unwrap_or_default();
            Ok(Out::Json(json!({ "type": "list", "data": tags })))
        }
        ("DELETE", ["contacts", id, "tags", tag_id]) => {
            contact(st, id)?;
            let admin = st.default_admin();
            st.remove_tag(Kind::Contact, id, tag_id, &admin)
                .map(Out::Json)
                .ok_or_else(ApiError::resource_not_found)
        }
        ("POST", ["contacts", id, "companies"]) => {
            let b = obj(body)?;
            contact(st, id)?;
            let cid = b
                .get("id")
                .and_then(as_id)
                .ok_or_else(|| ApiError::bad("parameter_not_found", "company not specified"))?;
            st.get(Kind::Company, &cid)
                .ok_or_else(ApiError::company_not_found)?;
            let attached = contact(st, id)?["companies"]["data"]
                .as_array()
                .map_or(0, Vec::len);
            if attached >= 1000 {
                return Err(ApiError::bad(
                    "contact_company_limit_exceeded",
                    "A contact can be attached to at most 1000 companies",
                ));
            }
            st.attach_company(id, &cid, true);
            st.cloned(Kind::Company, &cid)
                .map(Out::Json)
                .ok_or_else(ApiError::company_not_found)
        }
        ("GET", ["contacts", id, "companies"]) => {
            let c = contact(st, id)?;
            let companies: Vec<Value> = c["companies"]["data"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|x| {
                            x["id"]
                                .as_str()
                                .and_then(|cid| st.cloned(Kind::Company, cid))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let n = companies.len();
            Ok(Out::Json(json!({
                "type": "list", "companies": companies, "total_count": n,
                "pages": { "type": "pages", "next": null, "page": 1, "per_page": 50, "total_pages": 1 },
            })))
        }
        ("DELETE", ["contacts", id, "companies", cid]) => {
            contact(st, id)?;
            st.get(Kind::Company, cid)
                .ok_or_else(ApiError::company_not_found)?;
            if !st.detach_company(id, cid, true) {
                return Err(ApiError::company_not_found());
            }
            st.cloned(Kind::Company, cid)
                .map(Out::Json)
                .ok_or_else(ApiError::company_not_found)
        }

        ("POST", ["companies"]) => upsert_company(st, obj(body)?),
        ("GET", ["companies"]) => find_companies(st, &pairs, false),
        ("POST", ["companies", "list"]) => find_companies(st, &pairs, true),
        ("GET", ["companies", "scroll"]) => scroll(st, q(&pairs, "scroll_param")),
        ("GET", ["companies", id]) => st
            .cloned(Kind::Company, id)
            .map(Out::Json)
            .ok_or_else(ApiError::company_not_found),
        ("PUT", ["companies", id]) => update_company(st, id, obj(body)?),
        ("GET", ["companies", id, "contacts"]) => {
            st.get(Kind::Company, id)
                .ok_or_else(ApiError::company_not_found)?;
            let contacts: Vec<Value> = st
                .tables
                .t(Kind::Contact)
                .ordered()
                .into_iter()
                .filter(|c| {
                    c["companies"]["data"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|x| x["id"] == *id))
                })
                .cloned()
                .collect();
            let n = contacts.len();
            Ok(Out::Json(json!({
                "type": "list", "data": contacts, "total_count": n,
                "pages": { "type": "pages", "page": 1, "per_page": n.max(1), "total_pages": 1 },
            })))
        }
        ("DELETE", ["companies", id]) => delete_company(st, id),

        ("POST", ["tickets"]) => create_ticket(st, obj(body)?),
        ("POST", ["tickets", "search"]) => run_search(st, Kind::Ticket, obj(body)?),
        ("GET", ["tickets", id]) => st
            .cloned(Kind::Ticket, id)
            .map(Out::Json)
            .ok_or_else(ApiError::ticket_not_found),
        ("PUT", ["tickets", id]) => update_ticket(st, id, obj(body)?),
        ("DELETE", ["tickets", id]) => {
            hard_delete(st, Kind::Ticket, id, ApiError::ticket_not_found)
        }
        ("POST", ["tickets", id, "tags"]) => {
            exists(st, Kind::Ticket, id, ApiError::ticket_not_found)?;
            tag_object(st, Kind::Ticket, id, obj(body)?)
        }
        ("DELETE", ["tickets", id, "tags", tag_id]) => {
            exists(st, Kind::Ticket, id, ApiError::ticket_not_found)?;
            untag_object(st, Kind::Ticket, id, tag_id, obj(body)?)
        }
        ("GET", ["ticket_types"]) => {
            let types: Vec<Value> = st
                .tables
                .t(Kind::TicketType)
                .ordered()
                .into_iter()
                .cloned()
                .collect();
            Ok(Out::Json(json!({ "type": "list", "data": types })))
        }
        ("GET", ["ticket_types", id]) => st
            .cloned(Kind::TicketType, id)
            .map(Out::Json)
            .ok_or_else(ApiError::resource_not_found),
        ("GET", ["ticket_states"]) => {
            let states: Vec<Value> = st
                .ticket_states
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    s["archived"] = json!(false);
                    s
                })
                .collect();
            Ok(Out::Json(json!({ "type": "list", "data": states })))
        }

        ("POST", ["conversations"]) => create_conversation(st, obj(body)?),
        ("POST", ["messages"]) => create_message(st, obj(body)?),
        ("POST", ["conversations", "search"]) => run_search(st, Kind::Conversation, obj(body)?),
        ("GET", ["conversations", id]) => st
            .cloned(Kind::Conversation, id)
            .map(|mut c| {
                if q(&pairs, "display_as") == Some("plaintext") {
                    objects::plaintext_bodies(&mut c);
                }
                Out::Json(c)
            })
            .ok_or_else(ApiError::resource_not_found),
        ("PUT", ["conversations", id]) => update_conversation(st, id, obj(body)?),
        ("DELETE", ["conversations", id]) => {
            hard_delete(st, Kind::Conversation, id, ApiError::resource_not_found)
        }
        ("POST", ["conversations", id, "convert"]) => convert(st, id, obj(body)?),
        ("POST", ["conversations", id, "parts"]) => conversation_part(st, id, obj(body)?),
        ("POST", ["conversations", id, "tags"]) => {
            exists(st, Kind::Conversation, id, conversation_not_found)?;
            tag_object(st, Kind::Conversation, id, obj(body)?)
        }
        ("DELETE", ["conversations", id, "tags", tag_id]) => {
            exists(st, Kind::Conversation, id, conversation_not_found)?;
            untag_object(st, Kind::Conversation, id, tag_id, obj(body)?)
        }

        ("POST", ["tags"]) => create_tag(st, obj(body)?),
        ("GET", ["tags"]) => {
            let tags: Vec<Value> = st
                .tables
                .t(Kind::Tag)
                .ordered()
                .into_iter()
                .cloned()
                .map(tag_basic)
                .collect();
            Ok(Out::Json(json!({ "type": "list", "data": tags })))
        }
        ("GET", ["tags", id]) => st
            .cloned(Kind::Tag, id)
            .map(tag_basic)
            .map(Out::Json)
            .ok_or_else(ApiError::resource_not_found),
        ("DELETE", ["tags", id]) => {
            st.get(Kind::Tag, id)
                .ok_or_else(ApiError::resource_not_found)?;
            st.strip_tag_everywhere(id);
            st.tables.t_mut(Kind::Tag).remove(id);
            Ok(Out::Empty(200))
        }

        ("POST", ["events"]) => create_event(st, obj(body)?),

        _ => Err(ApiError::resource_not_found()),
    }
}

fn tag_basic(t: Value) -> Value {
    objects::tag(
        t["id"].as_str().unwrap_or(""),
        t["name"].as_str().unwrap_or(""),
    )
}

fn me(st: &mut State) -> Res {
    let admin_id = st.default_admin();
    let a = st.cloned(Kind::Admin, &admin_id).unwrap_or(Value::Null);
    let created = as_int(&a["created_at"]).unwrap_or(0);
    Ok(Out::Json(json!({
        "type": "admin",
        "id": a["id"],
        "name": a["name"],
        "email": a["email"],
        "job_title": a["job_title"],
        "away_mode_enabled": false,
        "away_mode_reassign": false,
        "has_inbox_seat": true,
        "team_ids": [],
        "avatar": { "type": "avatar", "image_url": null },
        "email_verified": true,
        "app": {
            "type": "app",
            "id_code": st.workspace_id,
            "name": "Sluice Simulator",
            "region": "US",
            "timezone": st.config.timezone.name(),
            "created_at": created,
            "identity_verification": false,
        },
    })))
}

fn run_search(st: &mut State, kind: Kind, body: &Map<String, Value>) -> Res {
    let s = search::parse(
        kind,
        &Value::Object(body.clone()),
        st.config.timezone,
        st.config.strict_gt,
    )?;
    let now = st.now();
    let lag = st.lag();
    Ok(Out::Raw(search::run(st.tables.t(kind), &s, now, lag)))
}

// ---------------------------------------------------------------- contacts

fn contact(st: &State, id: &str) -> Result<Value, ApiError> {
    st.cloned(Kind::Contact, id)
        .ok_or_else(ApiError::user_not_found)
}

/// `GET /contacts`: `(created_at, id)` order with a `starting_after` query-string cursor.
fn list_contacts(st: &mut State, pairs: &[(String, String)]) -> Res {
    let per_page = q(pairs, "per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, search::MAX_PER_PAGE);
    let after: Option<(u64, (i64, String))> =
        match q(pairs, "starting_after").filter(|s| !s.is_empty()) {
            None => None,
            Some(c) => {
                let bad = || ApiError::bad("parameter_invalid", "starting_after is invalid");
                let v: Value = search::base64_decode(c)
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(bad)?;
                let page = v[0].as_u64().ok_or_else(bad)?;
                let key = (
                    v[1].as_i64().ok_or_else(bad)?,
                    v[2].as_str().ok_or_else(bad)?.to_string(),
                );
                Some((page, key))
            }
        };
    let t = st.tables.t(Kind::Contact);
    let iter: Box<dyn Iterator<Item = &(i64, String)>> = match &after {
        None => Box::new(t.by_created.iter()),
        Some((_, k)) => Box::new(t.by_created.range((
            std::ops::Bound::Excluded(k.clone()),
            std::ops::Bound::Unbounded,
        ))),
    };
    let keys: Vec<(i64, String)> = iter.take(per_page + 1).cloned().collect();
    let more = keys.len() > per_page;
    let data: Vec<Value> = keys
        .iter()
        .take(per_page)
        .filter_map(|(_, id)| t.get(id).cloned())
        .collect();
    let total = t.recs.len();
    let page = after.map_or(1, |(p, _)| p);
    let mut pages = json!({ "type": "pages", "page": page, "per_page": per_page, "total_pages": total.div_ceil(per_page) });
    if more {
        if let Some((ts, id)) = keys.get(per_page - 1) {
            let cursor = search::base64_encode(json!([page + 1, ts, id]).to_string().as_bytes());
            pages["next"] =
                json!({ "page": page + 1, "per_page": per_page, "starting_after": cursor });
        }
    }
    Ok(Out::Json(
        json!({ "type": "list", "data": data, "total_count": total, "pages": pages }),
    ))
}

fn conflicting_contact(
    st: &State,
    body: &Map<String, Value>,
    role: &str,
    except: Option<&str>,
) -> Option<String> {
    let email = body
        .get("email")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty());
    let external = body.get("external_id").and_then(as_id);
    if email.is_none() && external.is_none() {
        return None;
    }
    st.tables
        .t(Kind::Contact)
        .ordered()
        .into_iter()
        .find_map(|c| {
            let id = c["id"].as_str()?;
            if Some(id) == except {
                return None;
            }
            let email_hit = email.is_some_and(|e| {
                c["role"] == role
                    && c["email"]
                        .as_str()
                        .is_some_and(|ce| ce.eq_ignore_ascii_case(e))
            });
            let ext_hit = external
                .as_deref()
                .is_some_and(|x| c["external_id"].as_str() == Some(x));
            (email_hit || ext_hit).then(|| id.to_string())
        })
}

fn validate_contact_body(body: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(r) = body.get("role") {
        if !(r == "user" || r == "lead") {
            return Err(ApiError::bad(
                "parameter_invalid",
                "role must be 'user' or 'lead'",
            ));
        }
    }
    for k in ["email", "name", "phone"] {
        if let Some(v) = body.get(k) {
            if !(v.is_string() || v.is_null()) {
                return Err(ApiError::bad(
                    "parameter_invalid",
                    format!("{k} must be a string"),
                ));
            }
        }
    }
    Ok(())
}

fn create_contact(st: &mut State, body: &Map<String, Value>) -> Res {
    let has = |k: &str| body.get(k).is_some_and(|v| !v.is_null() && v != "");
    if !(has("email") || has("external_id") || has("role")) {
        return Err(ApiError::bad(
            "parameter_invalid",
            "Contact must have at least one of email, external_id or role",
        ));
    }
    validate_contact_body(body)?;
    let role = body
        .get("role")
        .and_then(Value::as_str)
        .unwrap_or("user")
        .to_string();
    if let Some(id) = conflicting_contact(st, body, &role, None) {
        return Err(ApiError::new(
            409,
            "conflict",
            format!("A contact matching those details already exists with id={id}"),
        ));
    }
    let now = st.now();
    let id = st.hex_id(now);
    let mut c = objects::contact(&id, &st.workspace_id.clone(), now);
    objects::apply_contact(&mut c, body);
    c["role"] = json!(role);
    st.write(Kind::Contact, c.clone());
    Ok(Out::Json(c))
}

fn update_contact(st: &mut State, id: &str, body: &Map<String, Value>) -> Res {
    let mut c = contact(st, id)?;
    validate_contact_body(body)?;
    let role = body
        .get("role")
        .and_then(Value::as_str)
        .or(c["role"].as_str())
        .unwrap_or("user")
        .to_string();
    if let Some(other) = conflicting_contact(st, body, &role, Some(id)) {
        return Err(ApiError::new(
            409,
            "conflict",
            format!("A contact matching those details already exists with id={other}"),
        ));
    }
    objects::apply_contact(&mut c, body);
    st.write_bumped(Kind::Contact, c);
    contact(st, id).map(Out::Json)
}

fn delete_contact(st: &mut State, id: &str) -> Res {
    let c = contact(st, id)?;
    let companies: Vec<String> = c["companies"]["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|x| x["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for cid in companies {
        st.detach_company(id, &cid, false);
    }
    st.tables.t_mut(Kind::Contact).remove(id);
    Ok(Out::Json(
        json!({ "id": id, "external_id": c["external_id"], "type": "contact", "deleted": true }),
    ))
}

fn create_note(st: &mut State, id: &str, body: &Map<String, Value>) -> Res {
    let mut c = contact(st, id)?;
    let text = body
        .get("body")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad("parameter_not_found", "body not specified"))?;
    let admin_id = match body.get("admin_id").filter(|v| !v.is_null()) {
        Some(v) => as_id(v).ok_or_else(ApiError::resource_not_found)?,
        None => st.default_admin(),
    };
    let admin = st
        .cloned(Kind::Admin, &admin_id)
        .ok_or_else(ApiError::resource_not_found)?;
    let now = st.now();
    let note_id = st.next_num("notes", 30);
    let note = json!({
        "type": "note",
        "id": note_id,
        "created_at": now,
        "contact": { "type": "contact", "id": id },
        "author": admin,
        "body": objects::html_body(text),
    });
    let mut stored = note.clone();
    stored["updated_at"] = json!(now);
    st.write(Kind::Note, stored);
    if let Some(d) = c["notes"]["data"].as_array_mut() {
        d.push(json!({ "type": "note", "id": note_id, "url": format!("/notes/{note_id}") }));
        let n = d.len();
        c["notes"]["total_count"] = json!(n);
    }
    st.write_bumped(Kind::Contact, c);
    Ok(Out::Json(note))
}

fn list_notes(st: &mut State, id: &str) -> Res {
    contact(st, id)?;
    let notes: Vec<Value> = st
        .tables
        .t(Kind::Note)
        .ordered()
        .into_iter()
        .filter(|n| n["contact"]["id"] == id)
        .map(|n| {
            let mut n = n.clone();
            if let Some(m) = n.as_object_mut() {
                m.remove("updated_at");
            }
            n
        })
        .collect();
    let total = notes.len();
    Ok(Out::Json(json!({
        "type": "list", "data": notes, "total_count": total,
        "pages": { "type": "pages", "next": null, "page": 1, "per_page": 50, "total_pages": 1 },
    })))
}

// ---------------------------------------------------------------- companies

fn reject_unknown_keys(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad("bad_request", format!("bad '{k}' parameter"))),
        None => Ok(()),
    }
}

fn upsert_company(st: &mut State, body: &Map<String, Value>) -> Res {
    reject_unknown_keys(body, objects::COMPANY_CREATE_KEYS)?;
    let company_id = body.get("company_id").and_then(as_id);
    let existing = company_id.as_deref().and_then(|cid| {
        st.tables
            .t(Kind::Company)
            .ordered()
            .into_iter()
            .find(|c| c["company_id"] == cid)
            .cloned()
    });
    if let Some(mut c) = existing {
        let mut update = body.clone();
        update.remove("company_id");
        objects::apply_company(&mut c, &update);
        let id = c["id"].as_str().unwrap_or("").to_string();
        st.write_bumped(Kind::Company, c);
        return st
            .cloned(Kind::Company, &id)
            .map(Out::Json)
            .ok_or_else(ApiError::company_not_found);
    }
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    if company_id.is_none() && name.is_none() {
        return Err(ApiError::bad(
            "parameter_invalid",
            "company_id or name is required",
        ));
    }
    let now = st.now();
    let id = st.hex_id(now);
    let cid = match company_id {
        Some(c) => c,
        None => format!("cmp_{}", st.next_num("company_seq", 1)),
    };
    let mut c = objects::company(&id, &cid, &st.workspace_id.clone(), now);
    objects::apply_company(&mut c, body);
    st.write(Kind::Company, c.clone());
    Ok(Out::Json(c))
}

fn update_company(st: &mut State, id: &str, body: &Map<String, Value>) -> Res {
    let mut c = st
        .cloned(Kind::Company, id)
        .ok_or_else(ApiError::company_not_found)?;
    reject_unknown_keys(body, objects::COMPANY_UPDATE_KEYS)?;
    objects::apply_company(&mut c, body);
    st.write_bumped(Kind::Company, c);
    st.cloned(Kind::Company, id)
        .map(Out::Json)
        .ok_or_else(ApiError::company_not_found)
}

/// The tag endpoints' 404 for a conversation.
fn conversation_not_found() -> ApiError {
    ApiError::not_found("not_found", "Conversation not found")
}

/// Fails with `missing()` unless the object exists.
fn exists(st: &State, kind: Kind, id: &str, missing: fn() -> ApiError) -> Result<(), ApiError> {
    st.get(kind, id).map(|_| ()).ok_or_else(missing)
}

/// A permanent delete (tickets, conversations): `{"id", "object", "deleted": true}`.
fn hard_delete(st: &mut State, kind: Kind, id: &str, missing: fn() -> ApiError) -> Res {
    st.tables.t_mut(kind).remove(id).ok_or_else(missing)?;
    let object = match kind {
        Kind::Ticket => "ticket",
        _ => "conversation",
    };
    Ok(Out::Json(
        json!({ "id": id, "object": object, "deleted": true }),
    ))
}

fn delete_company(st: &mut State, id: &str) -> Res {
    st.get(Kind::Company, id)
        .ok_or_else(ApiError::company_not_found)?;
    st.detach_all_from_company(id);
    st.tables.t_mut(Kind::Company).remove(id);
    Ok(Out::Json(
        json!({ "id": id, "object": "company", "deleted": true }),
    ))
}

fn visible_company(c: &Value) -> bool {
    as_int(&c["user_count"]).unwrap_or(0) > 0
}

fn find_companies(st: &mut State, pairs: &[(String, String)], post_list: bool) -> Res {
    let one = |c: Value| {
        json!({
            "type": "list", "data": [c], "total_count": 1,
            "pages": { "type": "pages", "page": 1, "per_page": 15, "total_pages": 1 },
        })
    };
    if !post_list {
        if let Some(cid) = q(pairs, "company_id") {
            let found = st
                .tables
                .t(Kind::Company)
                .ordered()
                .into_iter()
                .find(|c| c["company_id"] == cid)
                .cloned();
            return found
                .map(one)
                .map(Out::Json)
                .ok_or_else(ApiError::company_not_found);
        }
        if let Some(name) = q(pairs, "name") {
            let found = st
                .tables
                .t(Kind::Company)
                .ordered()
                .into_iter()
                .find(|c| {
                    c["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
                })
                .cloned();
            return found
                .map(one)
                .map(Out::Json)
                .ok_or_else(ApiError::company_not_found);
        }
    }
    let page = q(pairs, "page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let per_page = q(pairs, "per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(15)
        .clamp(1, 60);
    if page.saturating_mul(per_page) > 10_000 {
        return Err(ApiError::bad(
            "parameter_invalid",
            "page limit reached, please use scroll API",
        ));
    }
    let tag = q(pairs, "tag_id");
    let mut all: Vec<Value> = st
        .tables
        .t(Kind::Company)
        .ordered()
        .into_iter()
        .filter(|c| visible_company(c))
        .filter(|c| {
            tag.is_none_or(|t| {
                c["tags"]["tags"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x["id"] == t))
            })
        })
        .cloned()
        .collect();
    all.sort_by(|a, b| {
        as_int(&b["last_request_at"])
            .cmp(&as_int(&a["last_request_at"]))
            .then_with(|| a["id"].as_str().cmp(&b["id"].as_str()))
    });
    if q(pairs, "order") == Some("asc") {
        all.reverse();
    }
    let total = all.len();
    let data: Vec<Value> = all
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let total_pages = total.div_ceil(per_page);
    let mut pages =
        json!({ "type": "pages", "page": page, "per_page": per_page, "total_pages": total_pages });
    if page < total_pages {
        pages["next"] = json!({ "page": page + 1, "per_page": per_page, "starting_after": null });
    }
    Ok(Out::Json(
        json!({ "type": "list", "data": data, "total_count": total, "pages": pages }),
    ))
}

/// Scroll idle expiry on the simulator clock.
const SCROLL_TTL: i64 = 60;

fn scroll(st: &mut State, param: Option<&str>) -> Res {
    let now = st.now();
    if st
        .scroll
        .as_ref()
        .is_some_and(|s| now - s.last_used > SCROLL_TTL)
    {
        st.scroll = None;
    }
    let param = param.filter(|p| !p.is_empty());
    let mut current = match (param, st.scroll.take()) {
        (None, Some(open)) => {
            st.scroll = Some(open);
            return Err(ApiError::bad(
                "scroll_exists",
                "scroll already exists for this app",
            ));
        }
        (None, None) => Scroll {
            param: st.request_id(),
            last: None,
            last_used: now,
        },
        (Some(p), Some(open)) if open.param == p => open,
        (Some(_), open) => {
            st.scroll = open;
            return Err(ApiError::bad(
                "parameter_invalid",
                "scroll_param is invalid or has expired",
            ));
        }
    };
    let t = st.tables.t(Kind::Company);
    let start = current.last.clone();
    let iter: Box<dyn Iterator<Item = &(i64, String)>> = match start {
        None => Box::new(t.by_created.iter()),
        Some(k) => Box::new(
            t.by_created
                .range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
        ),
    };
    let mut page = Vec::new();
    let mut last = None;
    for key in iter {
        if let Some(c) = t.get(&key.1) {
            if visible_company(c) {
                page.push(c.clone());
                last = Some(key.clone());
                if page.len() >= st.config.scroll_page_size.max(1) {
                    break;
                }
            }
        }
    }
    let scroll_param = current.param.clone();
    if page.is_empty() {
        // Reaching the end closes the scroll.
        st.scroll = None;
    } else {
        current.last = last;
        current.last_used = now;
        st.scroll = Some(current);
    }
    Ok(Out::Json(
        json!({ "type": "list", "data": page, "pages": null, "total_count": null, "scroll_param": scroll_param }),
    ))
}

// ---------------------------------------------------------------- tags

fn required_admin(st: &State, body: &Map<String, Value>) -> Result<String, ApiError> {
    let admin_id = body
        .get("admin_id")
        .and_then(as_id)
        .ok_or_else(|| ApiError::bad("parameter_not_found", "admin_id not specified"))?;
    st.get(Kind::Admin, &admin_id)
        .ok_or_else(|| ApiError::not_found("admin_not_found", "Admin not found"))?;
    Ok(admin_id)
}

fn tag_object(st: &mut State, kind: Kind, id: &str, body: &Map<String, Value>) -> Res {
    let tag_id = body
        .get("id")
        .and_then(as_id)
        .ok_or_else(|| ApiError::bad("parameter_not_found", "tag id not specified"))?;
    let admin_id = required_admin(st, body)?;
    st.get(Kind::Tag, &tag_id)
        .ok_or_else(ApiError::resource_not_found)?;
    st.apply_tag(kind, id, &tag_id, &admin_id)
        .map(Out::Json)
        .ok_or_else(ApiError::resource_not_found)
}

fn untag_object(
    st: &mut State,
    kind: Kind,
    id: &str,
    tag_id: &str,
    body: &Map<String, Value>,
) -> Res {
    let admin_id = required_admin(st, body)?;
    st.remove_tag(kind, id, tag_id, &admin_id)
        .map(Out::Json)
        .ok_or_else(|| ApiError::not_found("tag_not_found", "Tag not found"))
}

fn create_tag(st: &mut State, body: &Map<String, Value>) -> Res {
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad("parameter_invalid", "invalid tag parameters"))?
        .to_string();
    let tag = if let Some(id) = body.get("id").and_then(as_id) {
        let mut t = st
            .cloned(Kind::Tag, &id)
            .ok_or_else(ApiError::resource_not_found)?;
        t["name"] = json!(name);
        st.write_bumped(Kind::Tag, t.clone());
        t
    } else {
        let existing = st
            .tables
            .t(Kind::Tag)
            .ordered()
            .into_iter()
            .find(|t| {
                t["name"]
                    .as_str()
                    .is_some_and(|n| n.to_lowercase() == name.to_lowercase())
            })
            .cloned();
        match existing {
            Some(t) => t,
            None => {
                let id = st.next_num("tags", 100);
                let now = st.now();
                let mut t = objects::tag(&id, &name);
                t["created_at"] = json!(now);
                t["updated_at"] = json!(now);
                st.write(Kind::Tag, t.clone());
                t
            }
        }
    };
    let tag_id = tag["id"].as_str().unwrap_or("").to_string();
    let admin = st.default_admin();
    if let Some(users) = body.get("users").and_then(Value::as_array) {
        for u in users {
            let cid = u
                .get("id")
                .and_then(as_id)
                .ok_or_else(ApiError::user_not_found)?;
            contact(st, &cid)?;
            if u.get("untag") == Some(&json!(true)) {
                st.remove_tag(Kind::Contact, &cid, &tag_id, &admin);
            } else {
                st.apply_tag(Kind::Contact, &cid, &tag_id, &admin);
            }
        }
    }
    if let Some(companies) = body.get("companies").and_then(Value::as_array) {
        for c in companies {
            let found = match (
                c.get("id").and_then(as_id),
                c.get("company_id").and_then(as_id),
            ) {
                (Some(id), _) => st.cloned(Kind::Company, &id),
                (None, Some(cid)) => st
                    .tables
                    .t(Kind::Company)
                    .ordered()
                    .into_iter()
                    .find(|x| x["company_id"] == cid)
                    .cloned(),
                _ => None,
            };
            let mut company = found.ok_or_else(ApiError::company_not_found)?;
            if let Some(d) = company["tags"]["tags"].as_array_mut() {
                d.retain(|t| t["id"] != tag_id);
                if c.get("untag") != Some(&json!(true)) {
                    d.push(tag_basic(tag.clone()));
                }
            }
            st.write_bumped(Kind::Company, company);
        }
    }
    Ok(Out::Json(tag_basic(tag)))
}

// ---------------------------------------------------------------- tickets

fn resolve_ticket_contact(st: &mut State, item: &Value) -> Result<Value, ApiError> {
    if let Some(id) = item.get("id").and_then(as_id) {
        return contact(st, &id);
    }
    if let Some(eid) = item.get("external_id").and_then(as_id) {
        return st
            .contact_by_external_id(&eid)
            .cloned()
            .ok_or_else(ApiError::user_not_found);
    }
    if let Some(email) = item
        .get("email")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    {
        if let Some(c) = st.contact_by_email(email) {
            return Ok(c.clone());
        }
        let now = st.now();
        let id = st.hex_id(now);
        let mut c = objects::contact(&id, &st.workspace_id.clone(), now);
        let mut input = Map::new();
        input.insert("email".into(), json!(email));
        objects::apply_contact(&mut c, &input);
        st.write(Kind::Contact, c.clone());
        return Ok(c);
    }
    Err(ApiError::bad(
        "parameter_invalid",
        "contacts items need one of id, external_id or email",
    ))
}

fn create_ticket(st: &mut State, body: &Map<String, Value>) -> Res {
    let type_id = body
        .get("ticket_type_id")
        .and_then(as_id)
        .ok_or_else(|| ApiError::bad("parameter_not_found", "ticket_type_id not specified"))?;
    let tt = st
        .cloned(Kind::TicketType, &type_id)
        .ok_or_else(|| ApiError::bad("parameter_invalid", "ticket_type_id is invalid"))?;
    let contacts = body
        .get("contacts")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad("parameter_not_found", "contacts not specified"))?;
    if contacts.len() != 1 {
        return Err(ApiError::bad(
            "parameter_invalid",
            "contacts must contain exactly one contact",
        ));
    }
    let company = match body.get("company_id").filter(|v| !v.is_null()) {
        Some(v) => {
            let cid = as_id(v).ok_or_else(ApiError::company_not_found)?;
            st.get(Kind::Company, &cid)
                .ok_or_else(ApiError::company_not_found)?;
            Some(cid)
        }
        None => None,
    };
    let assignment = body.get("assignment").cloned().unwrap_or(Value::Null);
    let admin_assignee = assignment
        .get("admin_assignee_id")
        .and_then(as_id)
        .filter(|a| a != "0");
    if let Some(a) = &admin_assignee {
        st.get(Kind::Admin, a)
            .ok_or_else(|| ApiError::not_found("assignee_not_found", "Assignee not found"))?;
    }
    let c = resolve_ticket_contact(st, &contacts[0])?;
    let now = st.now();
    let created = body.get("created_at").and_then(as_int).unwrap_or(now);
    let attrs = body.get("ticket_attributes").cloned().unwrap_or(json!({}));
    let mut t = seed::build_ticket(st, &tt, &c, &attrs, created, now);
    if let Some(a) = admin_assignee {
        t["admin_assignee_id"] = json!(a);
    }
    if let Some(team) = assignment.get("team_assignee_id").and_then(as_id) {
        t["team_assignee_id"] = json!(team);
    }
    if let Some(cid) = company {
        t["company_id"] = json!(cid);
    }
    st.write(Kind::Ticket, t.clone());
    Ok(Out::Json(t))
}

fn update_ticket(st: &mut State, id: &str, body: &Map<String, Value>) -> Res {
    let mut t = st
        .cloned(Kind::Ticket, id)
        .ok_or_else(ApiError::ticket_not_found)?;
    let assignee_err = || ApiError::not_found("assignee_not_found", "Assignee not found");
    let actor = match body.get("admin_id").filter(|v| !v.is_null()) {
        Some(v) => {
            let a = as_id(v).ok_or_else(assignee_err)?;
            st.get(Kind::Admin, &a).ok_or_else(assignee_err)?;
            a
        }
        None => st.default_admin(),
    };
    if let Some(v) = body.get("assignee_id").filter(|v| !v.is_null()) {
        let a = as_id(v).ok_or_else(assignee_err)?;
        if a != "0" {
            st.get(Kind::Admin, &a).ok_or_else(assignee_err)?;
        }
        t["admin_assignee_id"] = json!(a);
    }
    let now = st.now();
    if let Some(v) = body.get("ticket_state_id").filter(|v| !v.is_null()) {
        let invalid = || ApiError::bad("ticket_state_id_invalid", "Ticket state id is invalid");
        let sid = as_id(v).ok_or_else(invalid)?;
        let allowed = st
            .cloned(
                Kind::TicketType,
                t["ticket_type"]["id"].as_str().unwrap_or(""),
            )
            .and_then(|tt| tt["ticket_states"]["data"].as_array().cloned())
            .unwrap_or_default();
        let state = allowed
            .into_iter()
            .find(|s| s["id"] == sid.as_str())
            .ok_or_else(invalid)?;
        if t["ticket_state"]["id"] != state["id"] {
            let part_id = st.next_num("parts", 100);
            let admin = st.cloned(Kind::Admin, &actor).unwrap_or(Value::Null);
            let mut part = objects::ticket_part(
                &part_id,
                "ticket_state_updated_by_admin",
                None,
                now,
                objects::admin_author(&admin),
            );
            part["previous_ticket_state"] = t["ticket_state"]["category"].clone();
            part["ticket_state"] = state["category"].clone();
            if let Some(d) = t["ticket_parts"]["ticket_parts"].as_array_mut() {
                d.push(part);
                let n = d.len();
                t["ticket_parts"]["total_count"] = json!(n);
            }
            t["open"] = json!(state["category"] != "resolved");
            t["ticket_state"] = state;
        }
    }
    if let Some(attrs) = body.get("ticket_attributes") {
        objects::merge_object(&mut t["ticket_attributes"], attrs);
    }
    if let Some(v) = body.get("company_id") {
        match v {
            Value::Null => {
                if let Some(m) = t.as_object_mut() {
                    m.remove("company_id");
                }
            }
            _ => {
                let cid = as_id(v).ok_or_else(ApiError::company_not_found)?;
                st.get(Kind::Company, &cid)
                    .ok_or_else(ApiError::company_not_found)?;
                t["company_id"] = json!(cid);
            }
        }
    }
    if let Some(b) = body.get("is_shared").and_then(Value::as_bool) {
        t["is_shared"] = json!(b);
    }
    if let Some(s) = body.get("snoozed_until").and_then(as_int) {
        t["snoozed_until"] = json!(s);
    }
    if let Some(open) = body.get("open").and_then(Value::as_bool) {
        t["open"] = json!(open);
        if !open {
            if let Some(m) = t.as_object_mut() {
                m.remove("snoozed_until");
            }
        }
    }
    st.write_bumped(Kind::Ticket, t);
    st.cloned(Kind::Ticket, id)
        .map(Out::Json)
        .ok_or_else(ApiError::ticket_not_found)
}

// ---------------------------------------------------------------- conversations

fn create_conversation(st: &mut State, body: &Map<String, Value>) -> Res {
    let from = body
        .get("from")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad("parameter_not_found", "from not specified"))?;
    let from_type = from.get("type").and_then(Value::as_str).unwrap_or("");
    if !matches!(from_type, "user" | "lead" | "contact") {
        return Err(ApiError::bad(
            "parameter_invalid",
            "from.type must be one of user, lead or contact",
        ));
    }
    let cid = from
        .get("id")
        .and_then(as_id)
        .ok_or_else(|| ApiError::bad("parameter_not_found", "from.id not specified"))?;
    let text = body
        .get("body")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| ApiError::bad("parameter_not_found", "body not specified"))?
        .to_string();
    if body
        .get("attachment_urls")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 10)
    {
        return Err(ApiError::bad(
            "parameter_invalid",
            "attachment_urls can contain at most 10 URLs",
        ));
    }
    let c = contact(st, &cid)?;
    let now = st.now();
    let created = body.get("created_at").and_then(as_int).unwrap_or(now);
    let subject = body
        .get("subject")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let (mut conv, message_id) = seed::build_conversation(st, &c, &text, &subject, created);
    if let Some(urls) = body.get("attachment_urls").and_then(Value::as_array) {
        conv["source"]["attachments"] = Value::Array(
            urls.iter()
                .filter_map(Value::as_str)
                .map(|u| json!({ "type": "upload", "name": u.rsplit('/').next().unwrap_or(u), "url": u, "content_type": "application/octet-stream", "filesize": 0, "width": 0, "height": 0 }))
                .collect(),
        );
    }
    let conversation_id = conv["id"].clone();
    st.write_bumped(Kind::Conversation, conv);
    let mut msg = json!({
        "type": "user_message",
        "id": message_id,
        "created_at": created,
        "body": text,
        "message_type": "inapp",
        "conversation_id": conversation_id,
    });
    if !subject.is_empty() {
        msg["subject"] = json!(subject);
    }
    Ok(Out::Json(msg))
}

/// `POST /messages`: an admin-initiated message. A conversation exists only when
/// `create_conversation_without_contact_reply` is true (the contact never replies here).
fn create_message(st: &mut State, body: &Map<String, Value>) -> Res {
    let missing = |f: &str| ApiError::bad("parameter_not_found", format!("{f} not specified"));
    let message_type = body
        .get("message_type")
        .and_then(Value::as_str)
        .ok_or_else(|| missing("message_type"))?;
    let message_type = match message_type {
        "in_app" | "inapp" | "conversation" => "inapp",
        "email" => "email",
        other => {
            return Err(ApiError::bad(
                "parameter_invalid",
                format!("message_type '{other}' is not supported"),
            ))
        }
    };
    let text = body
        .get("body")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| missing("body"))?;
    let subject = body.get("subject").and_then(Value::as_str).unwrap_or("");
    if message_type == "email" && subject.is_empty() {
        return Err(ApiError::bad(
            "parameter_invalid",
            "subject is required for email messages",
        ));
    }
    let from = body
        .get("from")
        .and_then(Value::as_object)
        .ok_or_else(|| missing("from"))?;
    let admin_id = from
        .get("id")
        .and_then(as_id)
        .ok_or_else(|| missing("from.id"))?;
    let admin = st
        .cloned(Kind::Admin, &admin_id)
        .ok_or_else(|| ApiError::not_found("admin_not_found", "Admin not found"))?;
    let to = body
        .get("to")
        .and_then(Value::as_object)
        .ok_or_else(|| missing("to"))?;
    let c = match (
        to.get("id").and_then(as_id),
        to.get("email").and_then(Value::as_str),
    ) {
        (Some(id), _) => contact(st, &id)?,
        (None, Some(email)) => st
            .contact_by_email(email)
            .cloned()
            .ok_or_else(ApiError::user_not_found)?,
        _ => return Err(missing("to.id")),
    };
    let now = st.now();
    let created = body.get("created_at").and_then(as_int).unwrap_or(now);
    let mut msg = json!({
        "type": "admin_message",
        "id": st.next_num("messages", 403_918_330),
        "created_at": created,
        "subject": subject,
        "body": text,
        "message_type": message_type,
    });
    if body.get("create_conversation_without_contact_reply") == Some(&json!(true)) {
        let (mut conv, _) = seed::build_conversation(st, &c, text, subject, created);
        conv["source"]["delivered_as"] = json!("admin_initiated");
        conv["source"]["author"] = objects::admin_author(&admin);
        conv["source"]["id"] = msg["id"].clone();
        conv["waiting_since"] = Value::Null;
        msg["conversation_id"] = conv["id"].clone();
        st.write_bumped(Kind::Conversation, conv);
    }
    Ok(Out::Json(msg))
}

fn update_conversation(st: &mut State, id: &str, body: &Map<String, Value>) -> Res {
    let mut c = st
        .cloned(Kind::Conversation, id)
        .ok_or_else(ApiError::resource_not_found)?;
    if let Some(r) = body.get("read").and_then(Value::as_bool) {
        c["read"] = json!(r);
    }
    if let Some(t) = body.get("title") {
        c["title"] = if t.is_string() {
            t.clone()
        } else {
            Value::Null
        };
    }
    if let Some(attrs) = body.get("custom_attributes") {
        if !attrs.is_object() {
            return Err(ApiError::bad(
                "parameter_invalid",
                "custom_attributes must be an object",
            ));
        }
        objects::merge_object(&mut c["custom_attributes"], attrs);
    }
    if let Some(v) = body.get("company_id") {
        match v {
            Value::Null => {
                if let Some(m) = c.as_object_mut() {
                    m.remove("company");
                }
            }
            _ => {
                let cid = as_id(v).ok_or_else(ApiError::company_not_found)?;
                c["company"] = st
                    .cloned(Kind::Company, &cid)
                    .ok_or_else(ApiError::company_not_found)?;
            }
        }
    }
    st.write_bumped(Kind::Conversation, c);
    st.cloned(Kind::Conversation, id)
        .map(Out::Json)
        .ok_or_else(ApiError::resource_not_found)
}

fn conversation_part(st: &mut State, id: &str, body: &Map<String, Value>) -> Res {
    let mut c = st
        .cloned(Kind::Conversation, id)
        .ok_or_else(ApiError::resource_not_found)?;
    let message_type = body
        .get("message_type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("parameter_not_found", "message_type not specified"))?
        .to_string();
    let admin_id = required_admin(st, body)?;
    let admin = st.cloned(Kind::Admin, &admin_id).unwrap_or(Value::Null);
    let now = st.now();
    let text = body
        .get("body")
        .and_then(Value::as_str)
        .map(objects::html_body);
    let part_type = match message_type.as_str() {
        "close" => {
            c["open"] = json!(false);
            c["state"] = json!("closed");
            c["snoozed_until"] = Value::Null;
            "close"
        }
        "open" => {
            c["open"] = json!(true);
            c["state"] = json!("open");
            c["snoozed_until"] = Value::Null;
            "open"
        }
        "snoozed" => {
            let until = body.get("snoozed_until").and_then(as_int).ok_or_else(|| {
                ApiError::bad("parameter_not_found", "snoozed_until not specified")
            })?;
            c["state"] = json!("snoozed");
            c["snoozed_until"] = json!(until);
            "snoozed"
        }
        "assignment" => {
            let assignee = body
                .get("assignee_id")
                .and_then(as_id)
                .unwrap_or_else(|| "0".into());
            if assignee == "0" {
                c["admin_assignee_id"] = Value::Null;
            } else {
                st.get(Kind::Admin, &assignee).ok_or_else(|| {
                    ApiError::not_found("assignee_not_found", "Assignee not found")
                })?;
                c["admin_assignee_id"] = json!(assignee.parse::<i64>().unwrap_or(0));
            }
            "assignment"
        }
        "comment" | "note" => {
            if text.is_none() {
                return Err(ApiError::bad("parameter_not_found", "body not specified"));
            }
            if message_type == "comment" {
                "comment"
            } else {
                "note"
            }
        }
        other => {
            return Err(ApiError::bad(
                "parameter_invalid",
                format!("message_type '{other}' is not supported"),
            ))
        }
    };
    seed::add_conversation_part(
        st,
        &mut c,
        part_type,
        text.as_deref(),
        now,
        objects::admin_author(&admin),
    );
    st.write_bumped(Kind::Conversation, c);
    st.cloned(Kind::Conversation, id)
        .map(Out::Json)
        .ok_or_else(ApiError::resource_not_found)
}

fn convert(st: &mut State, id: &str, body: &Map<String, Value>) -> Res {
    let mut conv = st
        .cloned(Kind::Conversation, id)
        .ok_or_else(ApiError::resource_not_found)?;
    let type_id = body
        .get("ticket_type_id")
        .and_then(as_id)
        .ok_or_else(|| ApiError::bad("parameter_not_found", "ticket_type_id not specified"))?;
    let tt = st
        .cloned(Kind::TicketType, &type_id)
        .ok_or_else(|| ApiError::bad("parameter_invalid", "ticket_type_id is invalid"))?;
    if tt["category"] != "Customer" {
        return Err(ApiError::bad(
            "parameter_invalid",
            "Ticket type is not a customer ticket type",
        ));
    }
    let contact_id = conv["contacts"]["contacts"][0]["id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let c = contact(st, &contact_id)?;
    let mut attrs = json!({});
    if let Some(title) = conv["title"].as_str() {
        attrs["_default_title_"] = json!(title);
    }
    if let Some(a) = body.get("attributes") {
        objects::merge_object(&mut attrs, a);
    }
    let now = st.now();
    let created = as_int(&conv["created_at"]).unwrap_or(now);
    let mut t = seed::build_ticket(st, &tt, &c, &attrs, created, now);
    t["linked_objects"] = json!({ "type": "list", "total_count": 1, "has_more": false, "data": [{ "type": "conversation", "id": id, "category": null }] });
    let ticket_id = t["id"].clone();
    if let Some(d) = conv["linked_objects"]["data"].as_array_mut() {
        d.push(json!({ "type": "ticket", "id": ticket_id, "category": "Customer" }));
        let n = d.len();
        conv["linked_objects"]["total_count"] = json!(n);
    }
    st.write(Kind::Ticket, t.clone());
    st.write_bumped(Kind::Conversation, conv);
    Ok(Out::Json(t))
}

// ---------------------------------------------------------------- events

fn create_event(st: &mut State, body: &Map<String, Value>) -> Res {
    let name = body
        .get("event_name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad("parameter_not_found", "event_name not specified"))?
        .to_string();
    let created = body
        .get("created_at")
        .and_then(as_int)
        .ok_or_else(|| ApiError::bad("parameter_not_found", "created_at not specified"))?;
    let c = if let Some(id) = body.get("id").and_then(as_id) {
        st.cloned(Kind::Contact, &id)
    } else if let Some(uid) = body.get("user_id").and_then(as_id) {
        st.contact_by_external_id(&uid).cloned()
    } else if let Some(email) = body.get("email").and_then(Value::as_str) {
        st.contact_by_email(email).cloned()
    } else {
        return Err(ApiError::bad(
            "parameter_not_found",
            "user_id, id or email not specified",
        ));
    };
    let c = c.ok_or_else(ApiError::user_not_found)?;
    let contact_id = c["id"].as_str().unwrap_or("").to_string();
    let duplicate = st.tables.t(Kind::Event).recs.values().any(|e| {
        e.cur["contact_id"] == contact_id.as_str()
            && e.cur["event_name"] == name.as_str()
            && e.cur["created_at"] == created
    });
    if !duplicate {
        let mut metadata = Map::new();
        if let Some(m) = body.get("metadata").and_then(Value::as_object) {
            // Intercom keeps at most 10 metadata keys and silently drops the rest.
            let mut seen = HashSet::new();
            for (k, v) in m {
                if seen.len() < 10 && seen.insert(k.clone()) {
                    metadata.insert(k.clone(), v.clone());
                }
            }
        }
        let id = st.next_num("events", 1);
        st.write(
            Kind::Event,
            json!({
                "type": "event", "id": id, "event_name": name, "created_at": created, "updated_at": created,
                "contact_id": contact_id, "user_id": c["external_id"], "email": c["email"], "metadata": metadata,
            }),
        );
    }
    Ok(Out::Empty(202))
}
