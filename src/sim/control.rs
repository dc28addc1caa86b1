//! The `/_sim` control API and the record operations behind it.
//!
//! Owns creating records from partial JSON (filled like seeding does), merging patches, deleting,
//! churn, reset, clock and config changes, and the `/_sim` HTTP routes that expose them. Control
//! calls need no auth, are not rate limited, not audited and never see injected faults. `Sim`
//! methods in `mod.rs` call the same functions.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::objects::{self, as_id, as_int};
use super::seed;
use super::state::State;
use super::store::Kind;
use super::{Faults, Sim};

/// Upper bound of one `POST /_sim/churn`.
const MAX_CHURN: i64 = 100_000;

/// The live, changeable part of the configuration (`GET/PUT /_sim/config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// Search index lag in seconds.
    pub search_lag_secs: i64,
    /// Requests allowed per 10-second window.
    pub rate_limit_per_window: u32,
    /// Workspace timezone (IANA name).
    pub timezone: String,
    /// `>`/`<` on stamps exclude the given second.
    pub strict_gt: bool,
}

/// A partial [`RuntimeConfig`] for `PUT /_sim/config`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RuntimeConfigPatch {
    search_lag_secs: Option<i64>,
    rate_limit_per_window: Option<u32>,
    timezone: Option<String>,
    strict_gt: Option<bool>,
}

pub(crate) fn runtime_config(st: &State) -> RuntimeConfig {
    RuntimeConfig {
        search_lag_secs: st.config.search_lag_secs,
        rate_limit_per_window: st.config.rate_limit_per_window,
        timezone: st.config.timezone.name().to_string(),
        strict_gt: st.config.strict_gt,
    }
}

fn apply_config(st: &mut State, patch: RuntimeConfigPatch) -> Result<RuntimeConfig, String> {
    if let Some(tz) = &patch.timezone {
        st.config.timezone = tz.parse().map_err(|_| format!("unknown timezone '{tz}'"))?;
    }
    if let Some(l) = patch.search_lag_secs {
        st.config.search_lag_secs = l.max(0);
    }
    if let Some(s) = patch.strict_gt {
        st.config.strict_gt = s;
    }
    if let Some(r) = patch.rate_limit_per_window {
        st.config.rate_limit_per_window = r;
    }
    Ok(runtime_config(st))
}

