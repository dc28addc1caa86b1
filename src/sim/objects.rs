//! Intercom object shapes (API version 2.15).
//!
//! Owns the JSON skeletons of every object the simulator returns, with the full field sets the
//! OpenAPI 2.15 schemas declare (nullable fields present as `null`; non-nullable fields that have
//! no value are omitted rather than sent with the wrong type), and the helpers that apply
//! request fields to them. It does not decide ids, timestamps or relationships.

use serde_json::{json, Map, Value};

/// A contact with every schema field present.
pub(crate) fn contact(id: &str, workspace_id: &str, created_at: i64) -> Value {
    let mut c = json!({
        "type": "contact",
        "id": id,
        "workspace_id": workspace_id,
        "external_id": null,
        "role": "user",
        "email": "",
        "email_domain": "",
        "phone": null,
        "name": null,
        "owner_id": null,
        "has_hard_bounced": false,
        "marked_email_as_spam": false,
        "unsubscribed_from_emails": false,
        "created_at": created_at,
        "updated_at": created_at,
        "signed_up_at": null,
        "last_seen_at": null,
        "last_replied_at": null,
        "last_contacted_at": null,
        "last_email_opened_at": null,
        "last_email_clicked_at": null,
    });
    let rest = json!({
        "language_override": null,
        "enabled_push_messaging": null,
        "browser": null,
        "browser_version": null,
        "browser_language": null,
        "os": null,
        "android_app_name": null,
        "android_app_version": null,
        "android_device": null,
        "android_os_version": null,
        "android_sdk_version": null,
        "android_last_seen_at": null,
        "ios_app_name": null,
        "ios_app_version": null,
        "ios_device": null,
        "ios_os_version": null,
        "ios_sdk_version": null,
        "ios_last_seen_at": null,
        "custom_attributes": {},
        "avatar": { "type": "avatar", "image_url": null },
        "tags": { "type": "list", "data": [], "url": format!("/contacts/{id}/tags"), "total_count": 0, "has_more": false },
        "notes": { "type": "list", "data": [], "url": format!("/contacts/{id}/notes"), "total_count": 0, "has_more": false },
        "companies": { "type": "list", "data": [], "url": format!("/contacts/{id}/companies"), "total_count": 0, "has_more": false },
        "location": { "type": "location", "country": null, "region": null, "city": null, "country_code": null, "continent_code": null },
        "social_profiles": { "type": "list", "data": [] },
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut c, rest) {
        a.extend(b);
    }
    c
}

/// Applies request fields to a contact (unknown keys are ignored, as the API does).
pub(crate) fn apply_contact(obj: &mut Value, input: &Map<String, Value>) {
    for (k, v) in input {
        match k.as_str() {
            "email" => {
                let email = v.as_str().unwrap_or("").to_string();
                let domain = email
                    .split_once('@')
                    .map(|(_, d)| d.to_string())
                    .unwrap_or_default();
                obj["email"] = Value::String(email);
                obj["email_domain"] = Value::String(domain);
            }
            "avatar" => obj["avatar"] = json!({ "type": "avatar", "image_url": v.as_str() }),
            "custom_attributes" => merge_object(&mut obj["custom_attributes"], v),
            "owner_id" => obj["owner_id"] = to_int_or_null(v),
            "signed_up_at" | "last_seen_at" => obj[k.as_str()] = to_int_or_null(v),
            "role" | "external_id" | "phone" | "name" | "unsubscribed_from_emails" => {
                obj[k.as_str()] = v.clone();
            }
            _ => {}
        }
    }
}

/// A company with every schema field that has a value.
pub(crate) fn company(id: &str, company_id: &str, app_id: &str, created_at: i64) -> Value {
    json!({
        "type": "company",
        "id": id,
        "name": "",
        "app_id": app_id,
        "plan": {},
        "company_id": company_id,
        "created_at": created_at,
        "updated_at": created_at,
        "last_request_at": created_at,
        "monthly_spend": 0,
        "session_count": 0,
        "user_count": 0,
        "custom_attributes": {},
        "tags": { "type": "tag.list", "tags": [] },
        "segments": { "type": "segment.list", "segments": [] },
    })
}

/// Keys `POST /companies` accepts; anything else is a 400 `bad_request`.
pub(crate) const COMPANY_CREATE_KEYS: &[&str] = &[
    "company_id",
    "name",
    "plan",
    "size",
    "website",
    "industry",
    "custom_attributes",
    "remote_created_at",
    "monthly_spend",
];

/// Keys `PUT /companies/{id}` accepts.
pub(crate) const COMPANY_UPDATE_KEYS: &[&str] = &[
    "name",
    "plan",
    "size",
    "website",
    "industry",
    "custom_attributes",
    "monthly_spend",
];

/// Applies request fields to a company.
pub(crate) fn apply_company(obj: &mut Value, input: &Map<String, Value>) {
    for (k, v) in input {
        match k.as_str() {
            "plan" => {
                obj["plan"] = match v.as_str() {
                    Some(name) if !name.is_empty() => {
                        let id = name
                            .bytes()
                            .fold(200u32, |a, b| (a * 31 + u32::from(b)) % 9000)
                            + 100;
                        json!({ "type": "plan", "id": id.to_string(), "name": name })
                    }
                    _ => json!({}),
                }
            }
            "size" | "monthly_spend" | "remote_created_at" => {
                if let Some(n) = as_int(v) {
                    obj[k.as_str()] = Value::from(n);
                }
            }
            "custom_attributes" => merge_object(&mut obj["custom_attributes"], v),
            "name" | "website" | "industry" | "company_id" => {
                if let Some(s) = v.as_str() {
                    obj[k.as_str()] = Value::String(s.to_string());
                }
            }
            _ => {}
        }
    }
}

/// A tag reference as embedded in a contact.
pub(crate) fn tag_ref(id: &str) -> Value {
    json!({ "type": "tag", "id": id, "url": format!("/tags/{id}") })
}

/// The `tag_basic` shape.
pub(crate) fn tag(id: &str, name: &str) -> Value {
    json!({ "type": "tag", "id": id, "name": name })
}

/// An applied tag (tag plus who applied it and when).
pub(crate) fn applied_tag(id: &str, name: &str, at: i64, admin_id: &str) -> Value {
    json!({ "type": "tag", "id": id, "name": name, "applied_at": at, "applied_by": { "type": "admin", "id": admin_id } })
}

/// An admin (teammate).
pub(crate) fn admin(id: &str, name: &str, email: &str) -> Value {
    json!({
        "type": "admin",
        "id": id,
        "name": name,
        "email": email,
        "job_title": "Support Engineer",
        "away_mode_enabled": false,
        "away_mode_reassign": false,
        "away_status_reason_id": null,
        "has_inbox_seat": true,
        "team_ids": [],
        "avatar": null,
        "team_priority_level": { "primary_team_ids": null, "secondary_team_ids": null },
    })
}

/// A ticket state.
pub(crate) fn ticket_state(id: &str, category: &str, label: &str) -> Value {
    json!({ "type": "ticket_state", "id": id, "category": category, "internal_label": label, "external_label": label })
}

/// A ticket part.
pub(crate) fn ticket_part(
    id: &str,
    part_type: &str,
    body: Option<&str>,
    at: i64,
    author: Value,
) -> Value {
    json!({
        "type": "ticket_part",
        "id": id,
        "part_type": part_type,
        "body": body,
        "created_at": at,
        "updated_at": at,
        "author": author,
        "attachments": [],
        "external_id": null,
        "redacted": false,
    })
}

/// A conversation part.
pub(crate) fn conversation_part(
    id: &str,
    part_type: &str,
    body: Option<&str>,
    at: i64,
    author: Value,
) -> Value {
    json!({
        "type": "conversation_part",
        "id": id,
        "part_type": part_type,
        "body": body,
        "created_at": at,
        "updated_at": at,
        "notified_at": at,
        "author": author,
        "attachments": [],
        "external_id": null,
        "redacted": false,
        "tags": [],
    })
}

/// A part author for a contact.
pub(crate) fn contact_author(contact: &Value) -> Value {
    json!({
        "type": if contact["role"] == "lead" { "lead" } else { "user" },
        "id": contact["id"],
        "name": contact["name"],
        "email": contact["email"].as_str().unwrap_or(""),
        "from_ai_agent": false,
        "is_ai_answer": false,
    })
}

/// A part author for an admin.
pub(crate) fn admin_author(admin: &Value) -> Value {
    json!({
        "type": "admin",
        "id": admin["id"],
        "name": admin["name"],
        "email": admin["email"].as_str().unwrap_or(""),
        "from_ai_agent": false,
        "is_ai_answer": false,
    })
}

/// A `contact_reference`.
pub(crate) fn contact_ref(contact: &Value) -> Value {
    json!({ "type": "contact", "id": contact["id"], "external_id": contact["external_id"] })
}

/// An empty `linked_object_list`.
pub(crate) fn linked_objects() -> Value {
    json!({ "type": "list", "total_count": 0, "has_more": false, "data": [] })
}

/// Wraps plain text as the HTML Intercom stores (`<p>…</p>`), escaping markup characters.
/// `?display_as=plaintext`: the conversation's message and part bodies as plain text (tags
/// dropped, the entities `html_body` writes decoded).
pub(crate) fn plaintext_bodies(conversation: &mut Value) {
    fn plain(v: &mut Value) {
        if let Some(html) = v.as_str() {
            let mut out = String::with_capacity(html.len());
            let mut in_tag = false;
            for ch in html.chars() {
                match ch {
                    '<' => in_tag = true,
                    '>' if in_tag => in_tag = false,
                    c if !in_tag => out.push(c),
                    _ => {}
                }
            }
            let text = out
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            *v = Value::String(text);
        }
    }
    if let Some(body) = conversation.pointer_mut("/source/body") {
        plain(body);
    }
    if let Some(parts) = conversation
        .pointer_mut("/conversation_parts/conversation_parts")
        .and_then(Value::as_array_mut)
    {
        for body in parts.iter_mut().filter_map(|p| p.get_mut("body")) {
            plain(body);
        }
    }
}

pub(crate) fn html_body(text: &str) -> String {
    if text.trim_start().starts_with('<') {
        return text.to_string();
    }
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("<p>{escaped}</p>")
}

/// Merges the keys of `patch` (an object) into `target` (made an object when it is not).
pub(crate) fn merge_object(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = Value::Object(Map::new());
        }
        if let Value::Object(t) = target {
            for (k, v) in p {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Deep-merges `patch` into `target`: objects merge key by key, everything else replaces.
pub(crate) fn deep_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// An integer from a JSON number (floats truncated) or numeric string.
pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .or_else(|| s.trim().parse::<f64>().ok().map(|f| f as i64)),
        _ => None,
    }
}

fn to_int_or_null(v: &Value) -> Value {
    as_int(v).map(Value::from).unwrap_or(Value::Null)
}

/// An id given as a JSON string or number, as a string.
pub(crate) fn as_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