/// Creates a record of `kind` from partial JSON; missing fields are generated like seeding does.
/// Explicit `created_at`/`updated_at` are kept (`updated_at` defaults to `created_at` when only
/// that is given, else both default to now). Convenience keys: contacts take `company_ids` (to
/// attach), tickets and conversations take `contact_id` (otherwise a random contact is used),
/// tickets take `ticket_type_id` (type, category and initial state follow).
pub(crate) fn create(st: &mut State, kind: Kind, partial: Value) -> Result<Value, String> {
    let mut partial = match partial {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        _ => return Err("body must be a JSON object".into()),
    };
    let now = st.now();
    let created = partial.get("created_at").and_then(as_int).unwrap_or(now);
    let updated = partial.get("updated_at").and_then(as_int).unwrap_or(
        if partial.contains_key("created_at") {
            created
        } else {
            now
        },
    );
    if let Some(id) = partial.get("id").and_then(as_id) {
        if st.get(kind, &id).is_some() {
            return Err(format!("{} {id} already exists", kind.plural()));
        }
    }
    let company_ids = partial.remove("company_ids");
    let contact_id = partial.remove("contact_id").and_then(|v| as_id(&v));
    let ticket_type = match partial.remove("ticket_type_id").and_then(|v| as_id(&v)) {
        Some(id) if kind == Kind::Ticket => Some(
            st.cloned(Kind::TicketType, &id)
                .ok_or_else(|| format!("ticket type {id} not found"))?,
        ),
        _ => None,
    };
    let contact = match &contact_id {
        Some(id) => Some(
            st.cloned(Kind::Contact, id)
                .ok_or_else(|| format!("contact {id} not found"))?,
        ),
        None => None,
    };
    let mut base = match kind {
        Kind::Contact => seed::gen_contact(st, created, updated),
        Kind::Company => seed::gen_company(st, created, updated),
        Kind::Ticket => seed::gen_ticket(st, created, updated, contact)
            .ok_or("no contacts to link the ticket to")?,
        Kind::Conversation => seed::gen_conversation(st, created, updated, contact)
            .ok_or("no contacts to link the conversation to")?,
        Kind::Tag => {
            let id = st.next_num("tags", 100);
            objects::tag(&id, &format!("Tag {id}"))
        }
        Kind::Admin => {
            let id = st.next_num("admins", 991_267_800);
            objects::admin(&id, "New Admin", &format!("admin{id}@example.com"))
        }
        Kind::Note => json!({ "type": "note", "id": st.next_num("notes", 30), "body": "<p></p>" }),
        Kind::Event => {
            json!({ "type": "event", "id": st.next_num("events", 1), "event_name": "sim-event", "metadata": {} })
        }
        Kind::TicketType => json!({
            "type": "ticket_type", "id": st.next_num("ticket_types", 200), "category": "Customer", "name": "Custom",
            "description": "", "icon": "🎟️", "workspace_id": st.workspace_id,
            "ticket_type_attributes": { "type": "list", "ticket_type_attributes": [] },
            "ticket_states": { "type": "list", "data": st.ticket_states.iter().filter(|s| s["id"].as_str().is_some_and(|i| i < "8574")).cloned().collect::<Vec<_>>() },
            "archived": false,
        }),
    };
    if kind == Kind::Contact {
        if let Some(email) = partial.get("email").and_then(Value::as_str) {
            let mut m = Map::new();
            m.insert("email".into(), json!(email));
            objects::apply_contact(&mut base, &m);
        }
    }
    if kind == Kind::Contact
        && partial.get("role") == Some(&json!("lead"))
        && !partial.contains_key("external_id")
    {
        base["external_id"] = Value::Null;
    }
    if let Some(tt) = &ticket_type {
        base["ticket_type"] = seed::embedded_ticket_type(tt);
        base["category"] = tt["category"].clone();
        base["ticket_state"] = seed::initial_state(st, tt);
        base["open"] = json!(true);
    }
    // Ids keep the kind's shape: a supplied id replaces the generated one everywhere it appears.
    let old_id = base["id"].clone();
    objects::deep_merge(&mut base, &Value::Object(partial));
    if kind == Kind::Contact && base["id"] != old_id {
        let id = base["id"].as_str().unwrap_or("").to_string();
        for list in ["tags", "notes", "companies"] {
            base[list]["url"] = json!(format!("/contacts/{id}/{list}"));
        }
    }
    base["created_at"] = json!(created);
    base["updated_at"] = json!(updated);
    let id = as_id(&base["id"]).ok_or("id must be a string")?;
    st.write(kind, base);
    if kind == Kind::Contact {
        if let Some(Value::Array(ids)) = company_ids {
            for c in ids.iter().filter_map(as_id) {
                if st.get(Kind::Company, &c).is_none() {
                    return Err(format!("company {c} not found"));
                }
                st.attach_company(&id, &c, false);
            }
            // Attaching must not move the requested timestamps.
            if let Some(mut v) = st.cloned(Kind::Contact, &id) {
                v["updated_at"] = json!(updated);
                st.write(Kind::Contact, v);
            }
        }
    }
    st.cloned(kind, &id).ok_or_else(|| "record vanished".into())
}

/// Deep-merges `patch` into a record and bumps `updated_at` to now unless the patch sets it.
pub(crate) fn patch(st: &mut State, kind: Kind, id: &str, patch: &Value) -> Option<Value> {
    let mut v = st.cloned(kind, id)?;
    objects::deep_merge(&mut v, patch);
    v["id"] = json!(id);
    if kind == Kind::Contact {
        if let Some(email) = patch.get("email").and_then(Value::as_str) {
            let mut m = Map::new();
            m.insert("email".into(), json!(email));
            objects::apply_contact(&mut v, &m);
        }
    }
    if patch.get("updated_at").is_none() {
        v["updated_at"] = json!(st.now());
    }
    st.write(kind, v.clone());
    Some(v)
}

/// Deletes a record (contacts are detached from their companies first).
pub(crate) fn delete(st: &mut State, kind: Kind, id: &str) -> bool {
    match kind {
        Kind::Contact => {
            let companies: Vec<String> = st
                .get(Kind::Contact, id)
                .and_then(|c| c["companies"]["data"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect();
            for c in companies {
                st.detach_company(id, &c, false);
            }
        }
        Kind::Company => st.detach_all_from_company(id),
        Kind::Tag => st.strip_tag_everywhere(id),
        _ => {}
    }
    st.tables.t_mut(kind).remove(id).is_some()
}

fn reply(status: u16, body: Value) -> (u16, String) {
    (status, body.to_string())
}

fn err(status: u16, msg: impl Into<String>) -> (u16, String) {
    reply(status, json!({ "error": msg.into() }))
}

/// Answers one `/_sim` request; returns status and JSON body.
pub(crate) fn handle(
    sim: &Sim,
    method: &str,
    path: &str,
    query: Option<&str>,
    bytes: &[u8],
) -> (u16, String) {
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => return err(400, format!("invalid JSON: {e}")),
        }
    };
    let segs: Vec<&str> = path
        .trim_start_matches("/_sim")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match (method, segs.as_slice()) {
        ("GET", ["audit"]) => {
            let since = query
                .unwrap_or("")
                .split('&')
                .find_map(|p| p.strip_prefix("since="))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            reply(200, json!(sim.audit_since(since)))
        }
        ("DELETE", ["audit"]) => {
            sim.clear_audit();
            reply(200, json!({ "cleared": true }))
        }
        ("GET", ["clock"]) => reply(200, json!({ "now": sim.now() })),
        ("POST", ["clock"]) => {
            if let Some(secs) = body.get("advance").and_then(as_int) {
                sim.advance_clock(secs);
            } else if let Some(ts) = body.get("set").and_then(as_int) {
                sim.set_clock(ts);
            } else {
                return err(400, "expected {\"advance\": secs} or {\"set\": ts}");
            }
            reply(200, json!({ "now": sim.now() }))
        }
        ("GET", ["faults"]) => reply(200, json!(sim.faults())),
        ("PUT", ["faults"]) => match serde_json::from_value::<Faults>(body) {
            Ok(f) => {
                sim.set_faults(f);
                reply(200, json!(sim.faults()))
            }
            Err(e) => err(400, format!("invalid faults: {e}")),
        },
        ("GET", ["config"]) => reply(200, json!(sim.runtime_config())),
        ("PUT", ["config"]) => match serde_json::from_value::<RuntimeConfigPatch>(body) {
            Ok(p) => match apply_config(&mut sim.lock(), p) {
                Ok(c) => reply(200, json!(c)),
                Err(e) => err(400, e),
            },
            Err(e) => err(400, format!("invalid config: {e}")),
        },
        ("POST", ["churn"]) => {
            let n = body
                .get("count")
                .and_then(as_int)
                .unwrap_or(1)
                .clamp(0, MAX_CHURN) as usize;
            let changed: Vec<Value> = sim
                .churn(n)
                .into_iter()
                .map(|(k, id)| json!({ "kind": k.plural(), "id": id }))
                .collect();
            reply(200, json!({ "changed": changed }))
        }
        ("GET", ["oauth"]) => reply(200, super::oauth::describe(&sim.lock())),
        ("PUT", ["oauth"]) => match serde_json::from_value::<super::oauth::OAuthPatch>(body) {
            Ok(p) => reply(200, super::oauth::apply(&mut sim.lock(), p)),
            Err(e) => err(400, format!("invalid oauth settings: {e}")),
        },
        ("POST", ["oauth", "revoke"]) => {
            let n =
                super::oauth::revoke(&mut sim.lock(), body.get("token").and_then(Value::as_str));
            reply(200, json!({ "revoked": n }))
        }
        ("POST", ["reset"]) => {
            sim.reset();
            reply(200, json!({ "reset": true, "now": sim.now() }))
        }
        (_, [kind, rest @ ..]) => {
            let Some(kind) = Kind::from_plural(kind) else {
                return err(404, format!("unknown kind '{kind}'"));
            };
            match (method, rest) {
                ("GET", []) => reply(200, json!(sim.records(kind))),
                ("POST", []) => match sim.create(kind, body) {
                    Ok(v) => reply(200, v),
                    Err(e) => err(400, e),
                },
                ("GET", [id]) => sim
                    .record(kind, id)
                    .map_or_else(|| err(404, "not found"), |v| reply(200, v)),
                ("PATCH", [id]) => sim
                    .patch(kind, id, body)
                    .map_or_else(|| err(404, "not found"), |v| reply(200, v)),
                ("DELETE", [id]) => {
                    if sim.delete(kind, id) {
                        reply(200, json!({ "id": id, "deleted": true }))
                    } else {
                        err(404, "not found")
                    }
                }
                _ => err(404, "unknown control route"),
            }
        }
        _ => err(404, "unknown control route"),
    }
}

/// Rebuilds the state from the seed at the current simulator time, keeping the live config.
pub(crate) fn reset(st: &mut State) {
    let mut config = st.config.clone();
    config.start_time = st.now();
    *st = State::new(config);
}
